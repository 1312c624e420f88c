"""``GET /metrics``: the statistics of SPEC section 10 in Prometheus text format.

A custom collector reads one consistent set of values per scrape (statistics,
operations by status, breaker states) from the engine's public API; nothing
is counted twice or kept in a second place that could drift.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator, Mapping, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .._breaker import BreakerState
from .._model import Operation, Status
from .._stats import Statistics

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
_BREAKER_STATES = ("closed", "open", "half_open")


class _EngineCollector(Collector):
    def __init__(self, stats: Statistics, operations: Sequence[Operation],
                 breakers: Sequence[BreakerState], failures: Mapping[tuple[str, str], int]) -> None:
        self._failures = failures
        self._stats = stats
        self._operations = operations
        self._breakers = breakers

    def collect(self) -> Iterator[Any]:
        s = self._stats
        counters = (
            ("recovery_operations", "Operations submitted", s.total_operations),
            ("recovery_recovered_operations", "Operations that succeeded after at least one retry",
             s.recovered_operations),
            ("recovery_failed_operations", "Operations that ended failed or exhausted", s.failed_operations),
            ("recovery_success_operations", "Operations that succeeded", s.success_operations),
            ("recovery_retry_attempts", "Automatic and manual retries", s.retry_attempts),
            ("recovery_downloaded_bytes", "Bytes received from the network", s.bytes_downloaded),
            ("recovery_discarded_bytes", "Bytes received and thrown away (restarts, integrity)",
             s.bytes_discarded),
            ("recovery_breaker_trips", "Times a circuit breaker opened", s.breaker_trips),
        )
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)
        errors = CounterMetricFamily("recovery_errors", "Failures by error code", labels=["code"])
        for code, count in sorted(s.errors_by_code.items()):
            errors.add_metric([code], count)
        yield errors
        by_host = CounterMetricFamily("recovery_failures", "Failed attempts by error code and host (SPEC 10.1)",
                                      labels=["code", "host"])
        for (code, host), count in sorted(self._failures.items()):
            by_host.add_metric([code, host], count)
        yield by_host
        yield GaugeMetricFamily("recovery_active_operations", "Operations pending, in progress or recovering",
                                value=s.active_operations)
        yield GaugeMetricFamily("recovery_average_recovery_time_seconds",
                                "Mean time from first failure to success over recovered operations",
                                value=s.average_recovery_time_s or 0.0)
        by_status = Counter(op.status for op in self._operations)
        statuses = GaugeMetricFamily("recovery_operations_by_status", "Known operations by status",
                                     labels=["status"])
        for status in Status:
            statuses.add_metric([status.value], by_status.get(status, 0))
        yield statuses
        breaker = GaugeMetricFamily("recovery_breaker_state", "1 for the state each breaker scope is in",
                                    labels=["scope", "state"])
        failures = GaugeMetricFamily("recovery_breaker_consecutive_failures",
                                     "Consecutive counted failures per breaker scope", labels=["scope"])
        for b in self._breakers:
            for state in _BREAKER_STATES:
                breaker.add_metric([b.scope, state], 1.0 if b.state == state else 0.0)
            failures.add_metric([b.scope], b.consecutive_failures)
        yield breaker
        yield failures


def render_metrics(stats: Statistics, operations: Sequence[Operation],
                   breakers: Sequence[BreakerState],
                   failures: Mapping[tuple[str, str], int] | None = None) -> bytes:
    """The exposition text for one scrape (``failures``: all-time counts by (code, host))."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_EngineCollector(stats, operations, breakers, failures or {}))
    return generate_latest(registry)
