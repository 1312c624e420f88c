"""Concurrency slots: ``max_concurrent`` overall and ``max_per_host`` per host.

Waiters are served first-in, first-out among those that can run: an
operation whose host is full does not block a later one for another host.
Limits are read on every decision, so a live settings change applies at
the next release or wake-up (`reschedule`).
"""

from __future__ import annotations

from typing import Callable

import attrs
import trio

__all__ = ["Scheduler", "Slot"]


@attrs.define(eq=False)
class Slot:
    """A granted slot; `release` it exactly once (releasing twice is harmless)."""

    _scheduler: "Scheduler"
    host: str | None
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._scheduler._release(self)


@attrs.define(eq=False)
class _Waiter:
    host: str | None
    event: trio.Event = attrs.Factory(trio.Event)
    slot: Slot | None = None


@attrs.define(eq=False)
class Scheduler:
    """See the module docstring. ``limits`` returns (max_concurrent, max_per_host)."""

    limits: Callable[[], tuple[int, int]]
    running: int = 0
    per_host: dict[str, int] = attrs.Factory(dict)
    _waiters: list[_Waiter] = attrs.Factory(list)

    def _fits(self, host: str | None) -> bool:
        max_total, max_host = self.limits()
        if self.running >= max_total:
            return False
        return host is None or self.per_host.get(host, 0) < max_host

    def _grant(self, host: str | None) -> Slot:
        self.running += 1
        if host is not None:
            self.per_host[host] = self.per_host.get(host, 0) + 1
        return Slot(self, host)

    def try_acquire(self, host: str | None) -> Slot | None:
        """A slot now if one is free and nobody eligible is queued before us."""
        if any(w.host == host or host is None for w in self._waiters):
            return None
        return self._grant(host) if self._fits(host) else None

    async def acquire(self, host: str | None) -> Slot:
        """Wait for a slot, in FIFO order among waiters that can run."""
        slot = self.try_acquire(host)
        if slot is not None:
            await trio.lowlevel.checkpoint()
            return slot
        waiter = _Waiter(host)
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.slot is not None:
                waiter.slot.release()  # granted and cancelled at the same moment
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise
        assert waiter.slot is not None
        return waiter.slot

    def _release(self, slot: Slot) -> None:
        self.running -= 1
        if slot.host is not None:
            left = self.per_host.get(slot.host, 1) - 1
            if left:
                self.per_host[slot.host] = left
            else:
                self.per_host.pop(slot.host, None)
        self.reschedule()

    def reschedule(self) -> None:
        """Grant slots to waiters that fit now (after a release or a limits change)."""
        if not self._waiters:
            return
        max_total, _ = self.limits()
        keep: list[_Waiter] = []
        for index, waiter in enumerate(self._waiters):
            if self.running >= max_total:
                keep.extend(self._waiters[index:])
                break
            if self._fits(waiter.host):
                waiter.slot = self._grant(waiter.host)
                waiter.event.set()
            else:
                keep.append(waiter)
        self._waiters = keep

    @property
    def waiting(self) -> int:
        return len(self._waiters)
