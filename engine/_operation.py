"""The per-operation actor: one reader of its mailbox, one worker.

The reader validates each control against the status (SPEC section 2.2)
and hands an accepted one to the worker as an *intent*, interrupting
whatever the worker is waiting on. The worker is the only writer of the
status: it applies intents, runs attempts, and decides retries with the
`supervisors.RetryPolicy`. Everything the worker awaits sits inside one
cancel scope (`_activity`) so an intent interrupts it at once.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Protocol

import attrs
import trio

from supervisors import Backoff, GiveUp, Mailbox, Request, RetryPolicy, open_mailbox

from ._breaker import BreakerActor, Go
from ._convert import converter
from ._errors import AttemptFailed, ErrorInfo, RefusedError, classify_exception, error
from ._kinds import CONTINUE, AttemptContext, Kind
from ._rate import RateWindow, eta_s
from ._model import TERMINAL, TRANSITIONS, Control, Operation, Status, check_transition, refuse_control
from ._events import EventBus
from ._history import History, Timeline
from ._scheduler import Scheduler
from ._settings import Settings
from ._stats import StatsCounter
from ._store import OpSnapshot

__all__ = ["OpActor", "OpServices"]

log = logging.getLogger("engine")

P, I, R, Z, S, F, X, C = (Status.PENDING, Status.IN_PROGRESS, Status.RECOVERING, Status.PAUSED,
                          Status.SUCCESS, Status.FAILED, Status.EXHAUSTED, Status.CANCELLED)

_PROGRESS_INTERVAL_S = 0.1  # at most 10 progress events per second per operation


class OpServices(Protocol):
    """What an operation actor needs from the engine that owns it.

    The engine hands every actor one object with these members; the actor
    knows nothing else of its owner (and imports nothing of it).
    """

    @property
    def settings(self) -> Settings: ...
    @property
    def stats(self) -> StatsCounter: ...
    @property
    def events(self) -> EventBus: ...
    @property
    def scheduler(self) -> Scheduler: ...
    @property
    def breaker(self) -> BreakerActor: ...
    @property
    def history(self) -> History: ...

    def make_context(self, op: "OpActor") -> AttemptContext:
        """The context for the operation's next attempt."""
    def account(self, ctx: AttemptContext) -> None:
        """Count what an attempt moved in the statistics."""
    def save(self, op: "OpActor") -> None:
        """Mark the operation's snapshot for the next batched write."""
    def delete_snapshot(self, op_id: str) -> None:
        """Remove a cancelled operation's snapshot."""
    def publish_status(self, op: "OpActor", previous: Status) -> None:
        """Send the ``status`` event for the operation's current status."""
    def status_changed(self, op: "OpActor", previous: Status) -> None:
        """React to a status change (event, statistics, history bookkeeping)."""


@attrs.define(eq=False)
class OpActor:
    """One operation: its record, its mailbox and its worker."""

    services: OpServices
    id: str
    kind: Kind
    spec: Any
    seq: int
    status: Status = P
    error: ErrorInfo | None = None
    retries: int = 0
    retries_total: int = 0
    integrity_retry_used: bool = False
    state: dict[str, Any] = attrs.Factory(dict)
    bytes_done: int = 0
    bytes_total: int | None = None
    rate_bps: float = 0.0
    eta_s: float | None = None
    created_at: float = attrs.Factory(time.time)
    updated_at: float = attrs.Factory(time.time)
    first_failure_at: float | None = None
    output_tail: list[str] = attrs.Factory(list)
    extra: dict[str, Any] = attrs.Factory(dict)
    next_retry_at: float | None = None
    resource: str | None = None
    last_failure: ErrorInfo | None = None  # the last attempt's error (not a breaker wait)
    timeline: Timeline = attrs.Factory(Timeline)  # SPEC 10.1, in the snapshot

    # runtime only
    _mailbox: Mailbox[Any] = attrs.Factory(open_mailbox)
    _intent: tuple[Control, Request[Any]] | None = None
    _intent_done: trio.Event = attrs.Factory(trio.Event)
    _activity_scope: trio.CancelScope | None = None
    _backoff_deadline: float | None = None  # trio time; set while waiting to retry
    _run_as: Status | None = None
    _bypass_breaker: bool = False
    _held_slot: Any = None
    _breaker_scope: str | None = None
    _last_progress_emit: float = -math.inf
    _emitted_step: tuple[Any, Any] = (None, None)
    _first_failure_clock: float | None = None  # trio time, exact under a mock clock
    _rate: RateWindow = attrs.Factory(RateWindow)
    _attempt_start_bytes: int | None = None  # set while an attempt that should prove progress runs
    changed: trio.Event = attrs.Factory(trio.Event)

    # -- views -----------------------------------------------------------------

    @property
    def address(self) -> Any:
        return self._mailbox.address

    def view(self) -> Operation:
        settings = self.services.settings
        rate, eta = self.rate_bps, self.eta_s
        if self.status is I:
            try:
                rate = self._rate.rate(trio.current_time())
            except RuntimeError:  # called outside trio: the last figure computed
                pass
            else:
                eta = eta_s(rate, self.bytes_done, self.bytes_total)
        return Operation(
            id=self.id, kind=self.kind.name, spec=self.kind.describe(self.spec), status=self.status,
            error=self.error, attempt=self.retries, max_retries=settings.max_retries,
            next_retry_at=self.next_retry_at if self.status is R else None,
            bytes_done=self.bytes_done, bytes_total=self.bytes_total, rate_bps=round(rate, 1),
            eta_s=eta, created_at=self.created_at, updated_at=self.updated_at,
            retries_total=self.retries_total, output_tail=list(self.output_tail),
            step=self.extra.get("step"), steps_done=self.extra.get("steps_done"),
            steps_total=self.extra.get("steps_total"), resource=self.resource,
            timeline=self.timeline.to_records(),
            last_error=self.last_failure,
            connections=self.extra.get("connections") if self.status is I else None,
        )

    def snapshot(self) -> OpSnapshot:
        return OpSnapshot(
            id=self.id, kind=self.kind.name, seq=self.seq, spec=converter.unstructure(self.spec),
            status=self.status.value, error=self.error.to_dict() if self.error else None,
            retries=self.retries, retries_total=self.retries_total,
            integrity_retry_used=self.integrity_retry_used, state=self.state,
            bytes_done=self.bytes_done, bytes_total=self.bytes_total, created_at=self.created_at,
            updated_at=self.updated_at, first_failure_at=self.first_failure_at,
            output_tail=self.output_tail[-200:], timeline=self.timeline.to_records(),
        )

    # -- status ------------------------------------------------------------------

    def _set_status(self, new: Status, *, error: ErrorInfo | None = None, keep_error: bool = False) -> None:
        old = self.status
        if new is old:
            return
        check_transition(old, new)
        self.status = new
        if error is not None:
            self.error = error
        elif not keep_error and new in (I, S, C):
            # a fresh attempt or the end: the old error no longer describes it.
            # Paused and pending keep it, so a resumed recovery still shows why.
            self.error = None
        self.updated_at = time.time()
        if new is not R:
            self.next_retry_at = None
        if new is not I:
            # waiting, paused or ended: nothing flows, so no old rate stays on show
            self.rate_bps, self.eta_s = 0.0, None
            self._rate.reset()
        self.services.status_changed(self, old)
        self.changed.set()
        self.changed = trio.Event()

    def save(self) -> None:
        """Have the snapshot written (batched and durable soon; see `SnapshotWriter`)."""
        self.services.save(self)

    # -- the actor ---------------------------------------------------------------

    async def run(self) -> None:
        """Reader and worker; returns when the operation is success or cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_mailbox, nursery.cancel_scope)
                try:
                    while True:
                        try:
                            await self._work()
                            break
                        except Exception as exc:  # noqa: BLE001 - a bug must not orphan the operation
                            self._crashed(exc)  # failed with E_INTERNAL; the worker parks again
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._mailbox.close()
            self._release_resources()

    async def _read_mailbox(self, _scope: trio.CancelScope) -> None:
        async for message in self._mailbox:
            if not isinstance(message, Request):
                continue
            control: Control = message.message
            try:
                noop = refuse_control(control, self.status, self.error)
            except RefusedError as exc:
                message.fail(exc)
                continue
            if noop:
                message.reply(self.view())
                continue
            self._intent = (control, message)
            self._intent_done = trio.Event()
            if self._activity_scope is not None:
                self._activity_scope.cancel()
            await self._intent_done.wait()

    async def _work(self) -> None:
        try:
            while True:
                if self._intent is not None:
                    self._apply_intent()
                if self.status in TERMINAL:
                    return
                with trio.CancelScope() as self._activity_scope:
                    if self._intent is not None:
                        continue
                    if self.status in (Z, F, X):
                        await trio.sleep_forever()
                    elif self.status is R and self._backoff_deadline is not None:
                        await trio.sleep_until(self._backoff_deadline)
                        self._backoff_deadline = None
                    else:
                        await self._attempt_cycle()
                self._activity_scope = None
        finally:
            self._activity_scope = None
            # Engine shutdown (or a bug): keep what is durable for the next start.
            if self.status not in TERMINAL:
                with trio.CancelScope(shield=True):
                    try:
                        self.save()
                    except OSError as exc:  # pragma: no cover - disk trouble at shutdown
                        log.error("op %s: could not write its final snapshot: %s", self.id, exc)

    def _crashed(self, exc: Exception) -> None:
        """The worker hit a bug: fail the operation with E_INTERNAL, keep its data and actor."""
        log.error("op %s: internal error in the engine: %r", self.id, exc, exc_info=exc)
        self._activity_scope = None
        self._backoff_deadline = None
        self._release_resources()
        failed = error("E_INTERNAL", f"internal error in the engine: {type(exc).__name__}: {exc}")
        if self.status is not F and (self.status, F) in TRANSITIONS:
            self._set_status(F, error=failed)
        elif self.status not in (F, X, Z):
            previous, self.status, self.error = self.status, F, failed  # no table row: say so loudly
            self.services.status_changed(self, previous)
        self.save()
        if self._intent is not None:
            _, request = self._intent
            self._intent = None
            request.fail(RefusedError("E_INTERNAL", f"internal error in the engine: {exc!r}"))
            self._intent_done.set()

    # -- intents (controls accepted by the reader) ---------------------------------

    def _apply_intent(self) -> None:
        assert self._intent is not None
        control, request = self._intent
        self._intent = None
        try:
            noop = refuse_control(control, self.status, self.error)  # it may have moved on
            if not noop:
                self._apply(control)
        except RefusedError as exc:
            request.fail(exc)
        except Exception as exc:  # pragma: no cover - a bug; keep the actor alive
            log.exception("op %s: applying %s failed", self.id, control.value)
            request.fail(RefusedError("E_INTERNAL", f"{control.value} failed: {exc!r}"))
        else:
            request.reply(self.view())
        finally:
            self._intent_done.set()

    def _apply(self, control: Control) -> None:
        stats = self.services.stats
        self._forget_breaker()
        self._backoff_deadline = None
        if control is Control.PAUSE:
            self._set_status(Z)
            self.save()
        elif control is Control.RESUME:
            self.timeline.plan("resume")
            self._set_status(P)
            self.save()
        elif control is Control.CANCEL:
            try:
                self.kind.discard(self.spec, self.state)
            except OSError as exc:
                log.warning("op %s: could not delete partial data: %s", self.id, exc)
            self.services.delete_snapshot(self.id)
            self._set_status(C)
        elif control is Control.CANCEL_RECOVERY:
            self._set_status(F, error=self.last_failure or self.error)
            stats.failed_operations += 1
            self.save()
        elif control in (Control.RETRY_NOW, Control.FORCE_RETRY):
            stats.retry_attempts += 1
            self.retries_total += 1
            self.timeline.plan(control.value)
            if control is Control.FORCE_RETRY:
                self._bypass_breaker = True
                self.integrity_retry_used = False
                self.retries = 0
            elif self.status in (F, X):
                self.retries = 0  # a fresh retry budget
            self._run_as = I
            if self.status is R:
                self._set_status(I)
            else:
                slot = self.services.scheduler.try_acquire(self._host())
                if slot is not None:
                    self._held_slot = slot
                    self._set_status(I)
                else:
                    self._set_status(P)
            self.save()
        log.info("op %s: %s -> %s", self.id, control.value, self.status.value)

    # -- attempts ------------------------------------------------------------------

    def _host(self) -> str | None:
        try:
            return self.kind.scope(self.spec, self.state)
        except Exception:  # noqa: BLE001 - a kind bug must not stop scheduling
            return None

    def _forget_breaker(self) -> None:
        if self._breaker_scope is not None:
            self.services.breaker.forget(self._breaker_scope, self.id)
            self._breaker_scope = None

    def _release_resources(self) -> None:
        self._forget_breaker()
        if self._held_slot is not None:
            self._held_slot.release()
            self._held_slot = None

    async def _attempt_cycle(self) -> None:
        services = self.services
        scope = self._host()
        # Slot first, then the breaker: an operation asks the breaker only when it
        # could really start, so reports of earlier attempts are always counted
        # before the next permit is decided.
        while True:
            slot = self._held_slot or await services.scheduler.acquire(scope)
            self._held_slot = None
            if scope is None:
                break
            self._breaker_scope = scope
            try:
                answer = await services.breaker.permit(scope, self.id, bypass=self._bypass_breaker)
            except BaseException:
                slot.release()
                raise
            if isinstance(answer, Go):
                break
            slot.release()
            wait_error = error("E_CIRCUIT_OPEN", f"the circuit breaker for {scope} is open; "
                               "waiting for it to let a probe through")
            changed = self.next_retry_at != answer.until_wall
            self.next_retry_at = answer.until_wall
            if self.status is not R:
                self._set_status(R, error=wait_error)
                self.save()
            elif changed or self.error is None or self.error.code != "E_CIRCUIT_OPEN":
                self._note_wait(wait_error)
            await answer.wake.wait()
        self._bypass_breaker = False
        ctx: AttemptContext | None = None
        outcome: AttemptFailed | None = None
        finished = continued = False
        try:
            run_as = self._run_as or (I if self.retries == 0 and self.status is not R else R)
            self._run_as = None
            if self.status is not run_as:
                self._set_status(run_as, keep_error=run_as is R)
            # A retry attempt is "recovering" until it makes progress (SPEC 2.1).
            self._attempt_start_bytes = self.bytes_done if self.status is R else None
            ctx = services.make_context(self)
            self.timeline.begin()
            services.history.attempt()
            try:
                if await self.kind.attempt(ctx) is CONTINUE:
                    continued = True
            except AttemptFailed as exc:
                outcome = exc
            except Exception as exc:  # noqa: BLE001 - the classification boundary
                outcome = classify_exception(exc)
                if outcome.error.code == "E_INTERNAL":
                    log.exception("op %s: attempt raised an unexpected error", self.id)
            finished = True
        finally:
            if scope is not None:
                if finished:
                    # reported before the slot frees, so the next permit sees it
                    services.breaker.report(scope, self.id, _breaker_outcome(outcome, ctx))
                else:
                    services.breaker.forget(scope, self.id)  # cancelled: give a probe back
                self._breaker_scope = None
            slot.release()
            if ctx is not None:
                services.account(ctx)
                self._record_attempt(ctx, outcome, finished, continued)
        if continued and outcome is None:
            self.save()  # the next attempt starts at once, through slot and breaker again
        elif outcome is None:
            self._succeeded()
        else:
            self._failed(outcome, ctx)

    def _record_attempt(self, ctx: AttemptContext, outcome: AttemptFailed | None, finished: bool,
                        continued: bool) -> None:
        how = ("interrupted" if not finished else "failed" if outcome is not None
               else "continue" if continued else "success")
        connections = self.extra.get("connections", 1 if self.kind.name == "download" else None)
        self.timeline.end(how, code=outcome.error.code if outcome is not None else None,
                          bytes_received=ctx.bytes_received, connections=connections)
        self.services.history.received(ctx.bytes_received)

    def _note_wait(self, wait_error: ErrorInfo) -> None:
        self.error = wait_error
        self.updated_at = time.time()
        self.services.publish_status(self, self.status)

    def _succeeded(self) -> None:
        recovery_s: float | None = None
        if self.retries_total and self._first_failure_clock is not None:
            recovery_s = trio.current_time() - self._first_failure_clock
        elif self.retries_total and self.first_failure_at is not None:
            recovery_s = time.time() - self.first_failure_at  # the failure was before a restart
        self.services.stats.succeeded(recovery_s)
        if recovery_s is not None:
            self.services.history.recovery(recovery_s)
        self.rate_bps, self.eta_s = 0.0, None
        self._set_status(S)
        self.save()
        log.info("op %s: succeeded%s", self.id,
                 f" after {self.retries_total} retries (recovered)" if self.retries_total else "")

    def _failed(self, outcome: AttemptFailed, ctx: AttemptContext | None) -> None:
        services = self.services
        settings = services.settings
        err = outcome.error
        self.last_failure = err
        services.stats.error(err.code)
        services.history.failure(err.code, self._host())
        if self.first_failure_at is None:
            self.first_failure_at = time.time()
            self._first_failure_clock = trio.current_time()
        if ctx is not None and settings.progress_reset_bytes and ctx.durable_bytes >= settings.progress_reset_bytes:
            self.retries = 0
        retryable = err.retryable
        if err.code == "E_INTEGRITY":
            retryable = not self.integrity_retry_used
            self.integrity_retry_used = True
        policy = RetryPolicy(
            max_retries=settings.max_retries,
            backoff=Backoff(initial_delay_s=settings.initial_delay_s, factor=settings.backoff_factor,
                            max_delay_s=settings.max_delay_s, jitter=settings.jitter),
        )
        decision = policy.decide(self.retries, retryable=retryable, floor_s=outcome.retry_after_s)
        if isinstance(decision, GiveUp):
            services.stats.failed_operations += 1
            final = X if decision.exhausted else F
            self._set_status(final, error=err)
            self.save()
            log.warning("op %s: %s with %s (%s): %s", self.id, final.value, err.code,
                        f"Attempt {self.retries}/{settings.max_retries}" if self.retries else "not retried",
                        err.message)
            return
        self.retries = decision.retry
        self.retries_total += 1
        services.stats.retry_attempts += 1
        self._backoff_deadline = trio.current_time() + decision.delay_s
        self.timeline.plan("automatic", decision.delay_s)
        next_retry_at = time.time() + decision.delay_s
        self.next_retry_at = next_retry_at
        if self.status is R:
            self.error = err
            self.updated_at = time.time()
            services.publish_status(self, R)
        else:
            self._set_status(R, error=err)
        self.next_retry_at = next_retry_at
        self.save()
        services.events.publish(
            "retry_scheduled", self.id, attempt=decision.retry, max_retries=settings.max_retries,
            delay_s=round(decision.delay_s, 3), next_retry_at=self.next_retry_at, error=err.to_dict(),
        )
        log.warning("op %s: Attempt %d/%d in %.1fs after %s: %s", self.id, decision.retry,
                    settings.max_retries, decision.delay_s, err.code, err.message)

    # -- callbacks from the attempt context ------------------------------------------

    def on_progress(self, bytes_done: int, bytes_total: int | None, extra: dict[str, Any]) -> None:
        now = trio.current_time()
        start = self._attempt_start_bytes
        self.bytes_done, self.bytes_total = bytes_done, bytes_total
        if extra:
            self.extra.update(extra)
        if self.status is R and start is not None and (
                bytes_done > start or ("step" in extra and self.kind.name != "download")):
            # The retry is flowing again: in_progress, the attempt counter kept,
            # the failure it recovered from readable as last_error (SPEC 2.1).
            self._attempt_start_bytes = None
            self._set_status(I)
            log.info("op %s: recovering -> in_progress: Attempt %d/%d is making progress",
                     self.id, self.retries, self.services.settings.max_retries)
        self._rate.add(now, bytes_done)
        self.rate_bps = self._rate.rate(now)
        self.eta_s = eta_s(self.rate_bps, bytes_done, bytes_total)
        # A project's move to another step is always published (not throttled
        # away), so a display never shows a finished step as the running one.
        step = (self.extra.get("step"), self.extra.get("steps_done"))
        if now - self._last_progress_emit >= _PROGRESS_INTERVAL_S or step != self._emitted_step:
            self._last_progress_emit = now
            self._emitted_step = step
            self.services.events.publish(
                "progress", self.id, bytes_done=bytes_done, bytes_total=bytes_total,
                rate_bps=round(self.rate_bps, 1), eta_s=self.eta_s, **self.extra,
            )


def _breaker_outcome(outcome: AttemptFailed | None, ctx: AttemptContext | None) -> str:
    """Only retry-worthy failures of attempts that moved no data count (SPEC section 5)."""
    if outcome is None or (ctx is not None and ctx.bytes_received > 0):
        return "success"
    if outcome.error.retryable and outcome.error.code not in ("E_INTEGRITY", "E_CIRCUIT_OPEN"):
        return "failure"
    return "neutral"

