"""The shared circuit-breaker actor (SPEC section 5).

One actor owns the state of every scope (a download's URL host, or the
scope an install names). Operations ``ask`` it for a `Permit` before each
attempt and ``tell`` it a `Report` after; both travel over the actor's
mailbox, so the state has one owner and needs no locks.

closed --(threshold consecutive counted failures)--> open
open --(reset timeout; the k-th consecutive open lasts
        min(max_delay_s, reset_timeout_s * 2**k))--> half_open
half_open --(probe succeeds)--> closed;  --(probe fails)--> open (k + 1)

The probe goes to the operation that has waited longest. Waiters are woken
on every transition and ask again, so each sees the current ``until``.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Any, Callable

import attrs
import trio

from supervisors import ActorGone, Mailbox, Request, open_mailbox

__all__ = ["BreakerActor", "BreakerState", "Forget", "Go", "Permit", "Report", "Wait"]


@attrs.frozen
class Permit:
    scope: str
    op_id: str
    bypass: bool = False


@attrs.frozen
class Report:
    """``outcome``: "success" (or data moved), "failure" (counted), "neutral" (not counted)."""

    scope: str
    op_id: str
    outcome: str


@attrs.frozen
class Forget:
    """The operation stopped waiting (paused, cancelled) or will not use its probe."""

    scope: str
    op_id: str


@attrs.frozen
class _States:
    pass


@attrs.frozen
class Go:
    probe: bool


@attrs.frozen
class Wait:
    """Wait for ``wake``, then ask again. ``until_wall`` is the half-open time (Unix s)."""

    until_wall: float
    wake: trio.Event


@attrs.frozen(kw_only=True)
class BreakerState:
    """One scope's breaker as `Engine.breakers` shows it."""

    scope: str
    state: str
    consecutive_failures: int
    opened_count: int
    half_open_at: float | None
    waiting: int

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define(eq=False)
class _Scope:
    name: str
    state: str = "closed"
    failures: int = 0
    opens: int = 0  # consecutive open periods (k)
    until: float = 0.0  # trio time of the half-open transition
    waiters: collections.OrderedDict[str, None] = attrs.Factory(collections.OrderedDict)
    granted: set[str] = attrs.Factory(set)
    in_flight: set[str] = attrs.Factory(set)
    wake: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class BreakerActor:
    """See the module docstring. ``settings`` returns (threshold, reset_s, probes, max_delay_s)."""

    settings: Callable[[], tuple[int, float, int, float]]
    on_transition: Callable[[str, str, str], None]
    _mailbox: Mailbox[Any] = attrs.Factory(open_mailbox)
    _scopes: dict[str, _Scope] = attrs.Factory(dict)

    @property
    def address(self) -> Any:
        return self._mailbox.address

    async def permit(self, scope: str, op_id: str, *, bypass: bool = False) -> Go | Wait:
        return await self._mailbox.address.ask(Permit(scope, op_id, bypass))

    def report(self, scope: str, op_id: str, outcome: str) -> None:
        self._tell(Report(scope, op_id, outcome))

    def forget(self, scope: str, op_id: str) -> None:
        self._tell(Forget(scope, op_id))

    def _tell(self, message: Any) -> None:
        try:
            self._mailbox.address.tell(message)
        except ActorGone:
            pass  # the engine is shutting down; there is no state left to update

    async def states(self) -> list[BreakerState]:
        return await self._mailbox.address.ask(_States())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The actor loop: messages, and the timers that move open scopes to half_open."""
        task_status.started()
        try:
            while True:
                deadline = min((s.until for s in self._scopes.values() if s.state == "open"),
                               default=math.inf)
                with trio.move_on_at(deadline):
                    message = await self._mailbox.receive()
                    self._dispatch(message)
                    continue
                self._expire()
        finally:
            self._mailbox.close()

    # -- handlers (synchronous: the actor owns the state) --------------------

    def _dispatch(self, message: Any) -> None:
        request = message if isinstance(message, Request) else None
        body = request.message if request else message
        try:
            if isinstance(body, Permit):
                result: Any = self._permit(body)
            elif isinstance(body, Report):
                self._report(body)
                result = None
            elif isinstance(body, Forget):
                self._forget(body)
                result = None
            elif isinstance(body, _States):
                result = self._states()
            else:  # pragma: no cover - programming error
                raise TypeError(f"unknown breaker message {body!r}")
        except Exception as exc:  # pragma: no cover - keep the actor alive
            if request:
                request.fail(exc)
            return
        if request:
            request.reply(result)

    def _scope(self, name: str) -> _Scope:
        scope = self._scopes.get(name)
        if scope is None:
            scope = self._scopes[name] = _Scope(name)
        return scope

    def _wait(self, scope: _Scope, op_id: str) -> Wait:
        if op_id not in scope.waiters:
            scope.waiters[op_id] = None
        wall = time.time() + max(0.0, scope.until - trio.current_time())
        return Wait(wall, scope.wake)

    def _permit(self, msg: Permit) -> Go | Wait:
        scope = self._scope(msg.scope)
        if msg.bypass or scope.state == "closed":
            scope.waiters.pop(msg.op_id, None)
            return Go(probe=False)
        if scope.state == "open":
            return self._wait(scope, msg.op_id)
        # half_open
        if msg.op_id in scope.granted:
            scope.granted.discard(msg.op_id)
            scope.waiters.pop(msg.op_id, None)
            scope.in_flight.add(msg.op_id)
            return Go(probe=True)
        _, _, probes, _ = self.settings()
        if not scope.waiters and len(scope.in_flight) + len(scope.granted) < probes:
            scope.in_flight.add(msg.op_id)
            return Go(probe=True)
        return self._wait(scope, msg.op_id)

    def _report(self, msg: Report) -> None:
        scope = self._scope(msg.scope)
        probe = msg.op_id in scope.in_flight
        scope.in_flight.discard(msg.op_id)
        threshold, _, _, _ = self.settings()
        if msg.outcome == "success":
            scope.failures = 0
            if scope.state != "closed":
                self._move(scope, "closed")
        elif msg.outcome == "failure":
            if scope.state == "closed":
                scope.failures += 1
                if scope.failures >= threshold:
                    self._open(scope)
            elif scope.state == "half_open" and probe:
                scope.opens += 1
                self._open(scope)
        elif probe:
            self._grant_probes(scope)

    def _forget(self, msg: Forget) -> None:
        scope = self._scopes.get(msg.scope)
        if scope is None:
            return
        scope.waiters.pop(msg.op_id, None)
        if msg.op_id in scope.granted or msg.op_id in scope.in_flight:
            scope.granted.discard(msg.op_id)
            scope.in_flight.discard(msg.op_id)
            self._grant_probes(scope)

    def _states(self) -> list[BreakerState]:
        now, wall = trio.current_time(), time.time()
        return [
            BreakerState(
                scope=s.name, state=s.state, consecutive_failures=s.failures, opened_count=s.opens,
                half_open_at=(wall + max(0.0, s.until - now)) if s.state == "open" else None,
                waiting=len(s.waiters),
            )
            for s in sorted(self._scopes.values(), key=lambda s: s.name)
        ]

    # -- transitions ---------------------------------------------------------

    def _open(self, scope: _Scope) -> None:
        _, reset_s, _, max_delay_s = self.settings()
        scope.until = trio.current_time() + min(max_delay_s, reset_s * 2 ** min(scope.opens, 60))
        scope.granted.clear()
        self._move(scope, "open")

    def _expire(self) -> None:
        now = trio.current_time()
        for scope in self._scopes.values():
            if scope.state == "open" and scope.until <= now:
                scope.state = "half_open"
                self._grant_probes(scope, quiet=True)
                self._move(scope, "half_open", previous="open")

    def _grant_probes(self, scope: _Scope, *, quiet: bool = False) -> None:
        if scope.state != "half_open":
            return
        _, _, probes, _ = self.settings()
        for op_id in list(scope.waiters):
            if len(scope.in_flight) + len(scope.granted) >= probes:
                break
            if op_id not in scope.granted:
                scope.granted.add(op_id)
        if not quiet:
            self._wake(scope)

    def _wake(self, scope: _Scope) -> None:
        scope.wake.set()
        scope.wake = trio.Event()

    def _move(self, scope: _Scope, state: str, *, previous: str | None = None) -> None:
        previous = previous or scope.state
        scope.state = state
        if state == "closed":
            scope.opens = 0
            scope.failures = 0
            scope.waiters.clear()
            scope.granted.clear()
        elif state == "open":
            scope.failures = 0
        self._wake(scope)
        self.on_transition(scope.name, state, previous)
