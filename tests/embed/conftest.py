"""Shared by the embedding tests: no thread may outlive a test, and none may hang CI."""

from __future__ import annotations

import faulthandler
import threading
import time
from typing import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_leaks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail a test that leaves a thread behind; dump stacks and exit if one hangs."""
    from trio._core import _thread_cache

    # trio parks idle worker threads for 10 s for reuse; reap them at once so
    # "no thread left behind" can be checked strictly.
    monkeypatch.setattr(_thread_cache, "IDLE_TIMEOUT", 0.05)
    faulthandler.dump_traceback_later(120, exit=True)
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while (extra := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.01)
    faulthandler.cancel_dump_traceback_later()
    assert not extra, f"threads left behind: {extra}"
