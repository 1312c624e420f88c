"""SPEC 6.1 and 8: a crash at the very end of a download (after the file is published, while the
success snapshot and the statistics are written) costs nothing: the rerun fetches no byte again."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _safety import ENV, threaded_server  # noqa: F401
from engine.testing import FaultServer, content_sha256

SIZE = 100_000
CRASH_AT = str(Path(__file__).with_name("_crash_at.py"))


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, CRASH_AT, *args], capture_output=True, text=True,
                          env={**ENV, **env}, timeout=120)


def _leftovers(root: Path) -> list[str]:
    """Temp files in the state directory and partial files in the output folder."""
    return sorted(str(p.relative_to(root)) for p in [*(root / "state").rglob("*.tmp"), *(root / "out").glob("*.part")])


@pytest.mark.parametrize("sha", [False, True], ids=["no-sha256", "sha256"])
def test_kill_at_every_point_after_publish_refetches_nothing(threaded_server: FaultServer, tmp_path: Path,
                                                              sha: bool) -> None:
    """SIGKILL at each file-system call after the publish (success snapshot's temp file, syncfs, rename,
    directory fsync, the statistics temp file and its rename): the rerun of the same command exits 0
    without a request, keeps one operation, leaves no temp file, and the file is exact."""
    server = threaded_server

    def args(i: int | str) -> list[str]:
        url = server.url(f"/files/end-{i}.bin", size=SIZE)
        extra = ["--sha256", content_sha256(f"/files/end-{i}.bin", SIZE)] if sha else []
        return ["download", url, "-o", str(tmp_path / str(i) / "out"), "--state-dir",
                str(tmp_path / str(i) / "state"), *extra]

    trace = tmp_path / "trace.txt"
    clean = _run(args("trace"), CRASH_TRACE=str(trace))
    assert clean.returncode == 0, clean.stderr
    points = trace.read_text().splitlines()
    # The points span what the issue found costly: the success snapshot and the statistics write.
    assert any("replace" in p and p.endswith(".msgpack") and "operations" in p for p in points), points
    assert any("replace" in p and p.endswith("stats.msgpack") for p in points), points
    assert any(".stats.msgpack." in p and " open " in p for p in points), points

    failures = []
    for i in range(len(points)):
        name = f"end-{i}.bin"
        killed = _run(args(i), CRASH_AT=str(i))
        assert killed.returncode == -signal.SIGKILL, (points[i], killed.stderr[-2000:])
        before = server.stats.requests
        rerun = _run(args(i))
        root = tmp_path / str(i)
        dest = root / "out" / name
        got = hashlib.sha256(dest.read_bytes()).hexdigest() if dest.is_file() else None
        ops = sorted(p.name for p in (root / "state" / "operations").glob("*.msgpack"))
        problems = {
            "exit": rerun.returncode != 0,
            "fetched again": server.stats.requests != before,
            "file": got != content_sha256(f"/files/{name}", SIZE),
            "leftovers": _leftovers(root),
            "operations": len(ops) != 1,
        }
        problems = {k: v for k, v in problems.items() if v}
        if problems:
            failures.append((points[i], problems, rerun.stderr[-500:]))
    assert failures == []
