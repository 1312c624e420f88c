"""The durable side of a download: a ``.part`` file written data-before-metadata.

Everything here is plain blocking ``os`` calls made in the trio thread, on
purpose: an awaited hop to a worker thread would let trio's autojump
``MockClock`` jump while the hop is in flight and fire stall timeouts that
never happened. Writes go to the page cache and are cheap. The periodic
``fsync`` is the expensive part (it waits for the disk to take everything
written since the last one), so `start_sync` runs it in a plain helper
thread that nobody awaits: the download keeps receiving, and `poll_sync`
(a non-blocking check) moves ``durable`` forward once that fsync returned.
Where it runs is the engine's `DiskWork` (see ``engine._disk``): a helper thread
by default, inline for tests on an autojump clock.
`sync` is the blocking form, used at the end and on the way out.

`PartFile` only tracks two numbers: ``size`` (bytes written, the file
position) and ``durable`` (bytes covered by the last ``fsync``). The caller
records ``durable`` as the resumable offset, and only after `sync` returned,
so a recorded offset is always on disk. Errors are raw ``OSError``; the caller
maps them through ``classify_exception``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from collections.abc import Iterator
from typing import Callable, Union

import attrs

from .. import _platform
from .._disk import THREADS, Background, DiskWork

__all__ = ["PartFile", "Writer", "free_bytes", "fsync_dir", "replace_durably"]

Buffer = Union[bytes, bytearray, memoryview]
#: ``os.write``-shaped: write some of ``data`` to ``fd``, return how much.
Writer = Callable[[int, Buffer], int]

_REHASH_CHUNK = 1024 * 1024


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Attach the file name to an ``OSError`` from an fd call, so messages say which file."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


@attrs.define(eq=False)
class PartFile:
    """An open ``.part`` file, positioned at its end (see the module docstring)."""

    path: Path
    _fd: int | None
    _write: Writer
    size: int
    durable: int
    _disk: DiskWork = THREADS
    _bg: "_BackgroundSync | None" = None

    @classmethod
    def adopt(
        cls, path: Path, fd: int, keep: int, *, write: Writer = os.write, disk: DiskWork = THREADS,
    ) -> PartFile:
        """Take over ``fd`` (``path`` opened for writing) and cut it back to at most ``keep`` bytes.

        A crash may have left bytes past the last recorded offset; they were
        never recorded as durable, so they are dropped. A file shorter than
        ``keep`` (lost or truncated behind our back) keeps what it has. The
        caller opened it safely (``_safefile.open_part_fd``: no links, locked).
        """
        try:
            size = os.fstat(fd).st_size
            if size > keep:
                os.ftruncate(fd, keep)
                size = keep
            os.lseek(fd, size, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, write, size, size, disk)

    @property
    def fd(self) -> int:
        """The open descriptor (for checks on the file itself, never for writing around `write_all`)."""
        return self._require_fd()

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _require_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        return self._fd

    def write_all(self, data: Buffer) -> None:
        """Append ``data``; ``size`` counts exactly the bytes the OS accepted, even on error."""
        fd = self._require_fd()
        view = memoryview(data)
        with _naming(self.path):
            while view:
                n = self._write(fd, view)
                self.size += n
                view = view[n:]

    def start_sync(self) -> bool:
        """Begin an ``fsync`` of everything written so far in a helper thread; don't wait.

        False when one is already running or there is nothing new to sync.
        """
        fd = self._require_fd()
        if self._bg is not None or self.size == self.durable:
            return False
        self._bg = _BackgroundSync.start(self._disk, fd, self.size)
        return True

    def poll_sync(self) -> int:
        """If the background ``fsync`` finished, count its bytes as durable and return them.

        Returns 0 while it runs (or when none was started); raises its ``OSError``.
        """
        bg = self._bg
        if bg is None or not bg.done.is_set():
            return 0
        return self._settle_bg()

    def _settle_bg(self) -> int:
        bg, self._bg = self._bg, None
        if bg is None:
            return 0
        bg.join()
        if bg.error is not None:
            with _naming(self.path):
                raise bg.error
        gained = max(0, bg.target - self.durable)
        self.durable = max(self.durable, bg.target)
        return gained

    def sync(self) -> int:
        """``fsync`` the file now (after any background one); return the bytes made durable."""
        fd = self._require_fd()
        gained = self._settle_bg()
        if self.size == self.durable:
            return gained
        with _naming(self.path):
            _platform.fsync_file(fd)
        gained += max(0, self.size - self.durable)
        self.durable = self.size
        return gained

    def settle(self, size: int) -> None:
        """A segmented transfer wrote and fsynced all ``size`` bytes in place: adopt them."""
        fd = self._require_fd()
        os.lseek(fd, size, os.SEEK_SET)
        self.size = self.durable = size

    def truncate(self) -> int:
        """Drop all content (a restart from 0); return how many bytes were thrown away."""
        fd = self._require_fd()
        if self._bg is not None:  # its result is about to be meaningless
            bg, self._bg = self._bg, None
            bg.join()
        dropped = self.size
        with _naming(self.path):
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        self.size = self.durable = 0
        return dropped

    def chunks(self, end: int, chunk_size: int = _REHASH_CHUNK) -> "PrefixReader":
        """Read ``[0:end)`` back in chunks (to rehash a preserved prefix)."""
        return PrefixReader(self._require_fd(), end, chunk_size)

    def close(self) -> None:
        if self._bg is not None:  # the helper still uses the fd
            bg, self._bg = self._bg, None
            bg.join()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


@attrs.define(eq=False)
class _BackgroundSync:
    """One ``fsync`` started through the engine's `DiskWork`, covering the first ``target`` bytes."""

    target: int
    _work: Background

    @classmethod
    def start(cls, disk: DiskWork, fd: int, target: int) -> "_BackgroundSync":
        return cls(target, disk.start(lambda: _platform.fsync_file(fd), name="engine-fsync"))

    @property
    def done(self) -> threading.Event:
        return self._work.done

    @property
    def error(self) -> BaseException | None:
        return self._work.error

    def join(self) -> None:
        self._work.join()


@attrs.define(eq=False)
class PrefixReader:
    """Iterate over the first ``end`` bytes of a file with ``pread`` (position untouched)."""

    _fd: int
    _end: int
    _chunk_size: int
    _pos: int = 0

    def __iter__(self) -> PrefixReader:
        return self

    def __next__(self) -> bytes:
        if self._pos >= self._end:
            raise StopIteration
        data = _platform.pread(self._fd, min(self._chunk_size, self._end - self._pos), self._pos)
        if not data:
            raise StopIteration
        self._pos += len(data)
        return data


def fsync_dir(path: Path) -> None:
    """``fsync`` a directory so a rename inside it survives a crash (best effort; none on Windows)."""
    _platform.fsync_dir(path, strict=False)  # some file systems refuse it; the rename itself happened


def replace_durably(src: Path, dst: Path) -> None:
    """Rename ``src`` over ``dst`` atomically and make the rename durable."""
    os.replace(_platform.long_path(src), _platform.long_path(dst))
    fsync_dir(dst.parent)


def free_bytes(directory: Path, statvfs: Callable[[str], _platform.FsStats] = _platform.statvfs) -> int | None:
    """Bytes an unprivileged user may still write in ``directory``; None if unknown."""
    try:
        st = statvfs(str(directory))
    except OSError:
        return None
    return int(st.f_bavail) * int(st.f_frsize)
