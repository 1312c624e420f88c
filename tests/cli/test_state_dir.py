"""An unusable state directory is a clear error, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine import Settings, StateDirError, open_engine


async def test_open_engine_names_the_directory_and_reason(tmp_path: Path) -> None:
    """A state dir under a regular file cannot be created: StateDirError says which and why."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StateDirError, match="cannot use the state directory .*a-file/state"):
        async with open_engine(blocker / "state", Settings()):
            pass  # pragma: no cover


@pytest.mark.parametrize("command", [["download", "http://127.0.0.1:9/x.bin"], ["serve", "--port", "0"]])
def test_cli_reports_an_unusable_state_dir(tmp_path: Path, command: list[str]) -> None:
    """download and serve exit 1 with one line naming the directory, no traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = subprocess.run([sys.executable, "-m", "engine", *command, "--state-dir", str(blocker / "state")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"cannot use the state directory {blocker / 'state'}" in proc.stderr


def test_download_reports_a_corrupt_snapshot_and_goes_on(tmp_path: Path) -> None:
    """A corrupt snapshot in the state dir is reported (as a JSON event) and the download still runs."""
    import json

    from engine.testing import FaultServer

    ops = tmp_path / "state" / "operations"
    ops.mkdir(parents=True)
    (ops / "broken.msgpack").write_bytes(b"\xc1 not msgpack")
    server = FaultServer()
    with server.run_in_thread() as base:
        proc = subprocess.run(
            [sys.executable, "-m", "engine", "download", f"{base}/files/ok.bin?size=1000", "-o", str(tmp_path),
             "--state-dir", str(tmp_path / "state"), "--json"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    corrupt = [e for e in events if e["type"] == "snapshot_corrupt"]
    assert len(corrupt) == 1 and corrupt[0]["path"].endswith("broken.msgpack")
    assert (ops / "broken.msgpack.corrupt").exists() and (tmp_path / "ok.bin").stat().st_size == 1000
