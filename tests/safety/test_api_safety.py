"""SPEC 14 and 6.1 over the control channel: the API cannot widen its sandbox or harm a file.

Real loopback sockets (the control channel and a fault server), the real
download kind, real files and links made in ``tmp_path``; every refusal is
checked for its status, code and field, and for having changed nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from _safety import OTHER, Served, other_file
from engine.testing import FaultServer, content_sha256

DEEP = 100_000


def deep_json(depth: int = DEEP) -> bytes:
    return b'{"kind": "download", "url": ' + b"[" * depth + b"]" * depth + b"}"


def workflow(base: str, models: list[tuple[str, str, str]]) -> dict[str, Any]:
    """A workflow in the shape ComfyUI saves, one loader node per model."""
    nodes = [{"id": i + 1, "type": "CheckpointLoaderSimple", "mode": 0,
              "properties": {"cnr_id": "comfy-core", "ver": "0.3.40",
                             "models": [{"name": name, "url": f"{base}{path}", "directory": directory}]},
              "widgets_values": [name]}
             for i, (directory, name, path) in enumerate(models)]
    return {"last_node_id": len(nodes), "nodes": nodes, "links": [], "version": 0.4}


def tree(root: Path) -> dict[str, bytes | str]:
    """Every name under ``root`` with its bytes (or its link target)."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes()
        else:
            out[rel] = "dir"
    return out


def error(response: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()["error"]
    assert body["code"] == code, body
    if field is not None:
        assert body.get("field") == field, body
    return body  # type: ignore[no-any-return]


# --- the sandbox ------------------------------------------------------------------------


@pytest.mark.parametrize("new_root", ["/", "~", "../", "{root}/sub", "{root}/."])
async def test_put_settings_cannot_change_download_root(api: Served, new_root: str) -> None:
    """PUT /api/settings that changes download_root is 403 E_FORBIDDEN naming the field; nothing changes."""
    settings_file = api.state_dir / "settings.json"
    file_before = settings_file.read_bytes() if settings_file.exists() else None
    before = (await api.client.get("/api/settings")).json()
    response = await api.client.put("/api/settings", json={"max_retries": 7,
                                                           "download_root": new_root.format(root=api.root)})
    body = error(response, 403, "E_FORBIDDEN", "download_root")
    assert "download_root" in body["message"]
    assert (await api.client.get("/api/settings")).json() == before  # max_retries not half-applied either
    assert api.engine.settings.download_root_path == api.root.resolve()
    assert (settings_file.read_bytes() if settings_file.exists() else None) == file_before


async def test_put_settings_with_the_same_download_root_is_accepted(api: Served) -> None:
    """Sending the settings back unchanged (as a settings form does) is not a change."""
    current = (await api.client.get("/api/settings")).json()
    assert current["download_root"] == str(api.engine.settings.download_root_path)  # shown resolved, never blank
    response = await api.client.put("/api/settings", json={**current, "max_retries": 4})
    assert response.status_code == 200, response.text
    assert response.json()["max_retries"] == 4 and response.json()["download_root"] == current["download_root"]


async def test_import_cannot_escape_download_root_through_a_link(api: Served, faults: FaultServer,
                                                                 tmp_path: Path) -> None:
    """A link inside the ComfyUI folder that leads out of download_root makes the import 422; nothing written."""
    faults.add_file("/m/ae.safetensors", size=30_000)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_bytes(OTHER)
    models = api.root / "ComfyUI" / "models"
    models.mkdir(parents=True)
    os.symlink(outside, models / "vae")
    before_root, before_outside = tree(api.root), tree(outside)
    body = {"kind": "import", "comfyui": "ComfyUI",
            "workflow": workflow(faults.base_url, [("vae", "ae.safetensors", "/m/ae.safetensors")])}
    response = await api.client.post("/api/operations", json=body)
    err = error(response, 422, "E_INVALID_INPUT", "workflow")
    assert "outside the download root" in err["message"] and "vae/ae.safetensors" in err["message"]
    assert tree(outside) == before_outside and tree(api.root) == before_root
    assert faults.stats.requests == 0 and (await api.client.get("/api/operations")).json() == []


async def test_import_with_a_linked_comfyui_folder_is_refused(api: Served, faults: FaultServer,
                                                              tmp_path: Path) -> None:
    """The ComfyUI folder itself being a link out of download_root is refused (422, field comfyui)."""
    outside = tmp_path / "outside"
    (outside / "models" / "vae").mkdir(parents=True)
    os.symlink(outside, api.root / "ComfyUI")
    body = {"kind": "import", "comfyui": "ComfyUI",
            "workflow": workflow(faults.base_url, [("vae", "ae.safetensors", "/m/ae.safetensors")])}
    error(await api.client.post("/api/operations", json=body), 422, "E_INVALID_INPUT", "comfyui")
    assert tree(outside) == {"models": "dir", "models/vae": "dir"} and faults.stats.requests == 0


async def test_download_into_a_linked_folder_is_refused(api: Served, faults: FaultServer, tmp_path: Path) -> None:
    """A plain download whose dest resolves out of download_root through a link is 422."""
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, api.root / "shared")
    response = await api.client.post("/api/operations", json={"url": faults.base_url + "/files/a.bin",
                                                              "dest": "shared/a.bin"})
    error(response, 422, "E_INVALID_INPUT", "dest")
    assert list(outside.iterdir()) == [] and faults.stats.requests == 0


# --- the user's files -----------------------------------------------------------------------


@pytest.mark.parametrize("dest", ["f.bin", ".bashrc"])
async def test_existing_file_is_409_e_exists_unless_overwrite(api: Served, faults: FaultServer, dest: str) -> None:
    """A file already in the root is 409 E_EXISTS (untouched, nothing fetched); "overwrite": true replaces it."""
    faults.add_file("/f.bin", size=50_000)
    target = api.root / dest
    target.write_bytes(OTHER)
    url = faults.base_url + "/f.bin"
    body = error(await api.client.post("/api/operations", json={"url": url, "dest": dest}),
                 409, "E_EXISTS", "dest")
    assert str(target) in body["message"] and '"overwrite": true' in body["message"]
    assert target.read_bytes() == OTHER and faults.stats.requests == 0
    assert (await api.client.get("/api/operations")).json() == []
    created = await api.client.post("/api/operations", json={"url": url, "dest": dest, "overwrite": True})
    assert created.status_code == 201, created.text
    assert created.json()["spec"]["overwrite"] is True
    final = await api.wait_status(created.json()["id"], "success", "failed", "exhausted")
    assert final["status"] == "success", final
    assert target.read_bytes() != OTHER and len(target.read_bytes()) == 50_000


async def test_existing_file_matching_sha256_completes_without_a_request(api: Served, faults: FaultServer) -> None:
    """With a sha256 that the present file matches, the download succeeds at once; nothing is fetched."""
    file = faults.add_file("/f.bin", size=50_000)
    (api.root / "f.bin").write_bytes(file.read())
    created = await api.client.post("/api/operations", json={"url": faults.base_url + "/f.bin", "dest": "f.bin",
                                                             "sha256": file.sha256})
    assert created.status_code == 201, created.text
    final = await api.wait_status(created.json()["id"], "success", "failed", "exhausted")
    assert final["status"] == "success" and faults.stats.requests == 0


async def test_existing_file_not_matching_sha256_fails_e_exists(api: Served, faults: FaultServer) -> None:
    """A present file that does not match the given sha256 is left alone: the operation fails E_EXISTS."""
    file = faults.add_file("/f.bin", size=50_000)
    (api.root / "f.bin").write_bytes(OTHER)
    created = await api.client.post("/api/operations", json={"url": faults.base_url + "/f.bin", "dest": "f.bin",
                                                             "sha256": file.sha256})
    assert created.status_code == 201, created.text
    final = await api.wait_status(created.json()["id"], "success", "failed", "exhausted")
    assert final["status"] == "failed" and final["error"]["code"] == "E_EXISTS", final
    assert (api.root / "f.bin").read_bytes() == OTHER and faults.stats.requests == 0


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
async def test_planted_part_link_is_not_written_through(api: Served, faults: FaultServer, tmp_path: Path,
                                                        link: str) -> None:
    """A .part planted as a link to a file outside the root: the download succeeds, the other file is intact."""
    faults.add_file("/m.bin", size=80_000)
    victim = other_file(tmp_path)
    (os.symlink if link == "symlink" else os.link)(victim, api.root / "m.bin.part")
    created = await api.client.post("/api/operations", json={"url": faults.base_url + "/m.bin", "dest": "m.bin"})
    assert created.status_code == 201, created.text
    final = await api.wait_status(created.json()["id"], "success", "failed", "exhausted")
    assert final["status"] == "success", final
    assert victim.read_bytes() == OTHER and os.stat(victim).st_nlink == 1
    dest = api.root / "m.bin"
    assert not dest.is_symlink() and os.stat(dest).st_nlink == 1
    import hashlib

    assert hashlib.sha256(dest.read_bytes()).hexdigest() == content_sha256("/m.bin", 80_000)


# --- bad input: 400 / 422, never a 500 ----------------------------------------------------------


@pytest.mark.parametrize("method,path", [("POST", "/api/operations"), ("PUT", "/api/settings")])
@pytest.mark.parametrize("shape", ["list", "object"])
async def test_deep_json_is_400_on_every_json_endpoint(api: Served, method: str, path: str, shape: str) -> None:
    """JSON nested 100,000 levels deep is 400 E_INVALID_INPUT (never 500), and the server keeps serving."""
    raw = deep_json() if shape == "list" else b'{"a":' * DEEP + b"1" + b"}" * DEEP
    response = await api.client.request(method, path, content=raw, headers={"content-type": "application/json"})
    body = error(response, 400, "E_INVALID_INPUT")
    assert "deep" in body["message"]
    assert (await api.client.get("/api/operations")).status_code == 200


@pytest.mark.parametrize("depth", [200, 900, 5000])
async def test_deep_workflow_in_an_import_is_never_500(api: Served, depth: int) -> None:
    """A workflow with a deeply nested (but readable) value is refused or planned, never a 500."""
    nested: Any = "x"
    for _ in range(depth):
        nested = {"n": nested}
    raw = json.dumps({"kind": "import", "comfyui": "ComfyUI", "workflow": {"nodes": [], "extra": nested}},
                     check_circular=False) if depth < 900 else (
        '{"kind": "import", "comfyui": "ComfyUI", "workflow": {"nodes": [], "extra": '
        + '{"n": ' * depth + '"x"' + "}" * depth + "}}")
    (api.root / "ComfyUI" / "models").mkdir(parents=True)
    response = await api.client.post("/api/operations", content=raw, headers={"content-type": "application/json"})
    assert response.status_code in (400, 409, 422), response.text
    assert response.json()["error"]["code"] in ("E_INVALID_INPUT", "E_INVALID_STATE")


@pytest.mark.parametrize("body,field", [
    ({"url": "http://127.0.0.1:9/a.bin", "dest": "a\x00.bin"}, "dest"),
    ({"url": "http://127.0.0.1:9/a\x00.bin"}, "url"),
    ({"url": "http://127.0.0.1:9/a.bin", "sha256": "ab\x00cd"}, "sha256"),
    ({"url": "http://127.0.0.1:9/a.bin", "headers": {"X-Api-Key": "k\x00ey"}}, "headers"),
    ({"url": "http://127.0.0.1:9/a.bin", "headers": {"X-Api\x00-Key": "key"}}, "headers"),
    ({"kind": "import", "comfyui": "Comfy\x00UI", "workflow": {"nodes": []}}, "comfyui"),
])
async def test_nul_byte_is_422_naming_the_field(api: Served, body: dict[str, Any], field: str) -> None:
    """A NUL byte in a path, URL, hash or header is 422 naming the field (never 500 'embedded null byte')."""
    response = await api.client.post("/api/operations", json=body)
    err = error(response, 422, "E_INVALID_INPUT")
    assert err.get("field", "").startswith(field), err
    assert "\x00" not in err["message"] and "k\x00ey" not in response.text
    assert list(api.root.iterdir()) == []


async def test_nul_byte_in_an_import_entry_is_422(api: Served) -> None:
    """A NUL byte in a workflow's model name or directory is 422 (field workflow), naming the node."""
    (api.root / "ComfyUI" / "models").mkdir(parents=True)
    for name, directory in (("a\x00.safetensors", "vae"), ("a.safetensors", "va\x00e")):
        body = {"kind": "import", "comfyui": "ComfyUI",
                "workflow": workflow("http://127.0.0.1:9", [(directory, name, "/a.safetensors")])}
        err = error(await api.client.post("/api/operations", json=body), 422, "E_INVALID_INPUT", "workflow")
        assert "node 1" in err["message"]


@pytest.mark.parametrize("changes,field", [({"max_retries": "5\x00"}, "max_retries"),
                                           ({"max_\x00retries": 5}, None),
                                           ({"download_root": "/\x00"}, "download_root")])
async def test_nul_byte_in_settings_is_refused(api: Served, changes: dict[str, Any], field: str | None) -> None:
    """PUT /api/settings with a NUL byte in a name or value is refused naming it (never 500); nothing changes."""
    before = (await api.client.get("/api/settings")).json()
    response = await api.client.put("/api/settings", json=changes)
    assert response.status_code in (403, 422), response.text
    if field is not None:
        assert response.json()["error"]["field"] == field
    assert (await api.client.get("/api/settings")).json() == before


@pytest.mark.parametrize("name", ["con", "NUL.safetensors", "COM1", "aux/x.safetensors", "lpt3.ckpt", "a."])
async def test_windows_device_names_refused_in_import_entries(api: Served, name: str) -> None:
    """Windows device names in an import entry are refused (422, the node named), on every platform."""
    (api.root / "ComfyUI" / "models").mkdir(parents=True)
    directory, _, base = name.rpartition("/")
    body = {"kind": "import", "comfyui": "ComfyUI",
            "workflow": workflow("http://127.0.0.1:9", [(directory or "vae", base, "/a.safetensors")]
                                 if not directory else [(directory, base, "/a.safetensors")])}
    err = error(await api.client.post("/api/operations", json=body), 422, "E_INVALID_INPUT", "workflow")
    assert "node 1" in err["message"]
