"""Statistics (SPEC section 10): counted live, persisted, shown as one record."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Statistics", "StatsCounter"]


@attrs.frozen(kw_only=True)
class Statistics:
    """A snapshot of the engine's statistics."""

    total_operations: int = 0
    recovered_operations: int = 0
    failed_operations: int = 0
    average_recovery_time_s: float | None = None  # None while nothing has recovered
    retry_attempts: int = 0
    success_operations: int = 0
    active_operations: int = 0
    bytes_downloaded: int = 0
    bytes_discarded: int = 0
    errors_by_code: dict[str, int] = attrs.Factory(dict)
    breaker_trips: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["errors_by_code"] = dict(self.errors_by_code)
        return d


@attrs.define(eq=False)
class StatsCounter:
    """The mutable counters behind `Statistics`; persisted as a plain map."""

    total_operations: int = 0
    recovered_operations: int = 0
    failed_operations: int = 0
    recovery_time_total_s: float = 0.0
    retry_attempts: int = 0
    success_operations: int = 0
    bytes_downloaded: int = 0
    bytes_discarded: int = 0
    errors_by_code: dict[str, int] = attrs.Factory(dict)
    breaker_trips: int = 0

    def error(self, code: str) -> None:
        self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1

    def succeeded(self, recovery_time_s: float | None) -> None:
        self.success_operations += 1
        if recovery_time_s is not None:
            self.recovered_operations += 1
            self.recovery_time_total_s += max(0.0, recovery_time_s)

    def snapshot(self, active_operations: int, *, failed_now: int | None = None,
                 bytes_in_flight: int = 0) -> Statistics:
        """The record of SPEC 10. ``failed_now`` is how many operations are failed or
        exhausted at this moment (the persisted counter is all-time, for history);
        ``bytes_in_flight`` what running attempts received so far, so the figure
        moves during a transfer, not only when it ends."""
        avg = (round(self.recovery_time_total_s / self.recovered_operations, 3)
               if self.recovered_operations else None)
        return Statistics(
            total_operations=self.total_operations,
            recovered_operations=self.recovered_operations,
            failed_operations=self.failed_operations if failed_now is None else failed_now,
            average_recovery_time_s=avg,
            retry_attempts=self.retry_attempts,
            success_operations=self.success_operations,
            active_operations=active_operations,
            bytes_downloaded=self.bytes_downloaded + bytes_in_flight,
            bytes_discarded=self.bytes_discarded,
            errors_by_code=dict(self.errors_by_code),
            breaker_trips=self.breaker_trips,
        )

    def to_record(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> "StatsCounter":
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
