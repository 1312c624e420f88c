"""Helpers for the command-line project tests: a fault server thread and ``python -m engine run``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.testing import FaultServer

PY = sys.executable
ENV = {**os.environ, "COLUMNS": "200", "PATH": os.path.dirname(PY) + os.pathsep + os.environ.get("PATH", "")}
ENV.pop("RECOVERY_STATE_DIR", None)

# An install step: append LABEL to the counter file and "LABEL PID" to the pids file;
# with SLEEP: "LABEL started", sleep, then "LABEL done". The first run of a sleeping LABEL holds
# for 600 s instead, so a test that stops it (kill, Ctrl-C) never races its natural end, however
# slow the machine; the runs after it sleep SLEEP.
STEP_SCRIPT = """\
import os, sys, time
counter, pids, label = sys.argv[1], sys.argv[2], sys.argv[3]
sleep = float(sys.argv[4]) if len(sys.argv) > 4 else 0
earlier = open(pids).read().split() if os.path.exists(pids) else []
if sleep and label not in earlier:
    sleep = 600
with open(pids, "a") as f:
    f.write(f"{label} {os.getpid()}\\n")
with open(counter, "a") as f:
    f.write(f"{label} started\\n" if sleep else f"{label}\\n")
print(f"{label}: working", flush=True)
if sleep:
    time.sleep(sleep)
    with open(counter, "a") as f:
        f.write(f"{label} done\\n")
"""


class Workspace:
    """A folder with a project file, its counter and pids files, and a state dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        self.counter = root / "counter.txt"
        self.pids = root / "pids.txt"
        self.script = root / "step.py"
        self.script.write_text(STEP_SCRIPT)
        self.project = root / "project.toml"

    def install(self, label: str, sleep: float | None = None) -> str:
        """A ``[[steps]]`` table for an install step running the step script."""
        argv = [PY, "step.py", "counter.txt", "pids.txt", label] + ([str(sleep)] if sleep else [])
        return f'[[steps]]\nkind = "install"\nargv = [{", ".join(_q(a) for a in argv)}]\n'

    @staticmethod
    def download(url: str, dest: str, sha256: str | None = None) -> str:
        sha = f"sha256 = {_q(sha256)}\n" if sha256 else ""
        return f'[[steps]]\nkind = "download"\nurl = {_q(url)}\ndest = {_q(dest)}\n{sha}'

    def write(self, name: str, *steps: str) -> Path:
        self.project.write_text(f"name = {_q(name)}\n\n" + "\n".join(steps))
        return self.project

    def lines(self) -> list[str]:
        return self.counter.read_text().splitlines() if self.counter.exists() else []

    def pid_of(self, label: str) -> list[int]:
        text = self.pids.read_text() if self.pids.exists() else ""
        return [int(pid) for name, pid in (line.split() for line in text.splitlines()) if name == label]

    @staticmethod
    def alive(pid: int) -> bool:
        return alive(pid)

    def argv(self, *extra: str) -> list[str]:
        return [PY, "-m", "engine", "run", str(self.project), "--state-dir", str(self.state),
                "--set", "initial_delay_s=0.05", "--set", "jitter=0", *extra]

    def run(self, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``recovery run`` to the end."""
        return subprocess.run(self.argv(*extra), env=ENV, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)

    def start(self, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*extra), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=self.root)

    def wait_for_line(self, line: str, proc: subprocess.Popen[str], within: float = 20) -> None:
        deadline = time.monotonic() + within
        while line not in self.lines():
            if proc.poll() is not None:
                raise AssertionError(f"the run ended (exit {proc.returncode}) before {line!r}: "
                                     f"{proc.communicate()}")
            if time.monotonic() > deadline:
                proc.send_signal(signal.SIGKILL)
                raise AssertionError(f"{line!r} did not appear within {within} s")
            time.sleep(0.01)


def _q(value: Any) -> str:
    """A TOML basic string."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def alive(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie is dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    srv = FaultServer()
    with srv.run_in_thread():
        yield srv


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)
