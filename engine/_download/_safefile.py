"""Opening, locking and publishing a download's files without harming anyone else's (SPEC 6.1).

The engine writes exactly two names: ``<dest>.part`` while it downloads,
and ``<dest>`` when the verified ``.part`` is renamed onto it. Both may
already exist, put there by the user, by another program or by an attacker:

- A ``.part`` that is a symlink, a hard link to another file
  (``st_nlink > 1``) or anything but a regular file is never written
  through: the name is unlinked (which leaves the other file alone) and a
  fresh, empty ``.part`` is created with ``O_EXCL | O_NOFOLLOW``. Every open
  uses ``O_NOFOLLOW`` and is checked again with ``fstat`` on the open
  descriptor, so a link planted between the check and the open is not
  followed either.
- The writer holds an exclusive, non-blocking lock (``flock``) on its open
  ``.part`` for the whole attempt, taken *before* anything is cut back: a
  second engine (another state directory, another process) that tries the
  same destination gets ``E_IN_USE`` naming the file and changes nothing.
- Publishing never replaces a file silently: without ``overwrite`` the
  ``.part`` is hard-linked to ``<dest>`` (which fails if ``<dest>`` appeared
  meanwhile) and then unlinked; on a file system without hard links it falls
  back to a checked rename. A file already at ``<dest>`` is ``E_EXISTS``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from .. import _platform
from .._disk import THREADS, DiskWork
from .._errors import AttemptFailed, failure
from ._part import fsync_dir


__all__ = [
    "complete_at_once", "exists_error", "file_identity", "file_matches_sha256", "open_part_fd", "publish",
    "recorded_part_ready", "remove_if_empty", "still_complete",
]

log = logging.getLogger("engine.download")

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_HASH_CHUNK = 1024 * 1024
_HASH_STEP = 64 * _HASH_CHUNK  # per trip to the worker thread: well under a second


def _why_not_ours(st: os.stat_result) -> str | None:
    """Why a file with this ``stat`` must not be written into, or None when it is a plain file."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_nlink > 1:
        return f"is a hard link shared with {st.st_nlink - 1} other name(s)"
    return None


def _lock(fd: int, path: Path) -> None:
    if not _platform.lock_open_file(fd):  # flock on POSIX, msvcrt on Windows
        raise failure("E_IN_USE", f"{path} is being written by another engine (another state "
                                  "directory or process); wait for it to finish or choose another "
                                  "destination") from None


def open_part_fd(path: Path) -> int:
    """Open ``path`` for writing, never through a link, and lock it; return the descriptor.

    Raises ``AttemptFailed`` (``E_IN_USE``) when another writer holds it,
    ``OSError`` for the file system's own refusals (the caller classifies).
    """
    for _ in range(3):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and (why := _why_not_ours(st)) is not None:
            log.warning("%s %s: it is not the engine's own file; replacing the name with a fresh "
                        "partial file (the file it pointed to is not touched)", path, why)
            if stat.S_ISDIR(st.st_mode):
                raise failure("E_INVALID_INPUT", f"{path} is a folder; the partial file cannot be written")
            os.unlink(path)
            st = None
        flags = os.O_RDWR | _NOFOLLOW | _CLOEXEC | (os.O_CREAT | os.O_EXCL if st is None else 0)
        try:
            fd = os.open(_platform.long_path(path), flags, 0o644)  # past MAX_PATH on Windows
        except FileExistsError:
            continue  # created between lstat and open: look again
        except FileNotFoundError:
            if st is not None:
                continue  # removed between lstat and open
            raise
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                continue  # a symlink planted after the lstat: O_NOFOLLOW refused it
            raise
        try:
            why = _why_not_ours(os.fstat(fd))
            if why is not None:  # a hard link made between the lstat and the open
                os.close(fd)
                fd = -1
                continue
            _lock(fd, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        return fd
    raise failure("E_INVALID_INPUT", f"{path} keeps being replaced by a link while the engine opens it; "
                                     "refusing to write there")


def remove_if_empty(fd: int, path: Path, release: Callable[[], None] | None = None) -> None:
    """Unlink ``path`` when it is still the (empty) file open as ``fd``; call before closing.

    Where an open file's name cannot be removed (Windows), ``release``
    closes ``fd`` first, and the name is removed if it is still that empty file.
    """
    try:
        mine, there = os.fstat(fd), os.lstat(path)
    except OSError:
        return
    if mine.st_size != 0 or (mine.st_dev, mine.st_ino) != (there.st_dev, there.st_ino):
        return
    if release is not None and not _platform.open_files_can_be_renamed():
        release()
        try:
            now = os.lstat(path)
        except OSError:
            return
        if now.st_size != 0 or (now.st_dev, now.st_ino) != (there.st_dev, there.st_ino):
            return  # another writer took the name meanwhile
    try:
        os.unlink(path)
    except OSError:
        pass


def exists_error(dest: Path) -> AttemptFailed:
    """``E_EXISTS`` for a destination that holds a file this engine did not write."""
    return failure("E_EXISTS", f"{dest} already exists and was not written by this download; it was left "
                               "untouched. To replace it, ask for overwrite (--overwrite, "
                               "DownloadSpec(overwrite=True) or \"overwrite\": true)")


def publish(part: Path, dest: Path, *, overwrite: bool, release: Callable[[], None] | None = None) -> None:
    """Give the verified ``part`` its final name ``dest`` durably (see the module docstring).

    ``release`` closes the writer's open ``.part`` (giving up its lock).
    Where an open file's name can be neither removed nor replaced
    (Windows), it is called once ``dest`` is a second name of the ``.part``,
    so the file is never unprotected: a second writer finds a hard link and
    leaves it alone. Elsewhere the caller closes after publishing.
    """
    if release is not None and not _platform.open_files_can_be_renamed():
        _publish_closing_first(part, dest, overwrite=overwrite, release=release)
        return
    if overwrite:
        os.replace(part, dest)
        fsync_dir(dest.parent)
        return
    try:
        os.link(part, dest, follow_symlinks=False)
    except FileExistsError:
        if _same_file(part, dest):  # a crash between link and unlink: finish it
            os.unlink(part)
            fsync_dir(dest.parent)
            return
        raise exists_error(dest) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK,
                             errno.ENOSYS):
            raise
        if os.path.lexists(dest):  # no hard links here: a checked rename is the best there is
            raise exists_error(dest) from None
        os.replace(part, dest)
    else:
        os.unlink(part)
    fsync_dir(dest.parent)


def _publish_closing_first(part: Path, dest: Path, *, overwrite: bool, release: Callable[[], None]) -> None:
    """`publish` where open files cannot be renamed: link while locked, close, then rename or unlink."""
    staged = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.publish") if overwrite else dest
    try:
        os.link(part, staged, follow_symlinks=False)
    except FileExistsError:
        if overwrite:
            raise
        if not _same_file(part, dest):  # (the same file: a crash between link and unlink, finish it)
            raise exists_error(dest) from None
    except OSError:  # no hard links on this file system (FAT, exFAT): a checked rename after closing
        release()
        if not overwrite and os.path.lexists(dest):
            raise exists_error(dest) from None
        os.replace(part, dest)
        fsync_dir(dest.parent)
        return
    release()
    if overwrite:
        try:
            os.replace(staged, dest)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
    if _same_file(part, dest):  # never a fresh .part another writer made meanwhile
        os.unlink(part)
    fsync_dir(dest.parent)


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


async def file_matches_sha256(path: Path, sha256: str, *, disk: DiskWork = THREADS) -> bool:
    """Whether the regular file at ``path`` has this sha256.

    The file is read and hashed through the engine's ``disk`` work (a helper
    thread by default, like every other disk wait: see ``engine._disk``), `_HASH_STEP`
    bytes per trip, so the event loop keeps running and a pause or cancel
    stops the check between trips.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    except OSError:
        return False
    hasher = hashlib.sha256()

    def step() -> bool:
        """Hash up to `_HASH_STEP` more bytes; False at the end of the file."""
        done = 0
        while done < _HASH_STEP:
            chunk = os.read(fd, _HASH_CHUNK)
            if not chunk:
                return False
            hasher.update(chunk)
            done += len(chunk)
        return True

    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        while True:
            await trio.lowlevel.checkpoint()
            more = await disk.run(step)
            if not more:
                break
    except OSError:
        return False
    finally:
        os.close(fd)
    return hasher.hexdigest() == sha256


def file_identity(path: Path) -> list[int] | None:
    """``[size, mtime_ns, inode]`` of the file at ``path`` (recorded at success), None if unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def recorded_part_ready(part: Path, size: Any) -> bool:
    """Whether ``part`` is still the regular file of ``size`` bytes a crash left before its rename."""
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


async def complete_at_once(
    dest: Path, sha256: str | None, *, overwrite: bool, disk: DiskWork = THREADS,
) -> list[int] | None:
    """Decide about a file already at ``dest`` before any request.

    Returns its identity when it matches the given ``sha256`` (the download
    is complete without a transfer), None when there is no file or it may be
    replaced (``overwrite``); otherwise raises ``E_EXISTS``.
    """
    if not os.path.lexists(dest):
        return None
    if sha256 and await file_matches_sha256(dest, sha256, disk=disk):
        return file_identity(dest)
    if overwrite:
        return None
    raise exists_error(dest)


def still_complete(done: Any, state: Mapping[str, Any], spec: Any) -> bool:
    """Whether a recorded success of the download ``done`` answers a new submission ``spec``.

    The URL must be the same (and the sha256, when the new one gives one),
    and the file must still be the one the engine wrote, with the recorded
    size: the same size, modification time and inode; or, when only its
    modification time changed (a ``touch``, a backup tool), the same inode
    and size, unless the new submission gives a sha256, which a new
    operation then checks against the file (`complete_at_once`) instead.
    A file of another inode is not the engine's: the new operation refuses
    it with ``E_EXISTS`` (or accepts it when it matches the sha256).
    """
    if spec.url != done.url or (spec.sha256 and spec.sha256 != done.sha256):
        return False
    target = Path(state.get("final_dest") or done.dest)
    try:
        if not stat.S_ISREG(os.stat(target).st_mode):
            return False
    except OSError:
        return False
    now = file_identity(target)
    if now is None:
        return False
    recorded = state.get("file")
    if isinstance(recorded, list) and len(recorded) == 3:
        if now == recorded:
            return True
        return now[0] == recorded[0] and now[2] == recorded[2] and not spec.sha256
    return now[0] == state.get("total")
