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

import logging
import os
from pathlib import Path
from typing import Callable

import attrs
import trio

from . import _platform
from ._disk import THREADS, DiskWork
from ._store import OpSnapshot, SnapshotStore, fsync_dir_fd, write_temp

__all__ = ["SnapshotWriter"]

log = logging.getLogger("engine")


@attrs.define(eq=False)
class _Ticket:
    urgent: bool = True
    done: trio.Event = attrs.Factory(trio.Event)
    error: OSError | None = None


@attrs.define(eq=False)
class SnapshotWriter:
    """Owns every snapshot write of one engine (see the module docstring)."""

    store: SnapshotStore
    batch_size: int = 128
    #: how long status-change marks gather before a batch is written (a status
    #: change is durable within about this long). A `flush` (someone waiting
    #: for durability) cuts the gathering short.
    coalesce_s: float = 0.05
    #: where the blocking commit runs (a helper thread unless the caller chose otherwise)
    disk: DiskWork = THREADS
    _dirty: dict[str, Callable[[], OpSnapshot]] = attrs.Factory(dict)
    _tickets: dict[str, list[_Ticket]] = attrs.Factory(dict)
    _wake: trio.Event = attrs.Factory(trio.Event)
    _inflight: set[str] = attrs.Factory(set)
    _deleted_inflight: set[str] = attrs.Factory(set)
    batches: int = 0
    written: int = 0

    def mark(self, op_id: str, snapshot: Callable[[], OpSnapshot]) -> None:
        """Write this operation's snapshot soon (its state as it is at write time)."""
        self._dirty[op_id] = snapshot
        self._wake.set()

    async def flush(self, op_id: str, snapshot: Callable[[], OpSnapshot], *, urgent: bool = True) -> None:
        """Mark, then wait until a snapshot of this state is durable.

        ``urgent`` writes the next batch at once instead of letting marks gather.
        """
        ticket = _Ticket(urgent=urgent)
        self._tickets.setdefault(op_id, []).append(ticket)
        self.mark(op_id, snapshot)
        await ticket.done.wait()
        if ticket.error is not None:
            raise ticket.error

    def delete(self, op_id: str) -> None:
        """Forget pending writes and delete the snapshot (cancelled or forgotten).

        If a batch holding this operation is being written right now, the file
        is deleted again once that batch is in place, so it cannot come back.
        """
        self._dirty.pop(op_id, None)
        for ticket in self._tickets.pop(op_id, []):
            ticket.done.set()
        if op_id in self._inflight:
            self._deleted_inflight.add(op_id)
        self.store.delete(op_id)

    def is_dirty(self, op_id: str) -> bool:
        """True while a mark for this operation is not yet durable."""
        return op_id in self._dirty

    def _urgent(self) -> bool:
        return any(t.urgent for waiting in self._tickets.values() for t in waiting)

    @property
    def pending(self) -> int:
        return len(self._dirty)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                if not self._urgent():
                    with trio.move_on_after(self.coalesce_s):
                        while not self._urgent():  # until someone needs durability now
                            await self._wake.wait()
                            self._wake = trio.Event()
                self._wake = trio.Event()
                while self._dirty:
                    tickets, prepared = self._take()
                    # The disk waits off the event loop (by default): every control keeps
                    # running, and new marks gather for the next batch.
                    try:
                        error = await self.disk.run(lambda: self._commit_catching(prepared))
                    except BaseException:
                        # Cancelled (shutdown) before the commit began: the batch is taken
                        # and no longer dirty, so it is written here, before any later mark
                        # of the same operations (the loop below), or its states would be lost.
                        self._settle(tickets, self._commit_catching(prepared))
                        raise
                    self._settle(tickets, error)
        finally:
            # Shutdown: whatever is still dirty is written now, synchronously.
            while self._dirty:
                self.write_batch()

    def write_batch(self) -> None:
        """Write up to `batch_size` dirty snapshots durably (synchronous)."""
        tickets, prepared = self._take()
        self._settle(tickets, self._commit_catching(prepared))

    def _take(self) -> tuple[list[_Ticket], list[tuple[str, bytes]]]:
        """Pop a batch and serialize it now, on the loop, where the state lives."""
        ids = list(self._dirty)[: self.batch_size]
        prepared: list[tuple[str, bytes]] = []
        tickets: list[_Ticket] = []
        for op_id in ids:
            snapshot = self._dirty.pop(op_id)
            tickets.extend(self._tickets.pop(op_id, []))
            prepared.append((op_id, SnapshotStore.encode(snapshot())))
        self._inflight = {op_id for op_id, _ in prepared}
        return tickets, prepared

    def _settle(self, tickets: list[_Ticket], error: OSError | None) -> None:
        self.batches += 1
        self._inflight = set()
        for op_id in self._deleted_inflight:
            try:
                self.store.delete(op_id)
            except OSError as exc:
                log.error("op %s: could not delete its snapshot: %s", op_id, exc)
        self._deleted_inflight = set()
        for ticket in tickets:
            ticket.error = error
            ticket.done.set()

    def _commit_catching(self, prepared: list[tuple[str, bytes]]) -> OSError | None:
        try:
            self._commit(prepared)
        except OSError as exc:
            log.error("could not write %d snapshot(s): %s", len(prepared), exc)
            return exc
        self.written += len(prepared)
        return None

    def _commit(self, prepared: list[tuple[str, bytes]]) -> None:
        temps: list[tuple[Path, Path]] = []
        batch_sync = _platform.has_syncfs()  # else each temp file is fsynced on its own
        try:
            for op_id, data in prepared:
                final = self.store.path_for(op_id)
                temps.append((write_temp(final, data, fsync=not batch_sync), final))
            dir_fd = self.store.ops_fd()
            if batch_sync and dir_fd is not None:
                _platform.syncfs(dir_fd, str(self.store.ops_dir))
            for tmp, final in temps:
                os.replace(tmp, final)
            temps = []
            fsync_dir_fd(dir_fd, self.store.ops_dir)
        finally:
            for tmp, _ in temps:  # a failed batch leaves no temp files behind
                tmp.unlink(missing_ok=True)

