"""POST /api/operations with kind "import": a ComfyUI workflow's missing models as one project."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from engine.testing import FaultServer, content_sha256


def workflow(base: str, models: list[tuple[str, str, str]]) -> dict[str, Any]:
    """A workflow in the shape ComfyUI saves, one loader node per model."""
    nodes = [{"id": i + 1, "type": "CheckpointLoaderSimple", "pos": [0, 0], "inputs": [], "outputs": [],
              "properties": {"cnr_id": "comfy-core", "ver": "0.3.40",
                             "models": [{"name": name, "url": f"{base}{path}", "directory": directory}]},
              "widgets_values": [name]}
             for i, (directory, name, path) in enumerate(models)]
    nodes.append({"id": 99, "type": "Note", "widgets_values": ["fetch the models first"]})
    return {"last_node_id": 99, "nodes": nodes, "links": [], "groups": [], "version": 0.4}


async def test_import_downloads_missing_models_into_the_comfyui_folder(api, faults: FaultServer) -> None:
    """An import becomes a project that puts every missing model at models/<directory>/<name>."""
    faults.add_file("/m/ae.safetensors", size=40_000)
    faults.add_file("/m/unet.safetensors", size=70_000)
    comfy = api.root / "ComfyUI"
    (comfy / "models" / "vae").mkdir(parents=True)
    body = {"kind": "import", "comfyui": "ComfyUI",
            "workflow": workflow(faults.base_url, [("vae", "ae.safetensors", "/m/ae.safetensors"),
                                                   ("diffusion_models", "unet.safetensors", "/m/unet.safetensors")])}
    created = await api.client.post("/api/operations", json=body)
    assert created.status_code == 201, created.text
    op = created.json()
    assert op["kind"] == "project" and len(op["spec"]["steps"]) == 2
    final = await api.wait_status(op["id"], "success", "failed", "exhausted", timeout=10)
    assert final["status"] == "success"
    for directory, name, path, size in (("vae", "ae.safetensors", "/m/ae.safetensors", 40_000),
                                        ("diffusion_models", "unet.safetensors", "/m/unet.safetensors", 70_000)):
        data = (comfy / "models" / directory / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == content_sha256(path, size)
    # everything present now: a second import has nothing to do
    again = await api.client.post("/api/operations", json=body)
    assert again.status_code == 409 and again.json()["error"]["code"] == "E_INVALID_STATE"


async def test_hostile_workflow_and_folder_are_refused(api, faults: FaultServer) -> None:
    """Entries that would leave models/ and folders outside download_root are 422, nothing written."""
    before = sorted(p for p in Path(api.root).rglob("*"))
    hostile = workflow(faults.base_url, [("../../.ssh", "authorized_keys", "/m/x")])
    refused = await api.client.post("/api/operations", json={"kind": "import", "comfyui": "ComfyUI",
                                                             "workflow": hostile})
    assert refused.status_code == 422
    assert refused.json()["error"]["field"] == "workflow" and "node 1" in refused.json()["error"]["message"]
    outside = await api.client.post("/api/operations", json={"kind": "import", "comfyui": "../elsewhere",
                                                             "workflow": workflow(faults.base_url, [])})
    assert outside.status_code == 422 and outside.json()["error"]["field"] == "comfyui"
    unknown = await api.client.post("/api/operations", json={"kind": "import", "comfyui": "ComfyUI",
                                                             "workflow": {}, "shell": "rm -rf /"})
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "shell"
    assert sorted(p for p in Path(api.root).rglob("*")) == before
