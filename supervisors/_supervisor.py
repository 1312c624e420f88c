"""Supervisor nurseries: own children, pause/cancel them, rerun them by policy.

A `Supervisor` wraps a trio nursery. Each child runs inside two cancel
scopes: an outer one that `cancel` closes for good, and a per-run one that
`pause` cancels while keeping the child parked until `resume`. A child that
raises is rerun according to its `RetryPolicy` (backoff with jitter; a wait
that `skip_wait` can cut short); when the policy gives up, the supervisor's
``on_give_up`` hook hears about it and the rest of the tree keeps running.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import attrs
import trio

from ._backoff import GiveUp, RetryPolicy
from ._sleep import SkippableSleep

__all__ = ["Child", "Supervisor", "open_supervisor"]

log = logging.getLogger("supervisors")

GiveUpHook = Callable[["Child", BaseException], None]


@attrs.define(eq=False)
class Child:
    """A supervised task. States: running, paused, waiting (to rerun), done."""

    name: str
    restarts: int = 0
    state: str = "running"
    error: BaseException | None = None
    done: trio.Event = attrs.Factory(trio.Event)
    _outer: trio.CancelScope = attrs.Factory(trio.CancelScope)
    _run_scope: trio.CancelScope | None = None
    _resume: trio.Event | None = None
    _sleep: SkippableSleep = attrs.Factory(SkippableSleep)

    def cancel(self) -> None:
        """Stop the child for good, whatever it is doing."""
        self._outer.cancel()

    def pause(self) -> None:
        """Cancel the current run (or wait) and hold the child until `resume`."""
        if self.state == "done" or self._resume is not None:
            return
        self._resume = trio.Event()
        if self._run_scope is not None:
            self._run_scope.cancel()
        self._sleep.skip()

    def resume(self) -> None:
        """Let a paused child run again; its restart counter is kept."""
        if self._resume is not None:
            self._resume.set()
            self._resume = None

    def skip_wait(self) -> bool:
        """Rerun now instead of at the end of the backoff wait."""
        return self._sleep.skip()

    @property
    def next_run_at(self) -> float | None:
        return self._sleep.deadline


@attrs.define(eq=False)
class Supervisor:
    """Owns children in one nursery; see the module docstring."""

    _nursery: trio.Nursery
    name: str = "supervisor"
    on_give_up: GiveUpHook | None = None
    children: dict[str, Child] = attrs.Factory(dict)

    def start_soon(
        self,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        name: str,
        restart: RetryPolicy | None = None,
    ) -> Child:
        """Start ``fn(*args)`` as a child; rerun it by ``restart`` if it raises."""
        if name in self.children:
            raise ValueError(f"a child named {name!r} is already running")
        child = Child(name)
        self.children[name] = child
        self._nursery.start_soon(self._run, child, fn, args, restart, name=f"{self.name}/{name}")
        return child

    async def start(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str
    ) -> tuple[Child, Any]:
        """Start a service child and wait for its ``task_status.started(value)``."""
        if name in self.children:
            raise ValueError(f"a child named {name!r} is already running")
        child = Child(name)
        self.children[name] = child

        async def service(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with child._outer:
                    await fn(*args, task_status=task_status)
            finally:
                self._finish(child)

        value = await self._nursery.start(service, name=f"{self.name}/{name}")
        return child, value

    def cancel_all(self) -> None:
        for child in list(self.children.values()):
            child.cancel()

    def _finish(self, child: Child) -> None:
        child.state = "done"
        child.done.set()
        if self.children.get(child.name) is child:
            del self.children[child.name]

    async def _run(
        self,
        child: Child,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        restart: RetryPolicy | None,
    ) -> None:
        try:
            with child._outer:
                while True:
                    # A loop, not an if: pause may come again between resume and this wakeup.
                    while child._resume is not None:
                        child.state = "paused"
                        await child._resume.wait()
                    child.state = "running"
                    try:
                        with trio.CancelScope() as child._run_scope:
                            await fn(*args)
                    except Exception as exc:
                        if child._resume is not None:
                            continue  # paused while failing: the pause wins
                        # An exception may carry how long its source asked us to wait
                        # (``retry_after_s``, e.g. from an HTTP Retry-After): it raises the
                        # delay, never shortens it.
                        decision = (restart or RetryPolicy(max_retries=0)).decide(
                            child.restarts, retryable=True, floor_s=getattr(exc, "retry_after_s", None)
                        )
                        if isinstance(decision, GiveUp):
                            child.error = exc
                            log.error("%s: child %s failed for good: %r", self.name, child.name, exc,
                                      exc_info=exc)
                            if self.on_give_up is not None:
                                self.on_give_up(child, exc)
                            return
                        child.restarts = decision.retry
                        log.warning("%s: child %s failed (%r); rerun %d in %.2fs", self.name,
                                    child.name, exc, decision.retry, decision.delay_s)
                        child.state = "waiting"
                        await child._sleep.sleep_until(trio.current_time() + decision.delay_s)
                        continue
                    finally:
                        child._run_scope = None
                    if child._resume is not None:
                        continue  # the run was cut short by pause
                    return
        finally:
            self._finish(child)


@asynccontextmanager
async def open_supervisor(
    name: str = "supervisor", *, on_give_up: GiveUpHook | None = None
) -> AsyncIterator[Supervisor]:
    """A supervisor whose children all end before the block exits.

    Leaving the block normally waits for the children; cancel them first
    (``cancel_all``) for a prompt shutdown.
    """
    async with trio.open_nursery() as nursery:
        yield Supervisor(nursery, name=name, on_give_up=on_give_up)
