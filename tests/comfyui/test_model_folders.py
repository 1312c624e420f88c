"""Models already on disk are found where ComfyUI looks: folder aliases and extra_model_paths.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.testing import FaultServer

ENV = {**os.environ, "COLUMNS": "250"}
ENV.pop("RECOVERY_STATE_DIR", None)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    srv = FaultServer()
    with srv.run_in_thread():
        yield srv


def _workflow(path: Path, base: str, models: list[tuple[str, str]]) -> Path:
    nodes = [{"id": i + 1, "type": "Loader", "mode": 0,
              "properties": {"models": [{"name": name, "directory": folder,
                                         "url": f"{base}/files/{folder}/{name}?size=2048"}]}}
             for i, (folder, name) in enumerate(models)]
    path.write_text(json.dumps({"nodes": nodes, "links": []}))
    return path


def test_present_models_in_aliases_and_extra_paths_are_not_fetched(server: FaultServer, tmp_path: Path) -> None:
    """text_encoders found in models/clip, vae and loras in a second drive named by the YAML; only the
    missing model is fetched, into the YAML's is_default folder; present files are untouched."""
    comfy = tmp_path / "ComfyUI"
    old_clip = comfy / "models" / "clip" / "t5xxl.safetensors"
    other = tmp_path / "other-drive"
    extra_vae = other / "my-vae" / "ae.safetensors"
    for path, body in ((old_clip, b"user's t5"), (extra_vae, b"user's vae")):
        path.parent.mkdir(parents=True)
        path.write_bytes(body)
    (other / "my-loras").mkdir()
    (comfy / "extra_model_paths.yaml").write_text(
        "second_drive:\n"
        f"  base_path: {other}\n"
        "  is_default: true\n"
        "  vae: my-vae\n"
        "  loras: |\n"  # several paths: is_default puts each at the front, as ComfyUI does
        "    more-loras\n"
        "    my-loras\n")
    workflow = _workflow(tmp_path / "wf.json", server.base_url, [
        ("text_encoders", "t5xxl.safetensors"), ("vae", "ae.safetensors"), ("loras", "new.safetensors")])
    argv = [sys.executable, "-m", "engine", "import", str(workflow), "--comfyui", str(comfy),
            "--state-dir", str(tmp_path / "state")]

    plan = subprocess.run([*argv, "--dry-run", "--json"], capture_output=True, text=True, env=ENV, timeout=60)
    assert plan.returncode == 0, plan.stderr
    doc = json.loads(plan.stdout)
    present = {Path(s.get("present_at") or s["dest"]) for s in doc["skip"]}
    assert present == {old_clip, extra_vae}, doc
    assert [Path(d["dest"]) for d in doc["download"]] == [other / "my-loras" / "new.safetensors"]
    assert server.stats.requests == 0

    run = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=60)
    assert run.returncode == 0, run.stderr
    assert set(server.stats.paths) == {"/files/loras/new.safetensors"}
    assert (other / "my-loras" / "new.safetensors").stat().st_size == 2048
    assert old_clip.read_bytes() == b"user's t5" and extra_vae.read_bytes() == b"user's vae"
    assert not (comfy / "models" / "text_encoders" / "t5xxl.safetensors").exists()
    assert not (comfy / "models" / "vae" / "ae.safetensors").exists()


def test_extra_model_paths_flag_and_a_bad_file(server: FaultServer, tmp_path: Path) -> None:
    """--extra-model-paths FILE is read instead of DIR's; a malformed one exits 2 naming the file."""
    comfy = tmp_path / "ComfyUI"
    (comfy / "models").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "ckpt").mkdir(parents=True)
    (elsewhere / "ckpt" / "base.safetensors").write_bytes(b"mine")
    good = tmp_path / "paths.yaml"
    good.write_text(f"a:\n  base_path: {elsewhere}\n  checkpoints: ckpt\n")
    workflow = _workflow(tmp_path / "wf.json", server.base_url, [("checkpoints", "base.safetensors")])
    argv = [sys.executable, "-m", "engine", "import", str(workflow), "--comfyui", str(comfy),
            "--state-dir", str(tmp_path / "state"), "--dry-run", "--json"]
    ok = subprocess.run([*argv, "--extra-model-paths", str(good)], capture_output=True, text=True, env=ENV,
                        timeout=60)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["download"] == [] and len(doc["skip"]) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed\n")
    refused = subprocess.run([*argv, "--extra-model-paths", str(bad)], capture_output=True, text=True,
                             env=ENV, timeout=60)
    assert refused.returncode == 2 and str(bad) in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("directory,alias", [("text_encoders", "clip"), ("diffusion_models", "unet"),
                                             ("controlnet", "t2i_adapter")])
def test_every_comfyui_alias_finds_a_present_model(tmp_path: Path, directory: str, alias: str) -> None:
    """Each folder alias ComfyUI searches (clip, unet, t2i_adapter) counts a model there as present."""
    from engine._projects._comfyui import plan_import

    comfy = tmp_path / "ComfyUI"
    present = comfy / "models" / alias / "m.safetensors"
    present.parent.mkdir(parents=True)
    present.write_bytes(b"mine")
    wf = _workflow(tmp_path / "wf.json", "http://127.0.0.1:9", [(directory, "m.safetensors")])
    plan = plan_import(wf, comfy)
    assert plan.downloads == () and [Path(e.present_at or "") for e in plan.skipped] == [present]


def test_relative_base_path_is_relative_to_the_yaml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative base_path in extra_model_paths.yaml is read from the YAML file's folder, not the
    working directory: a model there is present, and a missing one goes to its is_default folder."""
    from engine._projects._comfyui import plan_import

    comfy = tmp_path / "ComfyUI"
    (comfy / "models").mkdir(parents=True)
    shared = tmp_path / "shared-models"
    (shared / "vae").mkdir(parents=True)
    (shared / "vae" / "ae.safetensors").write_bytes(b"mine")
    (comfy / "extra_model_paths.yaml").write_text(
        "shared:\n  base_path: ../shared-models\n  is_default: true\n  vae: vae\n  loras: loras\n")
    wf = _workflow(tmp_path / "wf.json", "http://127.0.0.1:9", [("vae", "ae.safetensors"),
                                                                 ("loras", "new.safetensors")])
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    plan = plan_import(wf, comfy)
    assert [Path(e.present_at or "").resolve() for e in plan.skipped] == [(shared / "vae" / "ae.safetensors")]
    assert [Path(e.dest).resolve() for e in plan.downloads] == [shared / "loras" / "new.safetensors"]
