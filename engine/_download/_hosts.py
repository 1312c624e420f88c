"""Connections per host across every download of one engine (SPEC 6.2).

``max_connections_per_host`` bounds the *extra* connections of segmented
downloads to one host, all downloads together; a download's first
connection is its operation's own (``max_per_host`` counts those) and never
waits here. A host that refused an extra connection (403, 429 or 503 to a
second range) is remembered for the engine's lifetime: later downloads from
it open at most as many connections as it accepted.
"""

from __future__ import annotations

import logging

import attrs

__all__ = ["HostConnections"]

log = logging.getLogger("engine.download")


@attrs.define(eq=False)
class HostConnections:
    """Open extra connections and remembered limits, by breaker scope (host[:port])."""

    _open: dict[str, int] = attrs.Factory(dict)
    _limits: dict[str, int] = attrs.Factory(dict)

    def limit(self, host: str) -> int | None:
        """Connections per download this host accepted before refusing one; None: no refusal seen."""
        return self._limits.get(host)

    def refused(self, host: str, accepted: int) -> None:
        """The host refused a connection while ``accepted`` of one download were open."""
        accepted = max(1, accepted)
        if self._limits.get(host, accepted + 1) > accepted:
            log.info("%s refused an extra connection: at most %d per download from now on", host, accepted)
            self._limits[host] = accepted

    def open_extra(self, host: str, per_host: int) -> bool:
        """Count one more extra connection to ``host`` if that stays within ``per_host`` in all; else False."""
        # per_host counts every connection; each download's first one is not counted here,
        # so the extras may use what is left after at least one first connection.
        if self._open.get(host, 0) + 1 >= per_host:
            return False
        self._open[host] = self._open.get(host, 0) + 1
        return True

    def close_extra(self, host: str) -> None:
        left = self._open.get(host, 0) - 1
        if left > 0:
            self._open[host] = left
        else:
            self._open.pop(host, None)

    def open_extras(self, host: str) -> int:
        return self._open.get(host, 0)
