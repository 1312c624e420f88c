"""Rate and ETA over a recent window (SPEC section 2.1).

A transfer's rate is what arrived in the last few seconds, not an average
since the start (which would still show an outage long after it ended, or a
fast link as slow after one). When nothing has arrived for a whole window
the rate is 0 and the ETA unknown: displays call that "stalled".
"""

from __future__ import annotations

import collections

import attrs

__all__ = ["RateWindow", "WINDOW_S"]

WINDOW_S = 3.0


@attrs.define(eq=False)
class RateWindow:
    """Samples of (clock, bytes_done) from the last `WINDOW_S` seconds."""

    window_s: float = WINDOW_S
    _samples: collections.deque[tuple[float, int]] = attrs.Factory(collections.deque)

    def reset(self) -> None:
        self._samples.clear()

    def add(self, now: float, bytes_done: int) -> None:
        samples = self._samples
        if samples and bytes_done < samples[-1][1]:
            samples.clear()  # the file restarted from 0: old samples describe another transfer
        samples.append((now, bytes_done))
        while len(samples) > 2 and now - samples[1][0] >= self.window_s:
            samples.popleft()

    def rate(self, now: float) -> float:
        """Bytes per second over the window ending at ``now`` (0 when nothing moved in it)."""
        samples = self._samples
        if len(samples) < 2:
            return 0.0
        last_t, last_b = samples[-1]
        if now - last_t >= self.window_s:
            return 0.0  # nothing arrived in a whole window: stalled
        first_t, first_b = samples[0]
        span = max(now - first_t, 0.5)  # never a huge figure from two samples a moment apart
        return max(0.0, (last_b - first_b) / span)


def eta_s(rate_bps: float, bytes_done: int, bytes_total: int | None) -> float | None:
    """Seconds left at ``rate_bps``, or None when the rate or the total is unknown."""
    if bytes_total is None or rate_bps <= 0:
        return None
    return round(max(0, bytes_total - bytes_done) / rate_bps, 1)
