"""What happened, kept for later (SPEC section 10.1): attempt timelines and hourly history.

Two records live here:

- an operation's **attempt timeline**: one `AttemptRecord` per attempt (the
  last `TIMELINE_LIMIT`), saying what started it (`TRIGGERS`), when it
  started and ended, the bytes it moved, its connections, its error code and
  the delay that was waited before it. It is written into the operation's
  snapshot, so it survives restarts;
- the engine's **history**: hourly `HistoryBucket` counters for the last
  `HISTORY_DAYS` days (attempts, failures by code and by host, recoveries,
  recovery time, bytes received) plus all-time failure counters for
  Prometheus. It is persisted beside the statistics (``stats.msgpack``),
  written by the same periodic flush: counting an event costs a dict update,
  never an fsync.

Timestamps are wall-clock Unix seconds; a bucket is keyed by the start of
its hour.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import attrs

__all__ = [
    "HISTORY_DAYS",
    "TIMELINE_LIMIT",
    "TRIGGERS",
    "AttemptRecord",
    "History",
    "HistoryBucket",
    "Timeline",
    "summarize",
]

#: The attempts an operation's timeline keeps (oldest dropped first).
TIMELINE_LIMIT = 50
#: How long hourly buckets are kept.
HISTORY_DAYS = 30
_HOUR_S = 3600
_MAX_HOURS = HISTORY_DAYS * 24

#: What started an attempt: the first start, an automatic retry after its
#: backoff, the user's retry now / force retry, or a resume (after pause or restart).
TRIGGERS = ("submit", "automatic", "retry_now", "force_retry", "resume")

#: How an attempt ended: ``continue`` is a project's step boundary,
#: ``interrupted`` a pause, cancel or shutdown while it ran.
OUTCOMES = ("success", "failed", "continue", "interrupted")


@attrs.frozen(kw_only=True)
class AttemptRecord:
    """One attempt of one operation."""

    number: int
    trigger: str
    started_at: float
    delay_s: float = 0.0
    ended_at: float | None = None
    outcome: str | None = None
    code: str | None = None
    bytes_received: int = 0
    connections: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AttemptRecord":
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@attrs.define(eq=False)
class Timeline:
    """An operation's attempts, bounded; the next attempt's trigger and delay wait here."""

    entries: list[AttemptRecord] = attrs.Factory(list)
    next_trigger: str = "submit"
    next_delay_s: float = 0.0

    def plan(self, trigger: str, delay_s: float = 0.0) -> None:
        """Say what will start the next attempt (the latest word wins)."""
        assert trigger in TRIGGERS, trigger
        self.next_trigger, self.next_delay_s = trigger, delay_s

    def begin(self, now: float | None = None) -> AttemptRecord:
        number = self.entries[-1].number + 1 if self.entries else 1
        record = AttemptRecord(number=number, trigger=self.next_trigger, started_at=_now(now),
                               delay_s=round(self.next_delay_s, 3))
        self.entries.append(record)
        del self.entries[:-TIMELINE_LIMIT]
        # Whatever runs next without a new word from the user is automatic
        # (a project's next step after a CONTINUE, a restart is planned as resume).
        self.next_trigger, self.next_delay_s = "automatic", 0.0
        return record

    def end(self, outcome: str, *, code: str | None, bytes_received: int, connections: int | None,
            now: float | None = None) -> None:
        if not self.entries or self.entries[-1].ended_at is not None:
            return
        self.entries[-1] = attrs.evolve(self.entries[-1], ended_at=_now(now), outcome=outcome, code=code,
                                        bytes_received=bytes_received, connections=connections)

    def to_records(self) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.entries]

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]] | None) -> "Timeline":
        """Load a snapshot's timeline; an attempt cut short by a crash is closed as interrupted."""
        entries = [AttemptRecord.from_dict(r) for r in (records or ()) if isinstance(r, dict)]
        entries = [e if e.ended_at is not None else attrs.evolve(e, outcome="interrupted")
                   for e in entries[-TIMELINE_LIMIT:]]
        return cls(entries, next_trigger="resume" if entries else "submit")


@attrs.frozen(kw_only=True)
class HistoryBucket:
    """The counters of one hour (``hour`` = its start, Unix seconds)."""

    hour: int
    attempts: int = 0
    failures: int = 0
    failures_by_code: dict[str, int] = attrs.Factory(dict)
    failures_by_host: dict[str, int] = attrs.Factory(dict)
    recoveries: int = 0
    recovery_time_s: float = 0.0
    bytes_received: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["recovery_time_s"] = round(self.recovery_time_s, 3)
        return d


@attrs.define(eq=False)
class _Hour:
    attempts: int = 0
    failures_by_code: dict[str, int] = attrs.Factory(dict)
    failures_by_host: dict[str, int] = attrs.Factory(dict)
    recoveries: int = 0
    recovery_time_s: float = 0.0
    bytes_received: int = 0


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _hour_of(ts: float) -> int:
    return int(ts // _HOUR_S) * _HOUR_S


@attrs.define(eq=False)
class History:
    """Hourly counters for `HISTORY_DAYS` days, plus all-time failure counters."""

    _hours: dict[int, _Hour] = attrs.Factory(dict)
    #: all time, for Prometheus counters that never go down: (code, host) -> failures
    failures_total: dict[tuple[str, str], int] = attrs.Factory(dict)
    attempts_total: int = 0
    recoveries_total: int = 0
    dirty: bool = False

    def _bucket(self, now: float | None) -> _Hour:
        ts = _now(now)
        key = _hour_of(ts)
        hour = self._hours.get(key)
        if hour is None:
            hour = self._hours[key] = _Hour()
            oldest = key - (_MAX_HOURS - 1) * _HOUR_S
            for old in [k for k in self._hours if k < oldest]:
                del self._hours[old]
        self.dirty = True
        return hour

    def attempt(self, now: float | None = None) -> None:
        self._bucket(now).attempts += 1
        self.attempts_total += 1

    def failure(self, code: str, host: str | None, now: float | None = None) -> None:
        hour = self._bucket(now)
        host = host or "local"
        hour.failures_by_code[code] = hour.failures_by_code.get(code, 0) + 1
        hour.failures_by_host[host] = hour.failures_by_host.get(host, 0) + 1
        self.failures_total[(code, host)] = self.failures_total.get((code, host), 0) + 1

    def recovery(self, seconds: float, now: float | None = None) -> None:
        hour = self._bucket(now)
        hour.recoveries += 1
        hour.recovery_time_s += max(0.0, seconds)
        self.recoveries_total += 1

    def received(self, nbytes: int, now: float | None = None) -> None:
        if nbytes > 0:
            self._bucket(now).bytes_received += nbytes

    def buckets(self, hours: int = 24, now: float | None = None) -> list[HistoryBucket]:
        """The last ``hours`` hours (1..720), oldest first, one bucket per hour (empty ones too)."""
        hours = max(1, min(_MAX_HOURS, int(hours)))
        last = _hour_of(_now(now))
        out = []
        for key in range(last - (hours - 1) * _HOUR_S, last + 1, _HOUR_S):
            h = self._hours.get(key)
            if h is None:
                out.append(HistoryBucket(hour=key))
                continue
            out.append(HistoryBucket(
                hour=key, attempts=h.attempts, failures=sum(h.failures_by_code.values()),
                failures_by_code=dict(h.failures_by_code), failures_by_host=dict(h.failures_by_host),
                recoveries=h.recoveries, recovery_time_s=h.recovery_time_s, bytes_received=h.bytes_received,
            ))
        return out

    def to_record(self) -> dict[str, Any]:
        return {
            "hours": {str(k): attrs.asdict(v) for k, v in self._hours.items()},
            "failures_total": [[code, host, n] for (code, host), n in self.failures_total.items()],
            "attempts_total": self.attempts_total,
            "recoveries_total": self.recoveries_total,
        }

    @classmethod
    def from_record(cls, data: Any) -> "History":
        """Load what `to_record` wrote; anything unreadable starts an empty history."""
        history = cls()
        if not isinstance(data, dict):
            return history
        try:
            names = {f.name for f in attrs.fields(_Hour)}
            for key, value in (data.get("hours") or {}).items():
                history._hours[int(key)] = _Hour(**{k: v for k, v in value.items() if k in names})
            for code, host, n in data.get("failures_total") or ():
                history.failures_total[(str(code), str(host))] = int(n)
            history.attempts_total = int(data.get("attempts_total", 0))
            history.recoveries_total = int(data.get("recoveries_total", 0))
        except (TypeError, ValueError, AttributeError):
            return cls()
        return history


def summarize(buckets: Iterable[HistoryBucket]) -> dict[str, Any]:
    """Totals over ``buckets`` (for ``recovery history`` and the report)."""
    by_code: dict[str, int] = {}
    by_host: dict[str, int] = {}
    total = {"attempts": 0, "failures": 0, "recoveries": 0, "recovery_time_s": 0.0, "bytes_received": 0}
    for b in buckets:
        total["attempts"] += b.attempts
        total["failures"] += b.failures
        total["recoveries"] += b.recoveries
        total["recovery_time_s"] += b.recovery_time_s
        total["bytes_received"] += b.bytes_received
        for code, n in b.failures_by_code.items():
            by_code[code] = by_code.get(code, 0) + n
        for host, n in b.failures_by_host.items():
            by_host[host] = by_host.get(host, 0) + n
    total["recovery_time_s"] = round(total["recovery_time_s"], 3)
    return {**total, "failures_by_code": by_code, "failures_by_host": by_host}
