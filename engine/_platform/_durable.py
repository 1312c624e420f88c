"""Durability: making file contents and renames survive a crash, on every platform.

- Linux and other POSIX: ``fsync`` of the file, ``fsync`` of its directory
  after a rename; a batch of files is made durable with one ``syncfs``
  where the C library has it (Linux), else with one ``fsync`` per file.
- macOS: plain ``fsync`` only reaches the drive's cache, so files are synced
  with ``fcntl(F_FULLFSYNC)`` (falling back to ``fsync`` where the file
  system refuses it).
- Windows: ``os.fsync`` is ``FlushFileBuffers``; directories cannot be
  opened or flushed, so there is no directory sync (NTFS journals renames).
- No ``pread``/``pwrite`` on Windows: seek, read or write, seek back.
- Sizing a file up front: ``posix_fallocate`` where the OS and the file
  system have it (the blocks are reserved, so a full disk shows at once);
  elsewhere the file is extended sparse with ``ftruncate``.
"""

from __future__ import annotations

import ctypes
import errno
import ctypes.util
import os
import sys
import threading
from typing import Callable

from ._select import forced, optional_module

__all__ = ["close_dir", "dir_sync_supported", "fsync_dir", "fsync_file", "has_syncfs", "open_dir",
           "pread", "preallocate", "pwrite", "syncfs"]

_fcntl = optional_module("fcntl")
_F_FULLFSYNC: int | None = getattr(_fcntl, "F_FULLFSYNC", None) if sys.platform == "darwin" else None


def fsync_file(fd: int) -> None:
    """Make everything written to ``fd`` durable (``F_FULLFSYNC`` on macOS)."""
    if _fcntl is not None and _F_FULLFSYNC is not None:
        try:
            _fcntl.fcntl(fd, _F_FULLFSYNC)
            return
        except OSError:
            pass  # a file system without it (e.g. some network mounts): plain fsync
    os.fsync(fd)


def dir_sync_supported() -> bool:
    """Can a directory be opened and fsynced here (not on Windows)?"""
    return sys.platform != "win32" and not forced("dirsync")


def open_dir(path: str | os.PathLike[str]) -> int | None:
    """An open descriptor of directory ``path`` for `fsync_dir`, or None where directories can't be synced."""
    if not dir_sync_supported():
        return None
    return os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def close_dir(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str], fd: int | None = None, *, strict: bool = True) -> None:
    """Make the renames inside directory ``path`` durable (by ``fd`` when given; a no-op on Windows).

    ``strict=False`` is best effort: a directory that cannot be opened or
    synced (some file systems refuse it) is left as it is.
    """
    if not dir_sync_supported():
        return
    try:
        if fd is not None:
            os.fsync(fd)
            return
        dfd = open_dir(path)
    except OSError:
        if strict:
            raise
        return
    try:
        if dfd is not None:
            os.fsync(dfd)
    except OSError:
        if strict:
            raise
    finally:
        close_dir(dfd)


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):  # pragma: no cover - an old C library
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_SYNCFS = _load_syncfs()


def has_syncfs() -> bool:
    """Is there one call that makes a whole file system durable (``syncfs``)?"""
    return _SYNCFS is not None and not forced("syncfs") and dir_sync_supported()


def syncfs(fd: int, path: str) -> None:
    """``syncfs`` the file system holding ``fd``; raises `OSError` naming ``path``."""
    if _SYNCFS is None or _SYNCFS(fd) != 0:
        err = ctypes.get_errno() if _SYNCFS is not None else 38  # ENOSYS
        raise OSError(err, os.strerror(err), path)


#: The fallbacks move the file position and put it back: one at a time across threads.
_SEEK_LOCK = threading.Lock()


def pread(fd: int, n: int, offset: int) -> bytes:
    """Read up to ``n`` bytes at ``offset`` (the file position is left where it was)."""
    if sys.platform != "win32" and not forced("pread"):
        return os.pread(fd, n, offset)
    with _SEEK_LOCK:  # a hashing thread may read while the download writes the same fd
        here = os.lseek(fd, 0, os.SEEK_CUR)
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            return os.read(fd, n)
        finally:
            os.lseek(fd, here, os.SEEK_SET)


def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
    """Write ``data`` at ``offset`` (the file position is left where it was)."""
    if sys.platform != "win32" and not forced("pread"):
        return os.pwrite(fd, data, offset)
    with _SEEK_LOCK:
        here = os.lseek(fd, 0, os.SEEK_CUR)
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            return os.write(fd, data)
        finally:
            os.lseek(fd, here, os.SEEK_SET)


def preallocate(fd: int, size: int) -> bool:
    """Make the file ``size`` bytes long, reserving its blocks where possible.

    True when the blocks were reserved (``posix_fallocate``); False when the
    file was only extended sparse (no fallocate here, or the file system
    refuses it). ``ENOSPC`` is raised either way when the disk is too full.
    """
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None and not forced("fallocate") and size > 0:
        try:
            fallocate(fd, 0, size)
            return True
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise
            # EOPNOTSUPP, EINVAL (some file systems): the sparse way below
    if os.fstat(fd).st_size < size:
        os.ftruncate(fd, size)
    return False
