"""``recovery import`` as a user runs it: real subprocesses against a fault server in a thread."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine._cli import main
from engine.testing import FaultServer, content_sha256

ENV = {**os.environ, "COLUMNS": "250", "PYTHONUNBUFFERED": "1"}
ENV.pop("RECOVERY_STATE_DIR", None)
PRESENT = b"my own upscaler, not to be touched"


@pytest.fixture
def server() -> Iterator[FaultServer]:
    srv = FaultServer()
    with srv.run_in_thread():
        yield srv


def recovery_import(workflow: Path, comfy: Path, *extra: str, state: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "engine", "import", str(workflow), "--comfyui", str(comfy),
            "--state-dir", str(state), *extra]
    return subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=60)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_sha(url: str) -> str:
    """What the fault server serves for ``url``: content seeded by its path, of its ``size``."""
    parts = urllib.parse.urlsplit(url)
    return content_sha256(parts.path, int(urllib.parse.parse_qs(parts.query)["size"][0]))


def dry_run(workflow: Path, comfy: Path, capsys: Any) -> dict[str, Any]:
    """The ``--dry-run --json`` plan, run in this process."""
    code = main(["import", str(workflow), "--comfyui", str(comfy), "--dry-run", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


@pytest.fixture
def comfy(tmp_path: Path) -> Path:
    """A ComfyUI folder with one model already in place."""
    root = tmp_path / "ComfyUI"
    present = root / "models" / "upscale_models" / "4x_present.pth"
    present.parent.mkdir(parents=True)
    present.write_bytes(PRESENT)
    return root


def test_import_fetches_every_missing_model(server: FaultServer, write_workflow: Any, comfy: Path,
                                            tmp_path: Path, tree: Any, capsys: Any) -> None:
    """Missing models land byte-exact at models/<directory>/<name>, present ones are untouched, as planned."""
    workflow = write_workflow("loopback_models.json", SERVER=server.base_url)
    present = comfy / "models" / "upscale_models" / "4x_present.pth"
    present_stat = present.stat()
    before = tree(comfy)
    plan = dry_run(workflow, comfy, capsys)
    assert tree(comfy) == before and server.stats.requests == 0  # the dry run touched nothing
    assert [s["dest"] for s in plan["skip"]] == [str(present)]
    assert plan["node_packs"] == {"comfyui-custom-scripts": "1.2.5", "comfyui-kjnodes": "1.1.2"}

    proc = recovery_import(workflow, comfy, "--set", "initial_delay_s=0.05", state=tmp_path / "state")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    new_files = sorted(p for p in set(tree(comfy)) - set(before) if (comfy / p).is_file())
    assert new_files == sorted(str(Path(d["dest"]).relative_to(comfy)) for d in plan["download"])
    for entry in plan["download"]:
        assert sha256_of(Path(entry["dest"])) == expected_sha(entry["url"]), entry["name"]
    assert present.read_bytes() == PRESENT and present.stat().st_mtime_ns == present_stat.st_mtime_ns
    paths = server.stats.paths
    assert "/files/upscale_models/4x_present.pth" not in paths  # never asked for
    assert "/files/vae/another-vae.safetensors" not in paths  # the conflicting duplicate lost
    assert paths["/files/checkpoints/sd15_base.safetensors"].requests == 1  # listed twice, fetched once
    assert [r.outcome for r in paths["/files/loras/detail_tweaker.safetensors"].records] == ["dropped", "complete"]
    assert not list(comfy.rglob("*.part"))


def test_rerun_after_success_downloads_nothing(server: FaultServer, write_workflow: Any, comfy: Path,
                                               tmp_path: Path) -> None:
    """Once everything is present, the same command reports it and exits 0 without a request."""
    workflow = write_workflow("three_models.json", SERVER=server.base_url, SIZE="70000", RATE="100000000")
    assert recovery_import(workflow, comfy, state=tmp_path / "state").returncode == 0
    requests = server.stats.requests
    proc = recovery_import(workflow, comfy, state=tmp_path / "state")
    assert proc.returncode == 0, proc.stderr
    assert "3 present" in proc.stderr and "nothing to download" in proc.stderr
    assert server.stats.requests == requests


def test_hostile_entries_refused_nothing_written_outside(server: FaultServer, write_workflow: Any,
                                                         tmp_path: Path, tree: Any, capsys: Any) -> None:
    """Escaping names and directories and file:// URLs are refused by node; only models/ gains files; exit 1."""
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    outside = tmp_path / "outside"
    workflow = write_workflow("hostile.json", SERVER=server.base_url, ABSOLUTE_DIR=str(outside))
    before = tree(tmp_path)
    plan = dry_run(workflow, comfy, capsys)
    assert [d["name"] for d in plan["download"]] == ["safe.safetensors"]
    assert [(r["node"]["id"], r["node"]["type"]) for r in plan["refused"]][:5] == [
        (1, "CheckpointLoaderSimple"), (2, "LoraLoader"), (3, "VAELoader"), (4, "UpscaleModelLoader"),
        (5, "CLIPLoader")]

    proc = recovery_import(workflow, comfy, "--json", state=tmp_path / "state")
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["type"] == "import_plan" and len(lines[0]["refused"]) == 9
    for ref in ("node 1 (CheckpointLoaderSimple)", "node 2 (LoraLoader)", "node 5 (CLIPLoader)"):
        assert ref in proc.stderr
    after = tree(tmp_path)
    added = {p for p in set(after) - set(before)}
    assert all(p.startswith(("ComfyUI/models", "state")) for p in added), sorted(added)
    assert "ComfyUI/models/checkpoints/safe.safetensors" in added
    assert not outside.exists() and not (tmp_path.parent / ".ssh").exists()
    assert {p for p in server.stats.paths if p.startswith("/files/evil")} == set()


def test_dry_run_text_names_everything(write_workflow: Any, comfy: Path, capsys: Any) -> None:
    """The human dry run lists downloads, skips, refusals, conflicts and node packs, and exits 0."""
    workflow = write_workflow("loopback_models.json", SERVER="http://127.0.0.1:9")
    code = main(["import", str(workflow), "--comfyui", str(comfy), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "download  checkpoints/sd15_base.safetensors" in out
    assert "skip      upscale_models/4x_present.pth" in out
    assert "conflict  vae/vae-ft-mse-840000-ema-pruned.safetensors" in out
    assert "comfyui-custom-scripts 1.2.5, comfyui-kjnodes 1.1.2" in out
    assert "5 to download, 1 present, 0 bypassed, 0 refused, 1 conflicting" in out


@pytest.mark.parametrize("case", ["no folder", "not json", "api format"])
def test_usage_errors_exit_2(case: str, tmp_path: Path, capsys: Any) -> None:
    """A missing ComfyUI folder or a file that is not a workflow is a usage error."""
    workflow = tmp_path / "wf.json"
    workflow.write_text({"no folder": '{"nodes": []}', "not json": "{",
                         "api format": '{"3": {"class_type": "KSampler", "inputs": {}}}'}[case])
    comfy = tmp_path / ("missing" if case == "no folder" else "")
    code = main(["import", str(workflow), "--comfyui", str(comfy), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert {"no folder": "does not exist", "not json": "not valid JSON", "api format": "API-format"}[case] in err
