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
