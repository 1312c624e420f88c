"""Is this trio run on a test's mock clock?

Work that waits for the disk goes to a helper thread, so the event loop (and
every control) keeps running. Under trio's `MockClock` with autojump, though,
a task waiting for a thread counts as idle: the clock jumps to the next
deadline and fires timeouts that real time never would. So the snapshot
writer and the download's periodic fsync do their I/O inline when (and only
when) the run uses a mock clock. Every real-time run, the crash tests and the
benchmarks included, takes the threaded path.
"""

from __future__ import annotations

import sys

import trio

__all__ = ["under_mock_clock"]


def under_mock_clock() -> bool:
    """True inside a trio run whose clock is `trio.testing.MockClock`."""
    testing = sys.modules.get("trio.testing")  # never imported here: it pulls in pytest
    if testing is None:
        return False
    try:
        return isinstance(trio.lowlevel.current_clock(), testing.MockClock)
    except RuntimeError:  # not inside trio.run
        return False
