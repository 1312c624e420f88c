"""SPEC 6.3: ``<state_dir>/credentials.toml`` is used by downloads, projects, imports and the control
channel alike, reaches exactly its host, is never shown, and is refused when others can read it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from _safety import serving
from engine import DownloadSpec, ProjectSpec, Settings, Status, open_engine
from engine.testing import FaultServer

SECRET = "private-cred-5521"


def write_credentials(state: Path, host: str, mode: int = 0o600) -> Path:
    state.mkdir(mode=0o700, exist_ok=True)
    path = state / "credentials.toml"
    path.write_text(f'[hosts."{host}"]\nheaders = {{ Authorization = "Bearer {SECRET}", X-Api-Key = "{SECRET}-k" }}\n')
    path.chmod(mode)
    return path


def workflow(tmp_path: Path, urls: list[str]) -> Path:
    nodes = [{"id": i + 1, "type": "Loader", "mode": 0,
              "properties": {"models": [{"name": f"m{i}.safetensors", "url": url, "directory": "vae"}]}}
             for i, url in enumerate(urls)]
    path = tmp_path / "wf.json"
    path.write_text(json.dumps({"nodes": nodes, "links": []}))
    return path


@pytest.mark.parametrize("way", ["download", "project", "import", "control channel"])
async def test_credentials_file_is_used_by_every_way_in(tmp_path: Path, way: str) -> None:
    """The same credentials.toml entry reaches its host (and only it) from a download, a project's
    step, an imported workflow's model and a download submitted over the control channel; no event,
    operation view or API answer shows it."""
    mine, other = FaultServer(), FaultServer(host="127.0.0.2")
    async with mine.running(), other.running():
        for server in (mine, other):
            server.add_file("/m.safetensors", size=20_000)
        urls = [mine.base_url + "/m.safetensors", other.base_url + "/m.safetensors"]
        state = tmp_path / "state"
        write_credentials(state, mine.base_url.removeprefix("http://"))
        shown: list[str] = []
        if way == "control channel":
            async with serving(tmp_path) as api:
                ids = []
                for i, url in enumerate(urls):
                    created = await api.client.post("/api/operations", json={"url": url, "dest": f"m{i}.safetensors"})
                    assert created.status_code == 201, created.text
                    ids.append(created.json()["id"])
                finals = [await api.wait_status(op_id, "success", "failed", "exhausted", timeout=60) for op_id in ids]
                assert [f["status"] for f in finals] == ["success", "success"], finals
                shown.append((await api.client.get("/api/operations")).text)
        else:
            root = tmp_path / "root"
            if way == "download":
                specs: list[Any] = [DownloadSpec(url=url, dest=f"m{i}.safetensors") for i, url in enumerate(urls)]
            elif way == "project":
                specs = [ProjectSpec(name="p", steps=[DownloadSpec(url=url, dest=f"m{i}.safetensors")
                                                      for i, url in enumerate(urls)])]
            else:
                (root / "ComfyUI" / "models").mkdir(parents=True)
                specs = [ProjectSpec.from_comfyui_workflow(workflow(tmp_path, urls), root / "ComfyUI")]
            async with open_engine(state, Settings(download_root=str(root), max_retries=0)) as eng:
                async with eng.subscribe() as sub:
                    ops = [await eng.submit(spec) for spec in specs]
                    with trio.fail_after(60):
                        finals = [await eng.wait(op.id) for op in ops]
                    shown.append(repr([e.to_dict() for e in sub.drain()]) + repr(finals))
            assert all(f.status is Status.SUCCESS for f in finals), finals
    assert mine.authorization_seen == [("/m.safetensors", f"Bearer {SECRET}")]
    assert dict(mine.headers_seen)["/m.safetensors"]["x-api-key"] == f"{SECRET}-k"
    assert other.authorization_seen == [("/m.safetensors", None)]
    assert "x-api-key" not in dict(other.headers_seen)["/m.safetensors"]
    assert SECRET not in "\n".join(shown)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644, 0o666])
async def test_credentials_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    """A credentials.toml that group or others may read (or write) fails the download E_PERMISSION naming
    the file, its mode and chmod 600; no request is sent and the value is not shown."""
    server = FaultServer()
    async with server.running():
        server.add_file("/m.bin", size=1000)
        path = write_credentials(tmp_path / "state", server.base_url.removeprefix("http://"), mode)
        async with open_engine(tmp_path / "state", Settings(download_root=str(tmp_path / "root"))) as eng:
            op = await eng.submit(DownloadSpec(url=server.base_url + "/m.bin"))
            with trio.fail_after(60):
                final = await eng.wait(op.id)
        assert server.stats.requests == 0
    assert final.status is Status.FAILED and final.error.code == "E_PERMISSION"
    assert str(path) in final.error.message and f"{mode:04o}" in final.error.message
    assert f"chmod 600 {path}" in final.error.suggestion and SECRET not in repr(final)
    assert not os.path.lexists(tmp_path / "root" / "m.bin.part")


@pytest.mark.parametrize("value,sent", [("Bearer private-cred-5521\\u000bx", None), ("Bearer private-cred-5521\\u00e9", None),
                                        ("\\tBearer private-cred-5521 ", "Bearer private-cred-5521")],
                         ids=["vertical tab", "non-ascii", "surrounding whitespace"])
async def test_credentials_file_values_follow_the_header_rules(tmp_path: Path, value: str, sent: str | None,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A credentials.toml value with a control or non-ASCII character is refused before any request,
    naming the host and header but never the value (no library message quoting it reaches the error,
    the events or the log); surrounding whitespace is trimmed and the value sent."""
    server = FaultServer()
    async with server.running():
        server.add_file("/m.bin", size=1000)
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        path = state / "credentials.toml"
        host = server.base_url.removeprefix("http://")
        path.write_text(f'[hosts."{host}"]\nheaders = {{ Authorization = "{value}" }}\n')
        path.chmod(0o600)
        with caplog.at_level("DEBUG", logger="engine"):
            async with open_engine(state, Settings(download_root=str(tmp_path / "root"), max_retries=0)) as eng:
                async with eng.subscribe() as sub:
                    op = await eng.submit(DownloadSpec(url=server.base_url + "/m.bin"))
                    with trio.fail_after(60):
                        final = await eng.wait(op.id)
                    shown = repr([e.to_dict() for e in sub.drain()]) + repr(final) + caplog.text
    if sent is None:
        assert final.status is Status.FAILED and final.error.code == "E_PERMISSION"
        assert str(path) in final.error.message and "Authorization" in final.error.message
        assert host in final.error.message and server.stats.requests == 0
        assert SECRET not in shown
    else:
        assert final.status is Status.SUCCESS, final.error
        assert server.authorization_seen == [("/m.bin", sent)] and SECRET not in shown
