"""Statuses, the transition table, the controls table and the operation record.

Every status change in the engine goes through `check_transition`, and the
only legal changes are the rows of `TRANSITIONS` (SPEC section 2.1), so an
illegal transition cannot be written by accident: it raises at once.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from ._errors import ErrorInfo, RefusedError

__all__ = [
    "CONTROLS",
    "Control",
    "Operation",
    "Status",
    "TERMINAL",
    "TRANSITIONS",
    "check_transition",
    "refuse_control",
]


class Status(str, enum.Enum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    RECOVERING = "recovering"
    PAUSED = "paused"
    SUCCESS = "success"
    FAILED = "failed"
    EXHAUSTED = "exhausted"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


P, I, R, Z, S, F, X, C = (Status.PENDING, Status.IN_PROGRESS, Status.RECOVERING, Status.PAUSED,
                          Status.SUCCESS, Status.FAILED, Status.EXHAUSTED, Status.CANCELLED)

TERMINAL = frozenset({S, C})
# Statuses that hold a concurrency slot's worth of intent: the engine works on them.
ACTIVE = frozenset({P, I, R})
# A finished operation keeps its snapshot as history (SPEC section 8).
FINISHED = frozenset({S, F, X})

#: (from, to) -> why this edge exists.
TRANSITIONS: dict[tuple[Status, Status], str] = {
    (P, I): "a slot was granted and the first attempt starts",
    (P, R): "the scope's breaker is open, or a resumed operation continues its recovery",
    (P, Z): "pause",
    (P, C): "cancel",
    (I, S): "the attempt succeeded and was verified",
    (I, R): "a retry-worthy failure; an automatic retry is scheduled",
    (I, F): "a failure automatic retry cannot fix",
    (I, X): "a retry-worthy failure with no retries configured",
    (I, Z): "pause",
    (I, C): "cancel",
    (I, P): "engine restart: an interrupted attempt is queued again",
    (R, I): "retry_now / force_retry, or a retry made enough progress to reset the counter",
    (R, S): "a retry succeeded",
    (R, F): "cancel_recovery, or a retry hit a failure automatic retry cannot fix",
    (R, X): "every automatic retry was used",
    (R, Z): "pause",
    (R, C): "cancel",
    (R, P): "engine restart: a recovering operation is queued again",
    (Z, P): "resume",
    (Z, C): "cancel",
    (F, I): "retry_now / force_retry with a free slot",
    (F, P): "retry_now / force_retry waiting for a slot",
    (F, C): "cancel",
    (X, I): "retry_now / force_retry with a free slot",
    (X, P): "retry_now / force_retry waiting for a slot",
    (X, C): "cancel",
}


class Control(str, enum.Enum):
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    RETRY_NOW = "retry_now"
    FORCE_RETRY = "force_retry"
    CANCEL_RECOVERY = "cancel_recovery"


#: control -> statuses it applies to (SPEC section 2.2).
CONTROLS: dict[Control, frozenset[Status]] = {
    Control.PAUSE: frozenset({P, I, R}),
    Control.RESUME: frozenset({Z}),
    Control.CANCEL: frozenset({P, I, R, Z, F, X}),
    Control.RETRY_NOW: frozenset({R, X, F}),
    Control.FORCE_RETRY: frozenset({R, F, X}),
    Control.CANCEL_RECOVERY: frozenset({R}),
}

#: control -> statuses where it is accepted as a no-op (idempotence).
IDEMPOTENT: dict[Control, frozenset[Status]] = {
    Control.PAUSE: frozenset({Z}),
    Control.RESUME: frozenset({P, I, R}),
    Control.CANCEL: frozenset({C}),
}


def check_transition(old: Status, new: Status) -> None:
    """Raise `RuntimeError` for a change that is not a row of `TRANSITIONS`."""
    if (old, new) not in TRANSITIONS:
        raise RuntimeError(f"illegal status transition {old.value} -> {new.value}")


def refuse_control(control: Control, status: Status, last_error: ErrorInfo | None) -> bool:
    """Validate ``control`` against ``status``; True means "accept as a no-op".

    Raises `RefusedError` with ``E_INVALID_STATE`` (naming the status) or
    ``E_NOT_RETRYABLE`` (pointing to force_retry).
    """
    if status in IDEMPOTENT.get(control, ()):
        return True
    if status not in CONTROLS[control]:
        allowed = ", ".join(sorted(s.value for s in CONTROLS[control]))
        raise RefusedError(
            "E_INVALID_STATE",
            f"cannot {control.value.replace('_', ' ')} an operation that is {status.value} "
            f"(allowed from: {allowed})",
        )
    if control is Control.RETRY_NOW and status is F and (last_error is None or not last_error.retryable):
        code = last_error.code if last_error else "unknown"
        raise RefusedError(
            "E_NOT_RETRYABLE",
            f"the last error ({code}) is not retry-worthy; use force_retry to try anyway",
        )
    return False


@attrs.frozen(kw_only=True)
class Operation:
    """A read-only view of one operation, as the API, events and CLI show it."""

    id: str
    kind: str
    spec: dict[str, Any]
    status: Status
    error: ErrorInfo | None = None
    attempt: int = 0
    max_retries: int = 0
    next_retry_at: float | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    rate_bps: float = 0.0
    eta_s: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    retries_total: int = 0
    output_tail: list[str] = attrs.Factory(list)
    step: int | None = None
    steps_done: int | None = None
    steps_total: int | None = None
    resource: str | None = None
    timeline: list[dict[str, Any]] = attrs.Factory(list)  # attempts, SPEC 10.1
    #: the failure the last retry recovered from (kept after the operation flows again)
    last_error: ErrorInfo | None = None
    #: connections a download has open now (SPEC 6.2), as its last progress report said (None before one)
    connections: int | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def settled(self) -> bool:
        """True when nothing more happens without a user: success, cancelled, failed, exhausted."""
        return self.status in (S, C, F, X)

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self, recurse=False)
        d["status"] = self.status.value
        d["error"] = self.error.to_dict() if self.error else None
        d["last_error"] = self.last_error.to_dict() if self.last_error else None
        d["output_tail"] = list(self.output_tail)
        d["timeline"] = [dict(t) for t in self.timeline]
        return d
