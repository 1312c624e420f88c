"""The trio side shared by the asyncio and thread bridges (``engine.embed``).

An `EngineHost` owns one trio run of `open_engine` and takes calls from
outside trio: from the asyncio loop trio is a guest of, or from any thread.
A call is queued into the run with ``TrioToken.run_sync_soon`` (thread-safe)
and runs as a task in the host's own nursery, inside the engine block, so
leaving the block cancels it before the engine shuts down. Each call's
outcome goes back through a ``settle`` callback the bridge supplies.

Every call is settled exactly once: with its result, with `CANCELLED` when
the caller gave up on it, or, for calls still pending when the run ends,
with `EngineClosed` (the block was left) or `EngineBroken` (the engine
stopped on an error, which is the ``__cause__``). A call can therefore
never hang on a dead engine.
"""

from __future__ import annotations

import threading
from contextlib import AbstractAsyncContextManager
from typing import Any, Awaitable, Callable

import attrs
import outcome
import trio

from .._engine import Engine
from .._errors import RecoveryError
from .._events import Subscription
from .._model import Operation

__all__ = ["CANCELLED", "Call", "EngineBroken", "EngineClosed", "EngineHost", "wait_settled"]


class EngineClosed(RecoveryError):
    """The embedded engine was shut down (its block was left); calls are refused."""


class EngineBroken(RecoveryError):
    """The embedded engine stopped on an error; ``__cause__`` is that error."""


class _Cancelled:
    def __repr__(self) -> str:
        return "CANCELLED"


#: The settlement of a call the caller gave up on (nobody is waiting for it).
CANCELLED: Any = _Cancelled()

Settle = Callable[[Any], None]


@attrs.define(eq=False)
class Call:
    """One call into the engine; ``settle`` receives an `outcome.Outcome` or `CANCELLED`."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    settle: Settle
    sync: bool = False
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    cancel_requested: bool = False


@attrs.define(eq=False)
class EngineHost:
    """One engine run and the calls made into it from outside trio (see the module docstring)."""

    _open: Callable[[], AbstractAsyncContextManager[Engine]]
    engine: Engine | None = None
    token: trio.lowlevel.TrioToken | None = None
    _calls: trio.Nursery | None = None
    _stop: trio.Event = attrs.Factory(trio.Event)
    _lock: threading.Lock = attrs.Factory(threading.Lock)
    _stop_requested: bool = False
    _accepting: bool = False
    _pending: set[Call] = attrs.Factory(set)
    result: outcome.Outcome[None] | None = None

    # -- the trio side ---------------------------------------------------------------

    async def main(self, on_ready: Callable[[], None]) -> None:
        """The trio run: open the engine, report readiness, serve calls until stopped."""
        async with self._open() as engine:
            async with trio.open_nursery() as calls:
                with self._lock:
                    self.engine, self._calls = engine, calls
                    self.token = trio.lowlevel.current_trio_token()
                    stop_now = self._stop_requested
                self._accepting = True
                try:
                    on_ready()
                    if not stop_now:
                        await self._stop.wait()
                finally:
                    # Calls still running end here, before the engine shuts down.
                    self._accepting = False
                    calls.cancel_scope.cancel()

    def _start(self, call: Call) -> None:
        if call.cancel_requested:
            self._settle(call, CANCELLED)
        elif not self._accepting:
            return  # shutting down: `finish` settles it
        elif call.sync:
            self._settle(call, outcome.capture(call.fn, *call.args))
        else:
            assert self._calls is not None
            self._calls.start_soon(self._run, call, name=getattr(call.fn, "__qualname__", "call"))

    async def _run(self, call: Call) -> None:
        with call.scope:
            try:
                value = await call.fn(*call.args)
            except trio.Cancelled:
                raise
            except Exception as exc:
                self._settle(call, outcome.Error(exc))
            else:
                self._settle(call, outcome.Value(value))
            return
        self._settle(call, CANCELLED)  # the caller cancelled it

    def _settle(self, call: Call, result: Any) -> None:
        with self._lock:
            if call not in self._pending:
                return
            self._pending.remove(call)
        call.settle(result)

    # -- the host side (any thread) ---------------------------------------------------

    def call(self, fn: Callable[..., Awaitable[Any]] | Callable[..., Any], args: tuple[Any, ...],
             settle: Settle, *, sync: bool = False) -> Call:
        """Run ``fn(*args)`` in the engine's run (``sync``: a plain function); never raises."""
        call = Call(fn, args, settle, sync)
        with self._lock:
            finished = self.result is not None
            if not finished:
                self._pending.add(call)
            token = self.token
        if finished or token is None:
            settle(outcome.Error(self.stopped()))
            return call
        try:
            token.run_sync_soon(self._start, call)
        except trio.RunFinishedError:
            with self._lock:
                if self.result is None:
                    return call  # `finish` is about to settle it
                self._pending.discard(call)
            settle(outcome.Error(self.stopped()))
        return call

    def cancel(self, call: Call) -> None:
        """Give up on ``call``: its trio task is cancelled and it settles with `CANCELLED`."""
        call.cancel_requested = True
        self.run_soon(call.scope.cancel)

    def run_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run a quick plain function in the engine's run, if it is still going."""
        token = self.token
        if token is not None:
            try:
                token.run_sync_soon(fn, *args)
            except trio.RunFinishedError:
                pass

    def unsubscribe_soon(self, sub: Subscription) -> None:
        """Close ``sub`` from any thread (a pending receive then ends)."""
        if self.engine is not None:
            self.run_soon(self.engine.unsubscribe, sub)

    def request_stop(self) -> None:
        """Leave the engine block: running calls are cancelled, the engine checkpoints and stops."""
        with self._lock:
            self._stop_requested = True
            token = self.token
        if token is not None:
            self.run_soon(self._stop.set)

    def finish(self, result: outcome.Outcome[None]) -> None:
        """Record how the run ended and settle every call still pending (the bridge calls this)."""
        with self._lock:
            self.result = result
            pending = list(self._pending)
            self._pending.clear()
        for call in pending:
            call.settle(outcome.Error(self.stopped()))

    @property
    def running(self) -> bool:
        return self.engine is not None and self.result is None

    def check_running(self) -> Engine:
        """The engine, or raise `EngineClosed`/`EngineBroken` when its run is over."""
        if self.result is not None or self.engine is None:
            raise self.stopped()
        return self.engine

    def stopped(self) -> RecoveryError:
        """The error for a call that cannot run because the run is over (or ending)."""
        if isinstance(self.result, outcome.Error):
            broken = EngineBroken(f"the engine stopped on an error: {self.result.error!r}")
            broken.__cause__ = self.result.error
            return broken
        return EngineClosed("the engine is shut down")

    def raise_if_broken(self) -> None:
        """After the run: raise `EngineBroken` if it ended on an error."""
        if isinstance(self.result, outcome.Error):
            raise self.stopped()


async def wait_settled(engine: Engine, op_id: str, timeout: float | None) -> Operation:
    """`Engine.wait` with a ``timeout`` in seconds that raises the builtin `TimeoutError`."""
    if timeout is None:
        return await engine.wait(op_id)
    with trio.move_on_after(timeout):
        return await engine.wait(op_id)
    raise TimeoutError(f"operation {op_id} did not settle within {timeout} s")
