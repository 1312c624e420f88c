"""Run ``recovery ARGS`` and SIGKILL it at one numbered file-system call after the download's publish.

Test-only (tests/safety/test_crash_at_the_end.py). Every call of ``os.link``,
``os.unlink``, ``os.open``, ``os.write``, ``os.fsync``, ``os.close``,
``os.replace``, ``os.rename``, ``os.ftruncate`` and ``engine._platform.syncfs``
counts as a crash point once the finished ``.part`` is hard-linked to its
destination (the publish). ``CRASH_AT=N`` kills the process (SIGKILL, as a
power cut or the OOM killer would) just before point N; ``CRASH_TRACE=FILE``
writes the numbered points to FILE at exit, so a test learns how many there
are from a run that is not killed.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from typing import Any

_KILL_AT = int(os.environ.get("CRASH_AT", "-1"))
_TRACE = os.environ.get("CRASH_TRACE")
_lock = threading.Lock()
_armed = False
_count = 0
_log: list[str] = []


def _point(name: str, args: tuple[Any, ...]) -> None:
    global _count
    with _lock:
        if not _armed:
            return
        number = _count
        _count += 1
        _log.append(f"{number} {name} {' '.join(str(a) for a in args[:2] if isinstance(a, (str, os.PathLike)))}")
    if number == _KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def _wrap(name: str) -> None:
    real = getattr(os, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        global _armed
        if name == "link" and str(args[0]).endswith(".part"):
            _armed = True  # the verified .part becomes the destination: the very end begins
        _point(name, args)
        return real(*args, **kwargs)

    setattr(os, name, call)


for _name in ("link", "unlink", "open", "write", "fsync", "close", "replace", "rename", "ftruncate"):
    _wrap(_name)

import engine._platform as _platform  # noqa: E402

_real_syncfs = _platform.syncfs


def _syncfs(fd: int, path: str) -> None:
    _point("syncfs", (path,))
    _real_syncfs(fd, path)


_platform.syncfs = _syncfs  # type: ignore[assignment]


@atexit.register
def _dump() -> None:
    if _TRACE:
        with open(_TRACE, "w", encoding="utf-8") as f:
            f.write("\n".join(_log) + "\n")


if __name__ == "__main__":
    from engine._cli import main

    sys.exit(main(sys.argv[1:]))
