"""The engine inside synchronous code: trio runs in a background thread.

`threaded_engine` runs `open_engine` under ``trio.run`` in one thread and
hands out a `ThreadedEngine` whose methods block until the engine's run has
answered. Any number of threads may call it at once: each call is queued
into the run (``TrioToken.run_sync_soon``) and its outcome comes back
through a `concurrent.futures.Future`, so the readers see the engine between
two of its steps, never halfway through one.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import threading
import weakref
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import outcome
import trio

from .._breaker import BreakerState
from ._host import EngineClosed, EngineHost, wait_settled
from .._engine import Engine, open_engine
from .._events import Event, Subscription
from .._model import Operation
from .._settings import Settings
from .._stats import Statistics

__all__ = ["ThreadedEngine", "ThreadedSubscription", "threaded_engine"]

_TIMED_OUT = object()


def _resolve(fut: concurrent.futures.Future[Any], result: Any) -> None:
    if isinstance(result, outcome.Value):
        fut.set_result(result.value)
    elif isinstance(result, outcome.Error):
        fut.set_exception(result.error)
    else:  # pragma: no cover - threads never give up on a call
        fut.cancel()


class ThreadedEngine:
    """The engine's API for synchronous code: `Engine`'s methods, blocking, same names.

    Get one from `threaded_engine`; safe to use from any number of threads.
    """

    def __init__(self, host: EngineHost) -> None:
        self._host = host

    def __repr__(self) -> str:
        state = "running" if self._host.running else "closed"
        return f"<ThreadedEngine {state}>"

    def _call(self, fn: Callable[..., Any], *args: Any, sync: bool = False) -> Any:
        if self._host.token is not None and trio.lowlevel.in_trio_run():
            try:
                same_run = trio.lowlevel.current_trio_token() is self._host.token
            except RuntimeError:  # pragma: no cover
                same_run = False
            if same_run:
                raise RuntimeError("a ThreadedEngine cannot be called from inside its own trio run")
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._host.call(fn, args, partial(_resolve, fut), sync=sync)
        return fut.result()

    def _engine(self) -> Engine:
        return self._host.check_running()

    # -- reading ------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self._engine().state_dir

    @property
    def settings(self) -> Settings:
        """The settings in force."""
        return self._call(lambda e: e.settings, self._engine(), sync=True)

    def get(self, op_id: str) -> Operation:
        """One operation's current view; `RefusedError` ``E_NOT_FOUND`` if unknown."""
        return self._call(self._engine().get, op_id, sync=True)

    def list(self) -> builtins.list[Operation]:
        """Every known operation, oldest first."""
        return self._call(self._engine().list, sync=True)

    def statistics(self) -> Statistics:
        """The statistics of SPEC section 10."""
        return self._call(self._engine().statistics, sync=True)

    def find(self, resource: str) -> Operation | None:
        """The operation that owns ``resource`` (e.g. a destination path), if any."""
        return self._call(self._engine().find, resource, sync=True)

    def breakers(self) -> builtins.list[BreakerState]:
        """Each breaker scope's state."""
        return self._call(self._engine().breakers)

    # -- submitting and controlling -----------------------------------------------

    def submit(self, spec: Any) -> Operation:
        """Start an operation (see `Engine.submit`)."""
        return self._call(self._engine().submit, spec)

    def pause(self, op_id: str) -> Operation:
        """Stop running work promptly, keep all progress (-> paused)."""
        return self._call(self._engine().pause, op_id)

    def resume(self, op_id: str) -> Operation:
        """Continue a paused operation (-> pending)."""
        return self._call(self._engine().resume, op_id)

    def cancel(self, op_id: str) -> Operation:
        """Stop and delete partial data and the snapshot (-> cancelled)."""
        return self._call(self._engine().cancel, op_id)

    def retry_now(self, op_id: str) -> Operation:
        """Skip the backoff wait, or retry a failed/exhausted operation."""
        return self._call(self._engine().retry_now, op_id)

    def force_retry(self, op_id: str) -> Operation:
        """Retry whatever the classification; one attempt bypasses an open breaker."""
        return self._call(self._engine().force_retry, op_id)

    def cancel_recovery(self, op_id: str) -> Operation:
        """Stop automatic retries; the operation fails with its last error."""
        return self._call(self._engine().cancel_recovery, op_id)

    def control(self, op_id: str, control: str) -> Operation:
        """Apply a control by name (``pause``, ``retry_now``, ...)."""
        return self._call(self._engine().control, op_id, control)

    def forget(self, op_id: str) -> None:
        """Drop a finished operation from history (its files stay)."""
        self._call(self._engine().forget, op_id)

    def update_settings(self, **changes: Any) -> Settings:
        """Validate, apply and persist ``changes``."""
        return self._call(partial(self._engine().update_settings, **changes))

    def wait(self, op_id: str, timeout: float | None = None) -> Operation:
        """Block until the operation is success, cancelled, failed or exhausted.

        ``timeout`` (seconds) raises `TimeoutError`; the operation goes on.
        """
        return self._call(wait_settled, self._engine(), op_id, timeout)

    def subscribe(self) -> ThreadedSubscription:
        """Events from now on, as a blocking iterator (``for event in eng.subscribe()``)."""
        sub = self._call(self._engine().subscribe_nowait, sync=True)
        return ThreadedSubscription(self, sub)


async def _receive(sub: Subscription, timeout: float | None) -> Any:
    with trio.move_on_after(float("inf") if timeout is None else timeout):
        return await sub.receive()
    return _TIMED_OUT



class ThreadedSubscription:
    """A blocking iterator of `Event`; also a context manager.

    Closed by `close` (from any thread: a ``next`` blocked in another thread
    then ends the iteration), by leaving its ``with``, or when dropped (e.g.
    after ``break``); it ends when the engine shuts down.
    """

    def __init__(self, eng: ThreadedEngine, sub: Subscription) -> None:
        self._eng = eng
        self._sub = sub
        self._closed = False
        self._close = weakref.finalize(self, eng._host.unsubscribe_soon, sub)

    def __iter__(self) -> ThreadedSubscription:
        return self

    def __next__(self) -> Event:
        try:
            return self.receive()
        except EngineClosed:
            raise StopIteration from None

    def receive(self, timeout: float | None = None) -> Event:
        """The next event, waiting up to ``timeout`` s (`TimeoutError`); `StopIteration` once closed."""
        if self._closed:
            raise StopIteration
        try:
            event = self._eng._call(_receive, self._sub, timeout)
        except trio.EndOfChannel:
            self._closed = True
            raise StopIteration from None
        if event is _TIMED_OUT:
            raise TimeoutError(f"no event within {timeout} s")
        return event

    def close(self) -> None:
        """Stop receiving; safe from any thread."""
        self._closed = True
        self._close()

    def __enter__(self) -> ThreadedSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextmanager
def threaded_engine(
    state_dir: Any = None, settings: Settings | None = None, **open_engine_kwargs: Any
) -> Iterator[ThreadedEngine]:
    """Run the engine in a background thread for the block.

    Takes `open_engine`'s arguments. Errors while starting (e.g.
    `StateDirLocked`) are raised here. Leaving the block cancels pending
    calls (they raise `EngineClosed`), checkpoints running operations (they
    resume on the next start) and joins the thread. If the engine stops on
    an error, pending and later calls raise `EngineBroken`, and so does
    leaving the block.
    """
    host = EngineHost(partial(open_engine, state_dir, settings, **open_engine_kwargs))
    started: concurrent.futures.Future[None] = concurrent.futures.Future()

    def on_ready() -> None:
        started.set_result(None)

    def run() -> None:
        result = outcome.capture(trio.run, host.main, on_ready)
        host.finish(result)
        if not started.done():
            started.set_exception(result.error if isinstance(result, outcome.Error) else host.stopped())

    thread = threading.Thread(target=run, name="recovery-engine", daemon=True)
    thread.start()
    try:
        started.result()
        yield ThreadedEngine(host)
    finally:
        host.request_stop()
        thread.join()
    host.raise_if_broken()
