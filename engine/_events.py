"""Events (SPEC section 9) and the bus that fans them out.

Publishing never blocks and never waits for a subscriber. Each subscriber
has its own queue; a ``progress`` event for an operation whose previous
progress event is still unread replaces it in place (latest wins), so a
subscriber that never reads costs at most one progress event per operation
plus the (never dropped) other events.
"""

from __future__ import annotations

import collections
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import attrs
import trio

__all__ = ["Event", "EventBus", "Subscription"]


@attrs.frozen
class Event:
    """One event: ``type``, ``op_id`` (None for engine-wide), ``ts`` and its fields."""

    type: str
    op_id: str | None
    ts: float
    fields: dict[str, Any] = attrs.Factory(dict)

    def to_dict(self) -> dict[str, Any]:
        """The flat map of SPEC section 9."""
        d: dict[str, Any] = {"type": self.type, "ts": self.ts}
        if self.op_id is not None:
            d["op_id"] = self.op_id
        d.update(self.fields)
        return d

    def __getitem__(self, key: str) -> Any:
        if key == "type":
            return self.type
        if key == "op_id":
            return self.op_id
        if key == "ts":
            return self.ts
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


class _Slot:
    """A queue entry whose event can be replaced while unread (progress coalescing)."""

    __slots__ = ("event",)

    def __init__(self, event: Event) -> None:
        self.event = event


@attrs.define(eq=False)
class Subscription:
    """An async iterator of events; made by `EventBus.subscribe`."""

    _queue: collections.deque[_Slot] = attrs.Factory(collections.deque)
    _progress: dict[str | None, _Slot] = attrs.Factory(dict)
    _wakeup: trio.Event = attrs.Factory(trio.Event)
    _closed: bool = False
    _served: int = 0
    coalesced: int = 0

    def _push(self, event: Event) -> None:
        if event.type == "progress":
            slot = self._progress.get(event.op_id)
            if slot is not None:
                slot.event = event
                self.coalesced += 1
                return
            slot = _Slot(event)
            self._progress[event.op_id] = slot
        else:
            slot = _Slot(event)
        self._queue.append(slot)
        self._wakeup.set()

    def receive_nowait(self) -> Event:
        """The next event; `trio.WouldBlock` when none is queued."""
        if not self._queue:
            raise trio.WouldBlock
        slot = self._queue.popleft()
        ev = slot.event
        if ev.type == "progress" and self._progress.get(ev.op_id) is slot:
            del self._progress[ev.op_id]
        return ev

    async def receive(self) -> Event:
        while True:
            if self._queue:
                # A reader catching up on a backlog should not wait a whole
                # scheduling round per event: stay a cancellation point, and
                # yield to others only every 64 events.
                self._served += 1
                if self._served % 64:
                    await trio.lowlevel.checkpoint_if_cancelled()
                else:
                    await trio.lowlevel.checkpoint()
                return self.receive_nowait()
            if self._closed:
                raise trio.EndOfChannel
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    def drain(self) -> list[Event]:
        """Every event queued now, without waiting."""
        out = []
        while self._queue:
            out.append(self.receive_nowait())
        return out

    def pending(self) -> int:
        return len(self._queue)

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()


@attrs.define(eq=False)
class EventBus:
    """Fan-out of events to any number of subscriptions."""

    _subscribers: set[Subscription] = attrs.Factory(set)
    clock: Any = time.time

    def publish(self, type: str, op_id: str | None = None, **fields: Any) -> Event:
        event = Event(type, op_id, self.clock(), fields)
        for sub in self._subscribers:
            sub._push(event)
        return event

    def open(self) -> Subscription:
        sub = Subscription()
        self._subscribers.add(sub)
        return sub

    def discard(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        sub.close()

    def close_all(self) -> None:
        for sub in list(self._subscribers):
            self.discard(sub)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        sub = self.open()
        try:
            yield sub
        finally:
            self.discard(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
