"""``recovery download`` over several connections as a user runs it: --connections, Ctrl-C, --limit-rate."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import msgpack

from engine.testing import FaultServer, Faults, content_bytes, content_sha256

MIB = 1024 * 1024
ENV = {**os.environ, "COLUMNS": "250", "PYTHONUNBUFFERED": "1"}
ENV.pop("RECOVERY_STATE_DIR", None)


def argv(url: str, tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "engine", "download", url, "-o", str(tmp_path / "out"),
            "--state-dir", str(tmp_path / "state"), "--set", f"min_segment_bytes={MIB}", *extra]


def events_until(stream: IO[str], wanted: Any, limit_s: float) -> list[dict[str, Any]]:
    """Read JSON events until one satisfies ``wanted`` (bounded by ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    seen = []
    for line in stream:
        event = json.loads(line)
        seen.append(event)
        if wanted(event):
            return seen
        assert time.monotonic() < deadline, f"never happened; events: {seen[-5:]}"
    raise AssertionError(f"the command ended first; events: {seen[-5:]}")


def test_ctrl_c_with_eight_connections_pauses_and_rerun_resumes(server: FaultServer, tmp_path: Path) -> None:
    """Ctrl-C with 8 connections open exits 130, every segment durable as recorded; a rerun ends exact."""
    size = 64 * MIB
    path = "/files/eight.bin"
    url = server.url(path, size=size, faults=Faults(rate_bps=MIB))
    proc = subprocess.Popen(argv(url, tmp_path, "--json", "--connections", "8"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stdout is not None
        events_until(proc.stdout, lambda e: e["type"] == "progress" and e.get("connections") == 8, 120)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    deadline = time.monotonic() + 10
    while server.stats.connections:  # every connection closed (the server notices at its next send)
        assert time.monotonic() < deadline, "a connection stayed open after Ctrl-C"
        time.sleep(0.01)
    [snap_path] = (tmp_path / "state" / "operations").glob("*.msgpack")
    snap = msgpack.unpackb(snap_path.read_bytes(), raw=False)["operation"]
    assert snap["status"] == "paused"
    segments = snap["state"]["segments"]
    part = (tmp_path / "out" / "eight.bin.part").read_bytes()
    assert len(part) == size and len(segments) >= 8
    for start, end, durable in segments:  # what the snapshot calls durable is on disk and right
        assert start <= durable <= end
        assert part[start:durable] == content_bytes(path, size, start, durable)

    again = subprocess.run(argv(url, tmp_path), capture_output=True, text=True, env=ENV, timeout=300)
    assert again.returncode == 0, again.stderr
    digest = hashlib.sha256((tmp_path / "out" / "eight.bin").read_bytes()).hexdigest()
    assert digest == content_sha256(path, size)


def test_limit_rate_and_mirror_flags(server: FaultServer, tmp_path: Path) -> None:
    """--limit-rate and --mirror reach the spec (the JSON submitted event shows them); a bad rate is a usage error."""
    size = 2 * MIB
    good = server.url("/files/m.bin", size=size)
    broken = server.url("/files/m.bin", size=size, faults=Faults(status=404))
    done = subprocess.run(argv(broken, tmp_path, "--json", "--limit-rate", "8M", "--mirror", good),
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    [submitted] = [json.loads(line) for line in done.stdout.splitlines() if '"submitted"' in line]
    assert submitted["spec"]["rate_limit_bps"] == 8 * MIB and len(submitted["spec"]["mirrors"]) == 1
    assert hashlib.sha256((tmp_path / "out" / "m.bin").read_bytes()).hexdigest() == content_sha256("/files/m.bin", size)
    bad = subprocess.run(argv(good, tmp_path, "--limit-rate", "fast"), capture_output=True, text=True, env=ENV,
                         timeout=60)
    assert bad.returncode == 2 and "not a rate" in bad.stderr
