"""The snapshot writer at shutdown: nothing marked is ever lost."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

import trio

from engine._store import OpSnapshot, SnapshotStore
from engine._writer import SnapshotWriter

T = TypeVar("T")


class _HeldDisk:
    """A disk whose `run` waits for cancellation before it ever calls its work (a busy machine)."""

    def __init__(self) -> None:
        self.entered = trio.Event()

    async def run(self, fn: Callable[[], T]) -> T:
        self.entered.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    def start(self, fn: Callable[[], object], *, name: str) -> object:
        raise AssertionError("the writer never starts background work")


def _snap(op_id: str, status: str) -> OpSnapshot:
    return OpSnapshot(id=op_id, kind="k", seq=1, spec={}, status=status)


async def test_a_batch_taken_when_shutdown_cancels_is_still_written(tmp_path: Path) -> None:
    """Cancelled between taking a batch and committing it, the writer commits it on the way out, then later marks."""
    store = SnapshotStore(tmp_path)
    store.open()
    try:
        disk = _HeldDisk()
        writer = SnapshotWriter(store, disk=disk, coalesce_s=0)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.mark("a", lambda: _snap("a", "paused"))
            writer.mark("b", lambda: _snap("b", "in_progress"))
            await disk.entered.wait()  # the batch holding "a" and "b" is taken, its commit not begun
            writer.mark("b", lambda: _snap("b", "paused"))  # b's newer state, still dirty
            nursery.cancel_scope.cancel()
        loaded, problems = store.load_all()
        assert not problems
        assert {s.id: s.status for s in loaded} == {"a": "paused", "b": "paused"}
        assert writer.pending == 0
    finally:
        store.close()
