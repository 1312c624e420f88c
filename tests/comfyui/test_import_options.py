"""``recovery import`` options of SPEC 7.1 / issue 14: --include-bypassed, --verify, ``?download=true``
duplicates, and a plan that says per model where it goes and why. Real subprocesses, a real server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.testing import FaultServer, content_sha256

ENV = {**os.environ, "COLUMNS": "250", "PYTHONUNBUFFERED": "1"}
ENV.pop("RECOVERY_STATE_DIR", None)
MINE = b"the user's own file"


@pytest.fixture
def server() -> Iterator[FaultServer]:
    srv = FaultServer()
    with srv.run_in_thread():
        yield srv


def node(node_id: int, mode: int, directory: str, name: str, url: str, sha: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "url": url, "directory": directory}
    if sha:
        entry.update(hash=sha, hash_type="SHA256")
    return {"id": node_id, "type": "Loader", "mode": mode, "properties": {"models": [entry]}}


def run(workflow: Path, comfy: Path, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "engine", "import", str(workflow), "--comfyui", str(comfy),
            "--state-dir", str(state), *extra]
    return subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=60)


def test_bypassed_and_muted_are_listed_not_fetched_unless_included(server: FaultServer, tmp_path: Path) -> None:
    """Models of bypassed (mode 4) and muted (mode 2) nodes are listed as such and never asked for;
    --include-bypassed fetches them too."""
    base = server.base_url + "/files"
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"nodes": [
        node(1, 0, "checkpoints", "base.safetensors", f"{base}/base.safetensors?size=3000"),
        node(2, 4, "loras", "bypassed.safetensors", f"{base}/bypassed.safetensors?size=3000"),
        node(3, 2, "vae", "muted.safetensors", f"{base}/muted.safetensors?size=3000")]}))
    comfy = tmp_path / "ComfyUI"
    (comfy / "models").mkdir(parents=True)

    plan = run(wf, comfy, tmp_path / "state", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "bypassed  loras/bypassed.safetensors  (not needed: " in plan.stdout
    assert "bypassed  vae/muted.safetensors  (not needed: " in plan.stdout
    assert "1 to download, 0 present, 2 bypassed, 0 refused" in plan.stdout

    first = run(wf, comfy, tmp_path / "state")
    assert first.returncode == 0, first.stderr
    assert set(server.stats.paths) == {"/files/base.safetensors"}
    assert not (comfy / "models" / "loras").exists() and not (comfy / "models" / "vae").exists()

    included = run(wf, comfy, tmp_path / "state", "--include-bypassed")
    assert included.returncode == 0, included.stderr
    assert set(server.stats.paths) == {"/files/base.safetensors", "/files/bypassed.safetensors",
                                       "/files/muted.safetensors"}
    for directory, name in (("loras", "bypassed.safetensors"), ("vae", "muted.safetensors")):
        got = hashlib.sha256((comfy / "models" / directory / name).read_bytes()).hexdigest()
        assert got == content_sha256(f"/files/{name}", 3000)
    assert server.stats.paths["/files/base.safetensors"].requests == 1  # the present one not again


def test_download_true_duplicate_is_one_model(server: FaultServer, tmp_path: Path) -> None:
    """Two nodes naming one model by URLs that differ only by ?download=true: one download, no conflict."""
    url = server.base_url + "/files/ae.safetensors?size=4000"
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"nodes": [node(1, 0, "vae", "ae.safetensors", url),
                                        node(2, 0, "vae", "ae.safetensors", url + "&download=true")]}))
    comfy = tmp_path / "ComfyUI"
    (comfy / "models").mkdir(parents=True)
    plan = run(wf, comfy, tmp_path / "state", "--dry-run", "--json")
    doc = json.loads(plan.stdout)
    assert len(doc["download"]) == 1 and doc["conflicts"] == [], doc
    done = run(wf, comfy, tmp_path / "state")
    assert done.returncode == 0, done.stderr
    assert server.stats.paths["/files/ae.safetensors"].requests == 1
    assert (comfy / "models" / "vae" / "ae.safetensors").stat().st_size == 4000


def test_verify_checks_present_files_against_their_hash(server: FaultServer, tmp_path: Path) -> None:
    """Without --verify a present file counts as present; with it, a match is 'sha256 verified' and a
    mismatch is refused (exit 1) with the file untouched; nothing is fetched either way."""
    comfy = tmp_path / "ComfyUI"
    good = comfy / "models" / "checkpoints" / "good.safetensors"
    bad = comfy / "models" / "vae" / "bad.safetensors"
    for path in (good, bad):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(MINE)
    base = server.base_url + "/files"
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"nodes": [
        node(1, 0, "checkpoints", "good.safetensors", f"{base}/good.safetensors?size=100",
             hashlib.sha256(MINE).hexdigest()),
        node(2, 0, "vae", "bad.safetensors", f"{base}/bad.safetensors?size=100", "ab" * 32)]}))
    plain = run(wf, comfy, tmp_path / "state", "--dry-run")
    assert plain.returncode == 0, plain.stderr
    assert "0 to download, 2 present, 0 bypassed, 0 refused" in plain.stdout
    assert f"skip      checkpoints/good.safetensors  (present at {good})" in plain.stdout

    checked = run(wf, comfy, tmp_path / "state", "--verify")
    assert checked.returncode == 1, checked.stderr
    assert f"(present at {good}, sha256 verified)" in checked.stderr
    assert "refused   vae/bad.safetensors node 2" in checked.stderr and "sha256 differs" in checked.stderr
    assert good.read_bytes() == MINE and bad.read_bytes() == MINE
    assert server.stats.requests == 0


def test_plan_says_where_each_model_goes_and_why(server: FaultServer, tmp_path: Path) -> None:
    """The plan gives every model its line: missing (with its destination), present at PATH, bypassed, refused."""
    comfy = tmp_path / "ComfyUI"
    present = comfy / "models" / "clip" / "t5.safetensors"  # found through the text_encoders alias
    present.parent.mkdir(parents=True)
    present.write_bytes(MINE)
    base = server.base_url + "/files"
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"nodes": [
        node(1, 0, "checkpoints", "new.safetensors", f"{base}/new.safetensors?size=10"),
        node(2, 0, "text_encoders", "t5.safetensors", f"{base}/t5.safetensors?size=10"),
        node(3, 4, "loras", "off.safetensors", f"{base}/off.safetensors?size=10"),
        node(4, 0, "vae", "../escape.safetensors", f"{base}/escape.safetensors?size=10")]}))
    plan = run(wf, comfy, tmp_path / "state", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout.splitlines()

    def line(prefix: str) -> str:
        found = [x for x in lines if x.strip().startswith(prefix)]
        assert len(found) == 1, (prefix, plan.stdout)
        return found[0]

    assert "(missing)" in line("download  checkpoints/new.safetensors")
    assert f"(present at {present})" in line("skip      text_encoders/t5.safetensors")
    assert "not needed: " in line("bypassed  loras/off.safetensors")
    assert "node 4" in line("refused")
    doc = json.loads(run(wf, comfy, tmp_path / "state", "--dry-run", "--json").stdout)
    assert doc["download"][0]["dest"] == str(comfy / "models" / "checkpoints" / "new.safetensors")
    assert doc["download"][0]["reason"] == "missing" and doc["skip"][0]["present_at"] == str(present)
    assert server.stats.requests == 0


def test_sizes_warn_when_the_models_do_not_fit(server: FaultServer, tmp_path: Path) -> None:
    """--sizes asks each missing model's size (HEAD, no body) and warns when the total exceeds the free
    space where the files go; the dry run still exits 0 and writes nothing."""
    huge = 10**15  # a petabyte: no test machine has that much free
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"nodes": [
        node(1, 0, "checkpoints", "huge.safetensors", f"{server.base_url}/files/huge.safetensors?size={huge}"),
        node(2, 0, "vae", "small.safetensors", f"{server.base_url}/files/small.safetensors?size=1000")]}))
    comfy = tmp_path / "ComfyUI"
    (comfy / "models").mkdir(parents=True)
    text = run(wf, comfy, tmp_path / "state", "--dry-run", "--sizes")
    assert text.returncode == 0, text.stderr
    assert "warning: " in text.stdout and "more than the free space on " in text.stdout, text.stdout
    doc = json.loads(run(wf, comfy, tmp_path / "state", "--dry-run", "--sizes", "--json").stdout)
    assert doc["sizes"]["total_bytes"] == huge + 1000
    assert [v["fits"] for v in doc["sizes"]["volumes"]] == [False]
    assert {r.method for p in server.stats.paths.values() for r in p.records} == {"HEAD"}
    assert not list(comfy.rglob("*.safetensors*"))
