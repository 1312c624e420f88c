"""Paths: the state directory's default, case-insensitive file systems, long paths.

- State directory: ``$RECOVERY_STATE_DIR``, else the platform's user state
  directory (``platformdirs``: ``~/.local/state/recovery-engine`` on Linux,
  ``~/Library/Application Support/recovery-engine`` on macOS,
  ``%LOCALAPPDATA%\\recovery-engine`` on Windows).
- Case: on a case-insensitive file system (Windows, macOS by default)
  ``Model.safetensors`` and ``model.safetensors`` are one file, so two
  downloads to them are one resource. `resource_path` folds the case of a
  destination where its folder is case-insensitive, detected per folder
  (the nearest existing one) and remembered.
- Long paths: Windows refuses paths over 260 characters unless they carry
  the ``\\\\?\\`` prefix; `long_path` adds it there and changes nothing elsewhere.
- Open files: Windows cannot remove or replace the name of a file that is
  open (`open_files_can_be_renamed`); code that renames its own open file
  closes it first there.

Windows *file-name* rules (reserved names, trailing dots) are checked with
the other name rules in ``engine._download._names``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import NamedTuple, Protocol

from ._select import forced

__all__ = ["FsStats", "case_insensitive", "default_state_dir", "long_path", "open_files_can_be_renamed",
           "resource_path", "statvfs"]

_APP = "recovery-engine"
_WIN_MAX_PATH = 260
_case_cache: dict[str, bool] = {}


def default_state_dir() -> Path:
    """``$RECOVERY_STATE_DIR``, else the platform's user state dir."""
    env = os.environ.get("RECOVERY_STATE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_state_dir(_APP, appauthor=False))


def _nearest_existing(folder: str) -> str | None:
    current = folder
    while not os.path.isdir(current):
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
    return current


def _probe(folder: str) -> bool:
    """Does ``folder`` treat names that differ only by case as one? (looks, or writes one probe file)"""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name.swapcase() != name:
                    try:
                        twin = os.stat(os.path.join(folder, name.swapcase()), follow_symlinks=False)
                        mine = os.stat(entry.path, follow_symlinks=False)
                    except OSError:
                        return False
                    return os.path.samestat(twin, mine)
    except OSError:
        return sys.platform in ("win32", "darwin")
    probe = os.path.join(folder, f".recovery-case-{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return sys.platform in ("win32", "darwin")  # a read-only folder: the platform's default
    os.close(fd)
    try:
        return os.path.exists(os.path.join(folder, os.path.basename(probe).upper()))
    finally:
        os.unlink(probe)


def case_insensitive(folder: str | os.PathLike[str]) -> bool:
    """Are names in ``folder`` (or its nearest existing parent) compared without case?"""
    if forced("case"):
        return True
    existing = _nearest_existing(os.path.abspath(os.fspath(folder)))
    if existing is None:
        return sys.platform in ("win32", "darwin")
    cached = _case_cache.get(existing)
    if cached is None:
        if len(_case_cache) > 1024:
            _case_cache.clear()
        cached = _case_cache[existing] = _probe(existing)
    return cached


def resource_path(path: str) -> str:
    """The key two destinations share exactly when they are the same file on their file system."""
    if case_insensitive(os.path.dirname(path) or "."):
        return os.path.normcase(path).casefold() if sys.platform == "win32" else path.casefold()
    return path


def open_files_can_be_renamed() -> bool:
    """Can a file's name be removed or replaced while this process has it open?

    POSIX: yes. Windows: no; a file opened without ``FILE_SHARE_DELETE``
    (as ``os.open`` does) can be neither deleted nor renamed, through any
    of its names, until it is closed (``PermissionError``, WinError 32).
    """
    return sys.platform != "win32" and not forced("openrename")


def long_path(path: str | os.PathLike[str]) -> str:
    """``path`` usable past Windows' 260-character limit (``\\\\?\\`` + absolute path there)."""
    raw = os.fspath(path)
    if sys.platform != "win32" or len(raw) < _WIN_MAX_PATH - 12 or raw.startswith("\\\\?\\"):
        return raw
    full = os.path.abspath(raw)
    if full.startswith("\\\\"):  # a UNC share: \\server\share -> \\?\UNC\server\share
        return "\\\\?\\UNC\\" + full[2:]
    return "\\\\?\\" + full


class FsStats(Protocol):
    """The two ``statvfs`` fields the engine reads (free blocks for users, block size)."""

    @property
    def f_bavail(self) -> int: ...

    @property
    def f_frsize(self) -> int: ...


class _Usage(NamedTuple):
    f_bavail: int
    f_frsize: int


def statvfs(path: str) -> FsStats:
    """``os.statvfs`` where it exists; on Windows the free bytes of `shutil.disk_usage` (as 1-byte blocks)."""
    if sys.platform == "win32":
        return _Usage(shutil.disk_usage(path).free, 1)
    return os.statvfs(path)
