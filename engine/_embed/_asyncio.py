"""The engine inside an asyncio program: trio runs as a guest of the asyncio loop.

`asyncio_engine` starts the engine with ``trio.lowlevel.start_guest_run`` on
the running loop: trio's tasks run in the loop's thread, between asyncio's
callbacks (trio parks one helper thread of its own in the OS's I/O wait).
Because the two never run at the same instant, the plain readers (``get``,
``list``, ``statistics``, ``settings``) read the engine directly; every
``async`` method is a call into the engine's run whose result comes back
through an `asyncio.Future`.

Cancelling the asyncio task that awaits a call cancels that call's trio task
and nothing else. One trio run per thread is all trio allows, so a loop holds
at most one `asyncio_engine` at a time.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import threading
import weakref
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import outcome
import trio

from .._breaker import BreakerState
from ._host import CANCELLED, EngineClosed, EngineHost, wait_settled
from .._engine import Engine, open_engine
from .._events import Event, Subscription
from .._model import Operation
from .._settings import Settings
from .._stats import Statistics

__all__ = ["AsyncioEngine", "AsyncioSubscription", "asyncio_engine"]


def _resolve(fut: asyncio.Future[Any], result: Any, on_orphan: Callable[[Any], None] | None) -> None:
    """Deliver a call's outcome to its future (runs on the loop)."""
    if fut.done():
        if on_orphan is not None and isinstance(result, outcome.Value):
            on_orphan(result.value)  # the awaiting task gave up after the result was made
    elif result is CANCELLED:
        fut.cancel()
    elif isinstance(result, outcome.Value):
        fut.set_result(result.value)
    else:
        fut.set_exception(result.error)


class AsyncioEngine:
    """The engine's API for asyncio code: `Engine`'s methods, same names and results.

    Get one from `asyncio_engine`; use it from the loop that opened it.
    """

    def __init__(self, host: EngineHost, loop: asyncio.AbstractEventLoop) -> None:
        self._host = host
        self._loop = loop
        self._thread = threading.get_ident()

    def __repr__(self) -> str:
        state = "running" if self._host.running else "closed"
        return f"<AsyncioEngine {state} state_dir={str(self._host.engine and self._host.engine.state_dir)!r}>"

    # -- the bridge ---------------------------------------------------------------

    def _engine(self) -> Engine:
        if threading.get_ident() != self._thread:
            raise RuntimeError("an AsyncioEngine is used from its event loop's thread only")
        return self._host.check_running()

    async def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any,
                    on_orphan: Callable[[Any], None] | None = None) -> Any:
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("an AsyncioEngine is used from the event loop that opened it only")
        fut: asyncio.Future[Any] = self._loop.create_future()
        loop = self._loop

        def settle(result: Any) -> None:
            loop.call_soon_threadsafe(_resolve, fut, result, on_orphan)

        call = self._host.call(fn, args, settle)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                if on_orphan is not None and fut.exception() is None:
                    on_orphan(fut.result())
            else:
                self._host.cancel(call)
            raise

    # -- reading (direct: trio is not running while this code runs) ------------------

    @property
    def state_dir(self) -> Path:
        return self._engine().state_dir

    @property
    def settings(self) -> Settings:
        """The settings in force."""
        return self._engine().settings

    def get(self, op_id: str) -> Operation:
        """One operation's current view; `RefusedError` ``E_NOT_FOUND`` if unknown."""
        return self._engine().get(op_id)

    def list(self) -> builtins.list[Operation]:
        """Every known operation, oldest first."""
        return self._engine().list()

    def statistics(self) -> Statistics:
        """The statistics of SPEC section 10."""
        return self._engine().statistics()

    def find(self, resource: str) -> Operation | None:
        """The operation that owns ``resource`` (e.g. a destination path), if any."""
        return self._engine().find(resource)

    async def breakers(self) -> builtins.list[BreakerState]:
        """Each breaker scope's state."""
        return await self._call(self._engine().breakers)

    # -- submitting and controlling -----------------------------------------------

    async def submit(self, spec: Any) -> Operation:
        """Start an operation (see `Engine.submit`)."""
        return await self._call(self._engine().submit, spec)

    async def pause(self, op_id: str) -> Operation:
        """Stop running work promptly, keep all progress (-> paused)."""
        return await self._call(self._engine().pause, op_id)

    async def resume(self, op_id: str) -> Operation:
        """Continue a paused operation (-> pending)."""
        return await self._call(self._engine().resume, op_id)

    async def cancel(self, op_id: str) -> Operation:
        """Stop and delete partial data and the snapshot (-> cancelled)."""
        return await self._call(self._engine().cancel, op_id)

    async def retry_now(self, op_id: str) -> Operation:
        """Skip the backoff wait, or retry a failed/exhausted operation."""
        return await self._call(self._engine().retry_now, op_id)

    async def force_retry(self, op_id: str) -> Operation:
        """Retry whatever the classification; one attempt bypasses an open breaker."""
        return await self._call(self._engine().force_retry, op_id)

    async def cancel_recovery(self, op_id: str) -> Operation:
        """Stop automatic retries; the operation fails with its last error."""
        return await self._call(self._engine().cancel_recovery, op_id)

    async def control(self, op_id: str, control: str) -> Operation:
        """Apply a control by name (``pause``, ``retry_now``, ...)."""
        return await self._call(self._engine().control, op_id, control)

    async def forget(self, op_id: str) -> None:
        """Drop a finished operation from history (its files stay)."""
        await self._call(self._engine().forget, op_id)

    async def update_settings(self, **changes: Any) -> Settings:
        """Validate, apply and persist ``changes``."""
        return await self._call(partial(self._engine().update_settings, **changes))

    async def wait(self, op_id: str, timeout: float | None = None) -> Operation:
        """Return when the operation is success, cancelled, failed or exhausted.

        ``timeout`` (seconds) raises `TimeoutError`; cancelling the awaiting
        task stops only the waiting, never the operation.
        """
        return await self._call(wait_settled, self._engine(), op_id, timeout)

    def subscribe(self) -> AsyncioSubscription:
        """Events from now on: ``async for event in eng.subscribe()`` or ``async with``."""
        engine = self._engine()
        return AsyncioSubscription(self, engine.subscribe_nowait())




class AsyncioSubscription:
    """An asyncio async iterator of `Event`; also an async context manager.

    Closed by `aclose`, by leaving its ``async with``, or when dropped (e.g.
    after ``break``); it ends when the engine shuts down. A slow reader never
    slows the engine: events wait on the engine's side, progress coalesced.
    """

    def __init__(self, eng: AsyncioEngine, sub: Subscription) -> None:
        self._eng = eng
        self._sub = sub
        self._stash: collections.deque[Event] = collections.deque()
        self._closed = False
        self._close = weakref.finalize(self, eng._host.unsubscribe_soon, sub)

    def __aiter__(self) -> AsyncioSubscription:
        return self

    async def __anext__(self) -> Event:
        await asyncio.sleep(0)  # a checkpoint, so a busy reader cannot starve the engine
        if self._stash:
            return self._stash.popleft()
        if self._closed:
            raise StopAsyncIteration
        try:
            return self._sub.receive_nowait()
        except trio.WouldBlock:
            pass
        try:
            return await self._eng._call(self._sub.receive, on_orphan=self._stash.append)
        except (trio.EndOfChannel, EngineClosed):
            self._closed = True
            raise StopAsyncIteration from None

    def receive_nowait(self) -> Event:
        """The next queued event; `trio.WouldBlock` when none is."""
        if self._stash:
            return self._stash.popleft()
        return self._sub.receive_nowait()

    def drain(self) -> list[Event]:
        """Every event queued now, without waiting."""
        out = list(self._stash)
        self._stash.clear()
        return out + self._sub.drain()

    def close(self) -> None:
        """Stop receiving; a pending ``__anext__`` ends the iteration."""
        self._closed = True
        self._close()

    async def aclose(self) -> None:
        self.close()
        await asyncio.sleep(0)

    async def __aenter__(self) -> AsyncioSubscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def _wait_shielded(fut: asyncio.Future[Any]) -> None:
    """Wait for ``fut`` even if cancelled meanwhile; the cancellation is re-raised after."""
    cancelled: asyncio.CancelledError | None = None
    while not fut.done():
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        raise cancelled


@asynccontextmanager
async def asyncio_engine(
    state_dir: Any = None, settings: Settings | None = None, **open_engine_kwargs: Any
) -> AsyncIterator[AsyncioEngine]:
    """Run the engine as a trio guest of the running asyncio loop for the block.

    Takes `open_engine`'s arguments. Errors while starting (e.g.
    `StateDirLocked`) are raised here. Leaving the block cancels pending
    calls (they raise `EngineClosed`), checkpoints running operations (they
    resume on the next start) and waits until the engine has stopped. If the
    engine stops on an error, pending and later calls raise `EngineBroken`
    and so does leaving the block.
    """
    loop = asyncio.get_running_loop()
    if trio.lowlevel.in_trio_run():
        raise RuntimeError("trio already runs in this thread (another asyncio_engine?); "
                           "one asyncio_engine per event loop thread")
    host = EngineHost(partial(open_engine, state_dir, settings, **open_engine_kwargs))
    started: asyncio.Future[None] = loop.create_future()
    finished: asyncio.Future[None] = loop.create_future()

    def on_ready() -> None:
        if not started.done():
            started.set_result(None)

    def done_callback(result: outcome.Outcome[None]) -> None:
        host.finish(result)
        if not started.done():
            if isinstance(result, outcome.Error):
                started.set_exception(result.error)
            else:  # pragma: no cover - main always reports readiness first
                started.set_exception(host.stopped())
        finished.set_result(None)

    trio.lowlevel.start_guest_run(
        host.main,
        on_ready,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        run_sync_soon_not_threadsafe=loop.call_soon,
        done_callback=done_callback,
        host_uses_signal_set_wakeup_fd=True,
    )
    try:
        await started
        yield AsyncioEngine(host, loop)
    finally:
        host.request_stop()
        await _wait_shielded(finished)
    host.raise_if_broken()
