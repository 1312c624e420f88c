"""``recovery import`` killed or interrupted mid-way, then run again: nothing finished is fetched twice."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.testing import FaultServer, content_bytes, content_sha256

ENV = {**os.environ, "COLUMNS": "250", "PYTHONUNBUFFERED": "1"}
ENV.pop("RECOVERY_STATE_DIR", None)
SIZE = 2 * 1024 * 1024
RATE = 1024 * 1024  # two seconds per model
MODELS = {
    "/files/diffusion_models/first.safetensors": "diffusion_models/first.safetensors",
    "/files/text_encoders/second.safetensors": "text_encoders/second.safetensors",
    "/files/vae/third.safetensors": "vae/third.safetensors",
}


@pytest.fixture
def server() -> Iterator[FaultServer]:
    srv = FaultServer()
    with srv.run_in_thread():
        yield srv


def _argv(workflow: Path, comfy: Path, state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "engine", "import", str(workflow), "--comfyui", str(comfy),
            "--state-dir", str(state), "--set", "checkpoint_interval_s=0.2", *extra]


def _wait_for(predicate: Any, timeout_s: float, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the import ended early ({proc.returncode}): {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_sigkill_during_second_model_then_rerun(server: FaultServer, write_workflow: Any, tmp_path: Path) -> None:
    """After kill -9 in model 2 of 3, the rerun skips model 1, resumes model 2 by Range, and exits 0."""
    workflow = write_workflow("three_models.json", SERVER=server.base_url, SIZE=str(SIZE), RATE=str(RATE))
    comfy, state = tmp_path / "ComfyUI", tmp_path / "state"
    comfy.mkdir()
    models = comfy / "models"
    second_part = models / "text_encoders" / "second.safetensors.part"

    proc = subprocess.Popen(_argv(workflow, comfy, state), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    try:
        # Far enough into model 2 that several checkpoints recorded an offset.
        _wait_for(lambda: _size(second_part) >= 600 * 1024, 20, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    first = models / "diffusion_models" / "first.safetensors"
    first_stat = first.stat()
    assert not (models / "vae" / "third.safetensors").exists()

    rerun = subprocess.run(_argv(workflow, comfy, state), capture_output=True, text=True, env=ENV, timeout=30)
    assert rerun.returncode == 0, rerun.stderr
    assert "Traceback" not in rerun.stderr
    assert "1 present" in rerun.stderr  # the plan saw model 1 and continued the recorded run

    stats = server.stats.paths
    (only,) = stats["/files/diffusion_models/first.safetensors"].records
    assert (only.status, only.range_start, only.bytes_sent, only.outcome) == (200, 0, SIZE, "complete")
    second = stats["/files/text_encoders/second.safetensors"].records
    assert second[0].range_start == 0 and second[0].bytes_sent < SIZE
    assert len(second) == 2 and second[1].status == 206 and second[1].range_start > 0
    assert second[0].bytes_sent >= second[1].range_start  # it resumed from what was durable
    (third,) = stats["/files/vae/third.safetensors"].records
    assert (third.range_start, third.bytes_sent) == (0, SIZE)
    for url_path, rel in MODELS.items():
        assert hashlib.sha256((models / rel).read_bytes()).hexdigest() == content_sha256(url_path, SIZE), rel
    assert first.stat().st_mtime_ns == first_stat.st_mtime_ns  # never rewritten
    assert not list(models.rglob("*.part"))


def _interrupt_during_second(workflow: Path, comfy: Path, state: Path) -> subprocess.CompletedProcess[str]:
    """Run the import and press Ctrl-C once model 2 is on its way; returns the finished process."""
    second_part = comfy / "models" / "text_encoders" / "second.safetensors.part"
    proc = subprocess.Popen(_argv(workflow, comfy, state), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    try:
        _wait_for(lambda: _size(second_part) >= 300 * 1024, 20, proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_pauses_and_rerun_resumes(server: FaultServer, write_workflow: Any, tmp_path: Path) -> None:
    """Ctrl-C pauses the import (exit 130); the same command continues model 2 by Range and exits 0."""
    size = SIZE // 2
    workflow = write_workflow("three_models.json", SERVER=server.base_url, SIZE=str(size), RATE=str(RATE))
    comfy, state = tmp_path / "ComfyUI", tmp_path / "state"
    comfy.mkdir()
    first = _interrupt_during_second(workflow, comfy, state)
    assert first.returncode == 130, first.stderr
    assert "paused" in first.stderr and "Traceback" not in first.stderr

    rerun = subprocess.run(_argv(workflow, comfy, state), capture_output=True, text=True, env=ENV, timeout=30)
    assert rerun.returncode == 0, rerun.stderr
    stats = server.stats.paths
    assert stats["/files/diffusion_models/first.safetensors"].requests == 1
    second = stats["/files/text_encoders/second.safetensors"].records
    assert [r.status for r in second] == [200, 206] and second[1].range_start > 0
    for url_path, rel in MODELS.items():
        data = (comfy / "models" / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == content_sha256(url_path, size), rel


def test_paused_run_no_longer_needed_is_cancelled(server: FaultServer, write_workflow: Any,
                                                  tmp_path: Path) -> None:
    """If the missing models appeared meanwhile, the rerun fetches nothing and drops the paused run's .part."""
    size = SIZE // 2
    workflow = write_workflow("three_models.json", SERVER=server.base_url, SIZE=str(size), RATE=str(RATE))
    comfy, state = tmp_path / "ComfyUI", tmp_path / "state"
    comfy.mkdir()
    assert _interrupt_during_second(workflow, comfy, state).returncode == 130
    models = comfy / "models"
    placed = {rel: content_bytes(path, size) for path, rel in MODELS.items() if not rel.startswith("diffusion")}
    for rel, data in placed.items():  # the user copied them in by hand
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        (models / rel).write_bytes(data)
    stamps = {rel: (models / rel).stat().st_mtime_ns for rel in placed}
    requests = server.stats.requests

    rerun = subprocess.run(_argv(workflow, comfy, state), capture_output=True, text=True, env=ENV, timeout=30)
    assert rerun.returncode == 0, rerun.stderr
    assert "nothing to download" in rerun.stderr and "cancelled" in rerun.stderr
    assert server.stats.requests == requests
    assert not list(models.rglob("*.part"))
    assert {rel: (models / rel).stat().st_mtime_ns for rel in placed} == stamps
    assert all((models / rel).read_bytes() == data for rel, data in placed.items())
