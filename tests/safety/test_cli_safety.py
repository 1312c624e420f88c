"""The user's files through ``recovery download`` (SPEC 6.1): real processes, a real server, real files."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.testing import FaultServer, content_sha256

ENV = {**os.environ, "COLUMNS": "250"}
ENV.pop("RECOVERY_STATE_DIR", None)
SIZE = 200_000


@pytest.fixture
def server() -> Iterator[FaultServer]:
    srv = FaultServer()
    with srv.run_in_thread():
        yield srv


def download(url: str, out: Path, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "engine", "download", url, "-o", str(out), "--state-dir", str(state), *extra]
    return subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=60)


def test_existing_file_exits_1_with_e_exists_and_is_untouched(server: FaultServer, tmp_path: Path) -> None:
    out = tmp_path / "o7"
    out.mkdir()
    mine = out / "f3.bin"
    mine.write_bytes(b"the user's only copy")
    before = mine.stat()
    url = server.url("/files/f3.bin", size=SIZE)
    proc = download(url, out, tmp_path / "state")
    assert proc.returncode == 1, proc.stderr
    assert "E_EXISTS" in proc.stderr and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert mine.read_bytes() == b"the user's only copy" and mine.stat().st_mtime_ns == before.st_mtime_ns
    assert server.stats.requests == 0
    replaced = download(url, out, tmp_path / "state", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert hashlib.sha256(mine.read_bytes()).hexdigest() == content_sha256("/files/f3.bin", SIZE)


def test_rerun_of_a_finished_download_exits_0_without_a_request(server: FaultServer, tmp_path: Path) -> None:
    url = server.url("/files/done.bin", size=SIZE)
    sha = content_sha256("/files/done.bin", SIZE)
    first = download(url, tmp_path / "out", tmp_path / "state", "--sha256", sha)
    assert first.returncode == 0, first.stderr
    served = server.stats.requests
    again = download(url, tmp_path / "out", tmp_path / "state", "--sha256", sha)
    assert again.returncode == 0, again.stderr
    assert server.stats.requests == served  # not a byte fetched again
    # another state dir (no record of it): the file matching --sha256 is complete at once too
    other = download(url, tmp_path / "out", tmp_path / "state2", "--sha256", sha)
    assert other.returncode == 0, other.stderr
    assert server.stats.requests == served
