"""The snapshot writer: batches snapshot writes without weakening them.

Writing one snapshot atomically costs two fsyncs (the file, then the
directory): about 5 ms on an ordinary disk, which caps an engine writing
them one by one at a few hundred status changes per second and blocks the
event loop while it waits. Here operations only *mark* themselves dirty;
the writer takes every dirty operation (up to `batch_size` at a time),
writes each snapshot to a temp file, makes all of them durable with one
``syncfs`` of the state directory's file system, renames them into place
and fsyncs the directory once. Each snapshot is still "temp file, durable,
rename, directory durable"; only the waiting is shared.

A caller that needs durability before going on (the download kind's
checkpoint: data fsynced, offset recorded, *then* continue) awaits `flush`,
which returns once a batch holding the operation's latest state is on disk,
or raises the `OSError` that batch hit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import secrets
from typing import Any, Callable

import attrs
import msgpack
import trio

from ._convert import converter
from ._store import SCHEMA, OpSnapshot, SnapshotStore

__all__ = ["SnapshotWriter"]

log = logging.getLogger("engine")


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_SYNCFS = _load_syncfs()


@attrs.define(eq=False)
class _Ticket:
    done: trio.Event = attrs.Factory(trio.Event)
    error: OSError | None = None


@attrs.define(eq=False)
class SnapshotWriter:
    """Owns every snapshot write of one engine (see the module docstring)."""

    store: SnapshotStore
    batch_size: int = 128
    #: how long to let marks gather before a batch (a status change is durable
    #: within about this long; a checkpoint waits about this long)
    coalesce_s: float = 0.005
    _dirty: dict[str, Callable[[], OpSnapshot]] = attrs.Factory(dict)
    _tickets: dict[str, list[_Ticket]] = attrs.Factory(dict)
    _wake: trio.Event = attrs.Factory(trio.Event)
    batches: int = 0
    written: int = 0

    def mark(self, op_id: str, snapshot: Callable[[], OpSnapshot]) -> None:
        """Write this operation's snapshot soon (its state as it is at write time)."""
        self._dirty[op_id] = snapshot
        self._wake.set()

    async def flush(self, op_id: str, snapshot: Callable[[], OpSnapshot]) -> None:
        """Mark, then wait until a snapshot of this state is durable."""
        ticket = _Ticket()
        self._tickets.setdefault(op_id, []).append(ticket)
        self.mark(op_id, snapshot)
        await ticket.done.wait()
        if ticket.error is not None:
            raise ticket.error

    def discard(self, op_id: str) -> None:
        """Forget a pending write (the operation was cancelled or forgotten)."""
        self._dirty.pop(op_id, None)
        for ticket in self._tickets.pop(op_id, []):
            ticket.done.set()

    @property
    def pending(self) -> int:
        return len(self._dirty)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                await trio.sleep(self.coalesce_s)
                self._wake = trio.Event()
                while self._dirty:
                    self.write_batch()
                    await trio.lowlevel.checkpoint()  # let everyone else run between batches
        finally:
            # Shutdown: whatever is still dirty is written now, synchronously.
            while self._dirty:
                self.write_batch()

    def write_batch(self) -> None:
        """Write up to `batch_size` dirty snapshots durably (synchronous)."""
        ids = list(self._dirty)[: self.batch_size]
        items = [(op_id, self._dirty.pop(op_id)) for op_id in ids]
        tickets = {op_id: self._tickets.pop(op_id, []) for op_id in ids}
        error: OSError | None = None
        try:
            self._write(items)
        except OSError as exc:
            error = exc
            log.error("could not write %d snapshot(s): %s", len(items), exc)
        self.batches += 1
        self.written += len(items)
        for waiting in tickets.values():
            for ticket in waiting:
                ticket.error = error
                ticket.done.set()

    def _write(self, items: list[tuple[str, Callable[[], OpSnapshot]]]) -> None:
        ops_dir = self.store.ops_dir
        temps: list[tuple[str, str]] = []
        try:
            for op_id, snapshot in items:
                payload = {"schema": SCHEMA, "operation": converter.unstructure(snapshot())}
                data = msgpack.packb(payload, use_bin_type=True)
                tmp = os.path.join(ops_dir, f".{op_id}.msgpack.{secrets.token_hex(4)}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                temps.append((tmp, str(self.store.path_for(op_id))))
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    if _SYNCFS is None:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            dir_fd = self.store.ops_fd()
            if _SYNCFS is not None and _SYNCFS(dir_fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(ops_dir))
            for tmp, final in temps:
                os.replace(tmp, final)
            temps = []
            os.fsync(dir_fd)
        finally:
            for tmp, _ in temps:  # a failed batch leaves no temp files behind
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
