"""Receive-rate limits: one token bucket per scope, shared by every connection in it (SPEC 6.2).

Two scopes exist: the engine (``max_download_rate_bps``, one bucket the
download kind owns) and one download (``DownloadSpec.rate_limit_bps``).
A connection takes tokens for the bytes it has just read, before it reads
more; a bucket in debt makes it wait, so the socket's receive window fills
and the server slows down. The rate is read again at every wait (at least
every `_RECHECK_S`), so a live settings change applies within a second, and
0 (unlimited) releases every waiter at once.
"""

from __future__ import annotations

from typing import Callable

import attrs
import trio

__all__ = ["TokenBucket", "read_size", "receive_buffer", "take_all", "tightest"]

_BURST_S = 0.1  # a bucket may hold this many seconds of tokens (a burst after idling)
_RECHECK_S = 0.25
_MIN_WAIT_S = 0.001  # a clock may not move for a shorter sleep


@attrs.define(eq=False)
class TokenBucket:
    """Bytes per second from ``rate_bps()`` (0 or less: unlimited), shared by all its takers."""

    rate_bps: Callable[[], float]
    _tokens: float = 0.0
    _last: float | None = None
    #: how many times a taker had to wait: the limit, not the network, set the pace
    waits: int = 0
    #: takers waiting now
    waiting: int = 0

    @property
    def limited(self) -> bool:
        return self.rate_bps() > 0

    def _refill(self, rate: float) -> None:
        now = trio.current_time()
        if self._last is not None:
            self._tokens = min(rate * _BURST_S, self._tokens + (now - self._last) * rate)
        self._last = now

    async def take(self, nbytes: int) -> None:
        """Account ``nbytes`` just received; wait while the bucket is in debt."""
        rate = self.rate_bps()
        if rate <= 0:
            self._tokens, self._last = 0.0, None
            await trio.lowlevel.checkpoint()
            return
        self._refill(rate)
        self._tokens -= nbytes
        if self._tokens < -0.5:
            self.waits += 1
        self.waiting += 1
        try:
            while self._tokens < -0.5:  # less than a byte of debt is float rounding, not debt
                await trio.sleep(max(_MIN_WAIT_S, min(-self._tokens / rate, _RECHECK_S)))
                rate = self.rate_bps()
                if rate <= 0:
                    self._tokens, self._last = 0.0, None
                    return
                self._refill(rate)
        finally:
            self.waiting -= 1


async def take_all(buckets: tuple[TokenBucket, ...], nbytes: int) -> None:
    """Take ``nbytes`` from every bucket that limits (no await at all when none does)."""
    for bucket in buckets:
        if bucket.limited:
            await bucket.take(nbytes)


def tightest(buckets: tuple[TokenBucket, ...]) -> float | None:
    """The lowest rate that limits now, or None."""
    limits = [b.rate_bps() for b in buckets if b.limited]
    return min(limits) if limits else None


def read_size(buckets: tuple[TokenBucket, ...], largest: int) -> int:
    """Bytes to read from a socket at once: 20 ms at the tightest limit, at most ``largest``.

    Every connection may run the shared bucket one read into debt, so small
    reads keep what a window lets through close to the limit.
    """
    limit = tightest(buckets)
    if limit is None:
        return largest
    return max(16 * 1024, min(largest, int(limit / 50)))


def receive_buffer(buckets: tuple[TokenBucket, ...]) -> int | None:
    """The socket receive buffer for a rate-limited connection: a tenth of a second at the limit.

    The kernel doubles it, so one connection still reaches the limit over a
    200 ms round trip (several share it), while the kernel never takes
    megabytes ahead of the bucket; None when unlimited.
    """
    limit = tightest(buckets)
    return None if limit is None else max(64 * 1024, int(limit / 10))
