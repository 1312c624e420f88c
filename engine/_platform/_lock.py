"""The state directory's lock: one engine per state directory (SPEC section 8).

Three implementations behind one call, `acquire`:

- POSIX: ``flock`` on ``<state_dir>/lock``. The kernel drops it when the
  process dies (a SIGKILLed engine never leaves a stale lock).
- Windows: ``msvcrt.locking`` of one byte far past the end of the same file
  (so the pid written at its start stays readable by the engine that is
  refused). Windows releases it when the process dies.
- Portable (anywhere neither exists, and forced in the fallback test run):
  ``<state_dir>/lock.owner`` created exclusively, holding the owner's pid;
  one whose pid is no longer running is stale and taken over.

The lock file holds the owner's pid, so a refused engine can say which
process holds the directory.

Why not ``filelock`` or ``portalocker``: both lock byte 0 on Windows (the pid
there becomes unreadable to the engine that is refused) and ``filelock``
truncates and deletes the file around the lock and is reentrant per path in
one process, which would let two engines in one process share a directory.
The lock needed here is about 60 lines of standard library.
"""

from __future__ import annotations

import os

import attrs

from ._durable import pread, pwrite
from ._process import pid_alive
from ._select import forced, optional_module

__all__ = ["LockHeld", "StateLock", "acquire", "lock_kind", "lock_open_file"]

_fcntl = optional_module("fcntl")
_msvcrt = optional_module("msvcrt")
_WIN_LOCK_OFFSET = 0x7FFF_0000  # the locked byte: past any pid, like SQLite's pending byte


class LockHeld(Exception):
    """Another live process holds the lock; ``holder`` is its pid as recorded (or "unknown")."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def lock_kind() -> str:
    """``flock``, ``msvcrt`` or ``portable``: the implementation `acquire` uses here."""
    if forced("lock"):
        return "portable"
    if _fcntl is not None and hasattr(_fcntl, "flock"):
        return "flock"
    if _msvcrt is not None:
        return "msvcrt"
    return "portable"


@attrs.define(eq=False)
class StateLock:
    """A held lock; `release` gives it up (also done by the OS when the process dies)."""

    kind: str
    path: str
    _fd: int | None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self.kind == "flock" and _fcntl is not None:
                _fcntl.flock(fd, _fcntl.LOCK_UN)
            elif self.kind == "msvcrt" and _msvcrt is not None:
                os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
                _msvcrt.locking(fd, _msvcrt.LK_UNLCK, 1)
        finally:
            os.close(fd)
            if self.kind == "portable":
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass


def _record_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _holder(fd: int) -> str:
    return pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"


def acquire(state_dir: str) -> StateLock:
    """Take the lock of ``state_dir`` without waiting; `LockHeld` if another process has it.

    Raises `OSError` when the lock file cannot be made.
    """
    kind = lock_kind()
    if kind == "portable":
        return _acquire_portable(os.path.join(state_dir, "lock.owner"))
    path = os.path.join(state_dir, "lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        if kind == "flock" and _fcntl is not None:
            _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        elif _msvcrt is not None:
            os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
            _msvcrt.locking(fd, _msvcrt.LK_NBLCK, 1)
    except OSError as exc:  # BlockingIOError (flock) or PermissionError (msvcrt)
        holder = _holder(fd)
        os.close(fd)
        if isinstance(exc, (BlockingIOError, PermissionError)):
            raise LockHeld(holder) from None
        raise
    _record_pid(fd)
    return StateLock(kind, path, fd)


def _acquire_portable(path: str) -> StateLock:
    for _ in range(3):  # a stale owner is removed and the create retried
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileExistsError:
            try:
                with open(path, "rb") as f:
                    holder = f.read(64).decode(errors="replace").strip()
            except FileNotFoundError:
                continue  # released meanwhile
            if holder.isdigit() and int(holder) != os.getpid() and not pid_alive(int(holder)):
                try:
                    os.unlink(path)  # left by an engine that died
                except FileNotFoundError:
                    pass
                continue
            raise LockHeld(holder or "unknown") from None
        _record_pid(fd)
        return StateLock("portable", path, fd)
    raise LockHeld("unknown")



def lock_open_file(fd: int) -> bool:
    """Lock an open file (a ``.part``) against other processes without waiting.

    True when locked (or where the system has no such lock: then nothing is
    enforced), False when another process holds it. Released with the descriptor.
    """
    if _fcntl is not None and hasattr(_fcntl, "flock"):
        try:
            _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    if _msvcrt is not None:
        here = os.lseek(fd, 0, os.SEEK_CUR)
        try:
            os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
            _msvcrt.locking(fd, _msvcrt.LK_NBLCK, 1)
        except PermissionError:
            return False
        finally:
            os.lseek(fd, here, os.SEEK_SET)
    return True
