"""Hugging Face, civitai and credentials.toml against loopback servers that answer like them (SPEC 6.3)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import DownloadSpec, Settings, Status, open_engine
from engine.testing import INLINE_DISK
from engine._download._hubs import HubEnv, host_auth, hub_url
from engine.testing import FaultServer, Faults
from engine.testing._hubserver import HubServer

SIZE = 400_000
HF_TOKEN = "hf_secret_token_123"
_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HOME", "HF_ENDPOINT", "CIVITAI_API_TOKEN", "CIVITAI_ENDPOINT")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # never the user's real token file


@pytest.fixture
async def hub(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[HubServer]:
    cdn = FaultServer(host="127.0.0.2")
    async with trio.open_nursery() as nursery:
        await nursery.start(cdn.serve)
        server = HubServer(cdn=cdn)
        base = await nursery.start(server.serve)
        monkeypatch.setenv("HF_ENDPOINT", base)
        monkeypatch.setenv("CIVITAI_ENDPOINT", base)
        yield server
        nursery.cancel_scope.cancel()


def settings_for(tmp_path: Path) -> Settings:
    return Settings(initial_delay_s=1.0, jitter=0.0, download_root=str(tmp_path / "downloads"))


async def fetch(tmp_path: Path, spec: DownloadSpec) -> Any:
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path), disk=INLINE_DISK) as eng:
        async with eng.subscribe() as sub:
            op = await eng.submit(spec)
            final = await eng.wait(op.id)
            events = sub.drain()
    return final, events


async def test_token_reaches_the_hub_never_the_cdn(hub: HubServer, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, autojump_clock: Any) -> None:
    """HF_TOKEN goes to the HF_ENDPOINT host as a Bearer token; the CDN it redirects to never sees it."""
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    hub.add_model("org/model", "unet.safetensors", size=SIZE)
    url = "https://huggingface.co/org/model/resolve/main/unet.safetensors"
    final, _ = await fetch(tmp_path, DownloadSpec(url=url, dest="unet.safetensors"))
    assert final.status is Status.SUCCESS, final.error
    assert (tmp_path / "downloads" / "unet.safetensors").stat().st_size == SIZE
    assert hub.authorization_seen == [("/org/model/resolve/main/unet.safetensors", f"Bearer {HF_TOKEN}")]
    assert hub.cdn.authorization_seen and all(auth is None for _p, auth in hub.cdn.authorization_seen)


async def test_token_file_in_hf_home(hub: HubServer, tmp_path: Path, autojump_clock: Any) -> None:
    """Without HF_TOKEN the token is read from $HF_HOME/token, whitespace stripped."""
    home = tmp_path / "hf-home"
    home.mkdir()
    (home / "token").write_text(f"  {HF_TOKEN}\n")
    hub.add_model("org/model", "a.safetensors", size=1000)
    final, _ = await fetch(tmp_path, DownloadSpec(url=f"{hub.base_url}/org/model/resolve/main/a.safetensors"))
    assert final.status is Status.SUCCESS, final.error
    assert hub.authorization_seen[0][1] == f"Bearer {HF_TOKEN}"


async def test_blob_link_lands_as_the_file(hub: HubServer, tmp_path: Path, autojump_clock: Any,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """A /blob/ link is fetched as /resolve/: the real bytes land, and the submitted event and the log say so."""
    hub.add_model("org/model", "clip_l.safetensors", size=SIZE)
    url = "https://huggingface.co/org/model/blob/main/clip_l.safetensors"
    with caplog.at_level("INFO", logger="engine"):
        final, events = await fetch(tmp_path, DownloadSpec(url=url))
    new = [r.getMessage() for r in caplog.records if "new download" in r.getMessage()]
    assert len(new) == 1 and "/blob/main/clip_l" in new[0] and "fetched as " in new[0], new
    assert f"{hub.base_url}/org/model/resolve/main/clip_l.safetensors" in new[0]
    assert final.status is Status.SUCCESS, final.error
    dest = tmp_path / "downloads" / "clip_l.safetensors"
    assert dest.read_bytes()[:4] != b"<!do" and dest.stat().st_size == SIZE
    import hashlib

    from engine.testing import content_sha256

    assert hashlib.sha256(dest.read_bytes()).hexdigest() == content_sha256("/repos/org/model/clip_l.safetensors", SIZE)
    submitted = next(e for e in events if e.type == "submitted")
    assert "/resolve/main/clip_l.safetensors" in submitted["spec"]["fetched_as"]
    assert "/blob/" in submitted["spec"]["note"]
    assert [p for p, _a in hub.authorization_seen] == ["/org/model/resolve/main/clip_l.safetensors"]


async def test_web_page_for_a_model_fails_before_writing(tmp_path: Path, autojump_clock: Any) -> None:
    """An HTML answer for a .safetensors name fails at once (E_HTTP_CLIENT), leaving no file at all."""
    cdn = FaultServer()
    async with trio.open_nursery() as nursery:
        await nursery.start(cdn.serve)
        hub = HubServer(cdn=cdn)
        base = await nursery.start(hub.serve)
        # not a Hugging Face host for the engine: the page is served as it is
        final, _ = await fetch(tmp_path, DownloadSpec(url=f"{base}/x/y/blob/main/m.safetensors"))
        nursery.cancel_scope.cancel()
    assert final.status is Status.FAILED
    assert final.error.code == "E_HTTP_CLIENT" and "web page, not the file" in final.error.message
    assert "/resolve/" in final.error.suggestion
    assert not any((tmp_path / "downloads").iterdir())


@pytest.mark.parametrize("with_token", [False, True])
async def test_gated_repo(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_token: bool,
                          autojump_clock: Any) -> None:
    """A gated repository is E_AUTH naming its page; the suggestion depends on whether a token was sent."""
    if with_token:
        monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    hub.gated["black-forest-labs/FLUX.1-Fill-dev"] = "the-right-token"
    hub.add_model("black-forest-labs/FLUX.1-Fill-dev", "flux1-fill-dev.safetensors", size=1000)
    url = "https://huggingface.co/black-forest-labs/FLUX.1-Fill-dev/blob/main/flux1-fill-dev.safetensors"
    final, events = await fetch(tmp_path, DownloadSpec(url=url))
    assert final.status is Status.FAILED and final.error.code == "E_AUTH"
    assert "gated" in final.error.message
    page = f"{hub.base_url}/black-forest-labs/FLUX.1-Fill-dev"
    assert page in final.error.suggestion and "licence" in final.error.suggestion
    assert "HF_TOKEN" in final.error.suggestion  # SPEC 6.3: the suggestion names the variable either way
    assert "FLUX.1-Fill-dev" in final.error.message
    if with_token:
        assert "has no access" in final.error.suggestion and "HTTP 403" in final.error.message
        assert hub.authorization_seen[0][1] == f"Bearer {HF_TOKEN}"  # the token was sent, and refused
    else:
        assert "set HF_TOKEN" in final.error.suggestion and "HTTP 401" in final.error.message
        assert hub.authorization_seen[0][1] is None
    assert HF_TOKEN not in repr([e.to_dict() for e in events])


async def test_resume_after_a_cdn_drop_starts_from_resolve(hub: HubServer, tmp_path: Path,
                                                          autojump_clock: Any) -> None:
    """A drop on the CDN resumes by asking the hub's /resolve/ URL again (signed URLs expire), with a range."""
    hub.add_model("org/model", "big.safetensors", size=SIZE, faults=Faults(drop_after=150_000, drop_times=1))
    final, _ = await fetch(tmp_path, DownloadSpec(url=f"{hub.base_url}/org/model/resolve/main/big.safetensors"))
    assert final.status is Status.SUCCESS, final.error
    assert [p for p, _a in hub.authorization_seen] == ["/org/model/resolve/main/big.safetensors"] * 2
    ranges = hub.cdn.stats.paths["/repos/org/model/big.safetensors"].ranges
    assert len(ranges) == 2 and ranges[0][0] == 0 and (ranges[1][0] or 0) > 0
    import hashlib

    from engine.testing import content_sha256

    got = hashlib.sha256((tmp_path / "downloads" / "big.safetensors").read_bytes()).hexdigest()
    assert got == content_sha256("/repos/org/model/big.safetensors", SIZE)


async def test_civitai_named_by_content_disposition(hub: HubServer, tmp_path: Path,
                                                   autojump_clock: Any) -> None:
    """A numeric civitai URL with no name given lands under the name of its Content-Disposition."""
    hub.add_civitai("128713", "dreamshaper_8.safetensors", size=5000)
    final, _ = await fetch(tmp_path, DownloadSpec(
        url="https://civitai.com/api/download/models/128713?type=Model&format=SafeTensor"))
    assert final.status is Status.SUCCESS, final.error
    assert (tmp_path / "downloads" / "dreamshaper_8.safetensors").stat().st_size == 5000


@pytest.mark.parametrize("with_token", [False, True])
async def test_civitai_sign_in(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_token: bool,
                               autojump_clock: Any) -> None:
    """civitai's redirect to its sign-in page is E_AUTH naming CIVITAI_API_TOKEN; the right token fetches it."""
    hub.civitai_token = "civ-key-1"
    hub.add_civitai("99", "lora.safetensors", size=3000)
    if with_token:
        monkeypatch.setenv("CIVITAI_API_TOKEN", "civ-key-1")
    final, _ = await fetch(tmp_path, DownloadSpec(url="https://civitai.com/api/download/models/99",
                                                  dest="loras/lora.safetensors"))
    if with_token:
        assert final.status is Status.SUCCESS, final.error
        assert hub.authorization_seen[0][1] == "Bearer civ-key-1"
        assert all(auth is None for _p, auth in hub.cdn.authorization_seen)
    else:
        assert final.status is Status.FAILED and final.error.code == "E_AUTH"
        assert "CIVITAI_API_TOKEN" in final.error.suggestion
        assert not (tmp_path / "downloads" / "loras" / "lora.safetensors").exists()


def test_tokens_only_for_their_own_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HF token is for the hub host, the civitai key for civitai.com; other hosts get neither."""
    env = HubEnv.current({"HF_TOKEN": "h", "CIVITAI_API_TOKEN": "c", "HF_HOME": "/nonexistent"})
    assert host_auth("https://huggingface.co/a/b/resolve/main/x", env, None).headers == {"Authorization": "Bearer h"}
    assert host_auth("https://civitai.com/api/download/models/1", env, None).headers == {"Authorization": "Bearer c"}
    for other in ("https://cdn-lfs.huggingface.co/x", "https://example.org/x", "https://civitai.com.evil.org/x",
                  "http://huggingface.co:8080/x"):
        assert host_auth(other, env, None).headers == {}
    proxied = HubEnv.current({"HF_TOKEN": "h", "HF_ENDPOINT": "https://hf.corp.example/", "HF_HOME": "/none"})
    url, note = hub_url("https://huggingface.co/a/b/blob/v1/dir/x.safetensors", proxied)
    assert url == "https://hf.corp.example/a/b/resolve/v1/dir/x.safetensors" and note
    assert host_auth(url, proxied, None).headers == {"Authorization": "Bearer h"}
    assert host_auth("https://huggingface.co/a/b/resolve/main/x", proxied, None).headers == {}


async def test_credentials_toml_for_exactly_its_host(tmp_path: Path, autojump_clock: Any) -> None:
    """credentials.toml headers reach exactly their host and never appear in events or the operation."""
    server = FaultServer()
    async with server.running() as base:
        server.add_file("/m.bin", size=1000)
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        cred = state / "credentials.toml"
        host = base.removeprefix("http://")
        cred.write_text(f'[hosts."{host}"]\nheaders = {{ Authorization = "Bearer private-x" }}\n'
                        '[hosts."other.example"]\nheaders = { Authorization = "Bearer nope" }\n')
        cred.chmod(0o600)
        final, events = await fetch(tmp_path, DownloadSpec(url=f"{base}/m.bin"))
        assert final.status is Status.SUCCESS, final.error
        assert server.authorization_seen == [("/m.bin", "Bearer private-x")]
        assert "private-x" not in repr([e.to_dict() for e in events]) + repr(final)

        cred.chmod(0o644)
        (tmp_path / "downloads" / "m.bin").unlink()
        final, _ = await fetch(tmp_path, DownloadSpec(url=f"{base}/m.bin"))
    assert final.status is Status.FAILED and final.error.code == "E_PERMISSION"
    assert "credentials.toml" in final.error.message and "other users" in final.error.message
    assert "chmod 600" in final.error.suggestion and "private-x" not in repr(final)
    assert len(server.authorization_seen) == 1  # nothing was sent with a file others can read


@pytest.mark.parametrize("status", [401, 403])
async def test_civitai_refusal_status_is_e_auth_naming_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    status: int, autojump_clock: Any) -> None:
    """civitai answering 401/403 itself (not a redirect to its sign-in page) is E_AUTH naming
    CIVITAI_API_TOKEN; nothing is written."""
    server = FaultServer()
    async with server.running() as base:
        monkeypatch.setenv("CIVITAI_ENDPOINT", base)
        server.add_file("/api/download/models/5", size=100, faults=Faults(status=status))
        final, _ = await fetch(tmp_path, DownloadSpec(url="https://civitai.com/api/download/models/5",
                                                      dest="loras/x.safetensors"))
    assert final.status is Status.FAILED and final.error.code == "E_AUTH", final.error
    assert f"HTTP {status}" in final.error.message and "CIVITAI_API_TOKEN" in final.error.suggestion
    assert not (tmp_path / "downloads" / "loras").exists() or not any((tmp_path / "downloads" / "loras").iterdir())


@pytest.mark.parametrize("token", ["hf_pasted\x0bsecret", "hf_pasted\u00a0secret"], ids=["vertical tab", "nbsp"])
async def test_hub_token_with_odd_characters_is_refused_unsent_and_unshown(
        hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str,
        caplog: pytest.LogCaptureFixture, autojump_clock: Any) -> None:
    """An HF_TOKEN with a control or non-ASCII character inside (a paste accident) is E_INVALID_INPUT naming
    HF_TOKEN, with no request made; no error, event or log line quotes it (the HTTP library would)."""
    monkeypatch.setenv("HF_TOKEN", token)
    hub.add_model("org/model", "a.safetensors", size=1000)
    with caplog.at_level("DEBUG", logger="engine"):
        final, events = await fetch(tmp_path, DownloadSpec(url=f"{hub.base_url}/org/model/resolve/main/a.safetensors"))
    assert final.status is Status.FAILED and final.error.code == "E_INVALID_INPUT"
    assert "HF_TOKEN" in final.error.message and "HF_TOKEN" in final.error.suggestion
    assert hub.authorization_seen == [] and hub.cdn.stats.requests == 0
    shown = repr([e.to_dict() for e in events]) + repr(final) + caplog.text
    assert "pasted" not in shown and "secret" not in shown
