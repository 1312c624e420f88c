"""Which platform implementation is in use, and the fallbacks a test may force.

Every helper in `engine._platform` picks the native call where it exists and
its fallback where it does not. `force_fallback` makes the fallback win even
where the native call exists, so the whole suite can run the portable paths
on Linux. Product code never calls it and reads no environment for it: only
the test suite (``tests/conftest.py``) does.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["FALLBACKS", "force_fallback", "forced", "optional_module"]

#: The fallbacks that can be forced, and what each one replaces.
FALLBACKS: dict[str, str] = {
    "syncfs": "no syncfs: every snapshot of a batch is fsynced on its own",
    "rcvlowat": "no SO_RCVLOWAT: the download is woken for every chunk",
    "lock": "the portable state-dir lock (an exclusive pid file) instead of flock",
    "dirsync": "no directory fsync (as on Windows): files are fsynced, directories are not",
    "pread": "no pread/pwrite (as on Windows): seek, read, seek back",
    "fallocate": "no fallocate: a segmented download's .part is extended sparse",
    "case": "destinations compared case-insensitively (as on Windows and macOS)",
    "openrename": "an open file's name is never removed or replaced (as on Windows): the .part is closed first",
}

_forced: set[str] = set()


def force_fallback(*names: str) -> None:
    """Use the fallback for each named facility from now on (tests only); no names resets."""
    unknown = sorted(set(names) - set(FALLBACKS))
    if unknown:
        raise ValueError(f"unknown platform fallback(s) {unknown}; known: {sorted(FALLBACKS)}")
    _forced.clear()
    _forced.update(names)


def forced(name: str) -> bool:
    """True when the test suite forced the fallback for ``name``."""
    return name in _forced


def optional_module(name: str) -> ModuleType | None:
    """Import a platform-only standard module (``fcntl``, ``msvcrt``), or None where it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
