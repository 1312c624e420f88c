"""What ``recovery download`` shows (SPEC 13): lines that fit, the error's message, plain lines off a terminal.

The terminal tests run the real command in a detached tmux pane of 80 columns
and read the screen with ``capture-pane``; every wait is on what the screen
or the output shows, with a generous deadline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from engine._cli._display import bar_line, status_line
from engine.testing import FaultServer, Faults

MiB = 1024 * 1024
DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    srv = FaultServer()
    with srv.run_in_thread():
        yield srv


def wait_until(check: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- the lines themselves ---------------------------------------------------------------------

LONG_ERROR = {"code": "E_NET_UNREACHABLE", "category": "network", "retryable": True,
              "message": "Cannot connect: [ECONNREFUSED] Connection refused by 127.0.0.1:8 " * 3,
              "suggestion": "Check that the server is running and accepts connections."}
VIEWS = [
    {"id": "a", "status": "recovering", "spec": {"dest": "/m/" + "x" * 90 + ".safetensors"}, "attempt": 3,
     "max_retries": 5, "next_retry_at": time.time() + 3600, "bytes_done": 314_572_800, "bytes_total": 6_442_450_944,
     "error": LONG_ERROR},
    {"id": "b", "status": "in_progress", "spec": {"dest": "/m/flux1-dev.safetensors"}, "attempt": 2,
     "max_retries": 5, "bytes_done": 5 * 1024 ** 3, "bytes_total": 23 * 1024 ** 3, "rate_bps": 123_456_789.0,
     "eta_s": 86_000.0, "connections": 16, "last_error": LONG_ERROR},
    {"id": "c", "status": "exhausted", "spec": {"url": "http://h/q"}, "attempt": 5, "max_retries": 5,
     "bytes_done": 10, "bytes_total": None, "error": LONG_ERROR},
]


@pytest.mark.parametrize("width", [60, 61, 80, 99, 120, 200])
def test_bar_and_status_lines_fit_every_width(width: int) -> None:
    """From 60 columns up, the bar line and the status line are never wider than the terminal."""
    for view in VIEWS:
        assert len(bar_line(view, width)) <= width
        line = status_line(view, width)
        assert line is None or len(line) <= width


def test_status_line_shows_message_countdown_and_recovered_from() -> None:
    """Recovering: Attempt n/N, the countdown and the message (not only the code); flowing again: quiet."""
    recovering = status_line(VIEWS[0], 200)
    assert recovering is not None
    assert "recovering · Attempt 3/5 · retry in" in recovering and "Connection refused" in recovering
    flowing = status_line(VIEWS[1], 200)
    assert flowing is not None and "in progress · Attempt 2/5" in flowing
    assert "recovered from E_NET_UNREACHABLE" in flowing and "Connection refused" not in flowing
    assert "x16" in bar_line(VIEWS[1], 120)


# --- the command in a terminal of 80 columns --------------------------------------------------

TMUX = shutil.which("tmux")


@pytest.fixture
def tmux() -> Iterator[Callable[..., str]]:
    """``tmux(cmd)`` starts ``cmd`` in an 80x30 pane of a private tmux server; returns the pane's name."""
    if TMUX is None:
        pytest.skip("tmux is not installed")
    socket = f"recovery-test-{uuid.uuid4().hex[:8]}"

    def run(*args: str) -> str:
        return subprocess.run([TMUX, "-L", socket, *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout

    try:
        yield run
    finally:
        subprocess.run([TMUX, "-L", socket, "kill-server"], capture_output=True, timeout=30)


def test_download_at_80_columns_during_a_recovery(server: FaultServer, tmp_path: Path, tmux: Any) -> None:
    """At 80 columns no line is longer than 80 while recovering, the error's message shows; Ctrl-C says paused once."""
    url = server.url("/files/tmux-model.safetensors", size=16 * MiB,
                     faults=Faults(drop_after=MiB, drop_times=1, rate_bps=4 * MiB))
    command = (f"env -u COLUMNS -u LINES {sys.executable} -m engine download '{url}' -o {tmp_path / 'out'} "
               f"--state-dir {tmp_path / 'state'} --connections 1 --set initial_delay_s=600 --set jitter=0; "
               "echo EXIT:$?; read never")
    tmux("new-session", "-d", "-x", "80", "-y", "30", "-s", "t", command)

    def screen() -> list[str]:
        return tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "t").splitlines()

    during = wait_until(lambda: (s := screen()) and any("Attempt 1/5" in line for line in s) and s,
                        "the pane to show the recovery")
    assert all(len(line) <= 80 for line in during), "\n".join(during)
    [status] = [line for line in during if "Attempt 1/5" in line]
    assert "recovering" in status and "retry in" in status
    assert "Connection interrupted" in status  # the message, not only E_NET_INTERRUPTED
    [bar] = [line for line in during if line.startswith("tmux-model.safetensors ")]
    assert "%" in bar and "MiB" in bar

    tmux("send-keys", "-t", "t", "C-c")
    after = wait_until(lambda: (s := screen()) and any(line.startswith("EXIT:") for line in s) and s,
                       "the command to end")
    text = "\n".join(after)
    assert "EXIT:130" in text, text
    assert all(len(line) <= 80 for line in after), text
    assert text.count("paused") == 1, text
    assert len([line for line in after if line.startswith("tmux-model.safetensors ")]) == 1, text  # one bar
    assert "Traceback" not in text


def test_plain_lines_when_not_a_terminal(server: FaultServer, tmp_path: Path) -> None:
    """Piped, a ~7 s run prints progress lines as it goes (periodic and at each status change), not at the end."""
    # 1 MiB, a drop, then 6 MiB at 1 MiB/s: at least 6 s without a status change, so a periodic line must come.
    url = server.url("/files/plain.bin", size=7 * MiB, faults=Faults(rate_bps=MiB, drop_after=MiB, drop_times=1))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RECOVERY_STATE_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "engine", "download", url, "-o", str(tmp_path / "out"),
                             "--state-dir", str(tmp_path / "state"), "--set", "initial_delay_s=0.2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[tuple[str, bool]] = []  # (line, was the command still running when it arrived)

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((line.rstrip("\n"), proc.poll() is None))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert proc.wait(timeout=120) == 0, lines
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=30)
    text = [line for line, _ in lines]
    progress = [(line, live) for line, live in lines if line.startswith("plain.bin: in progress")]
    assert any(live and "%" in line for line, live in progress), text  # printed while it ran
    statuses = [line.split(":", 1)[1].split("·")[0].strip() for line in text if line.startswith("plain.bin: ")]
    assert statuses[0] == "pending" and statuses[-1] == "success", text
    assert "recovering" in statuses, text
    # in progress before the drop, recovering, in progress again with the drop as the recovered-from cause
    first_recovering = statuses.index("recovering")
    assert "in progress" in statuses[:first_recovering] and "in progress" in statuses[first_recovering:], text
    assert any("recovered from E_NET_INTERRUPTED" in line for line in text), text
    # a transfer of several seconds also shows lines between its status changes (every 5 s at most)
    figures = [line.rsplit("·", 1)[-1] for line, _ in progress]
    assert len(set(figures)) >= 3, text
    assert all(len(line) < 400 for line in text)
    assert "✓ plain.bin: done after 1 retry" in text


def test_sizes_are_binary_units_everywhere() -> None:
    """The command line says MiB where the dashboard does (1024-based), never 314.6 MB for 300 MiB."""
    from engine._units import human_bytes, human_rate

    assert human_bytes(300 * MiB) == "300.0 MiB"
    assert human_rate(20 * MiB).endswith("MiB/s")
    js = (Path(__file__).resolve().parents[2] / "engine" / "_server" / "dashboard.js").read_text()
    assert '["B", "KiB", "MiB", "GiB", "TiB"]' in js and "v /= 1024" in js
