"""Backoff schedules and the retry decision they drive.

A `Backoff` answers "how long before retry n?"; a `RetryPolicy` adds the
budget ("is there a retry n at all?") and the server's own word
(`Retry-After`), which may only lengthen a wait, never shorten it.
"""

from __future__ import annotations

import random
from typing import Callable

import attrs

__all__ = ["Backoff", "GiveUp", "Retry", "RetryPolicy"]


def _non_negative(_inst: object, attribute: attrs.Attribute, value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Backoff:
    """Exponential backoff with multiplicative jitter and a cap.

    The delay before retry ``n`` (1-based) is
    ``min(max_delay_s, initial_delay_s * factor ** (n - 1))``, multiplied by
    ``uniform(1 - jitter, 1 + jitter)`` and capped again.
    """

    initial_delay_s: float = attrs.field(default=2.0, validator=_non_negative)
    factor: float = attrs.field(default=2.0)
    max_delay_s: float = attrs.field(default=300.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.1)

    @factor.validator
    def _check_factor(self, _attribute: attrs.Attribute, value: float) -> None:
        if value < 1:
            raise ValueError(f"factor must be >= 1, got {value!r}")

    @jitter.validator
    def _check_jitter(self, _attribute: attrs.Attribute, value: float) -> None:
        if not 0 <= value < 1:
            raise ValueError(f"jitter must be in [0, 1), got {value!r}")

    def base_delay_s(self, retry: int) -> float:
        """The un-jittered delay before retry ``retry`` (1-based)."""
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, got {retry}")
        # A huge retry number overflows the float power: its delay is the cap
        # (or 0 from a 0 start). float() keeps an int factor from building a huge int.
        try:
            raw = self.initial_delay_s * float(self.factor) ** (retry - 1)
        except OverflowError:
            raw = self.max_delay_s if self.initial_delay_s > 0 else 0.0
        return min(self.max_delay_s, raw)

    def delay_s(self, retry: int, *, uniform: Callable[[float, float], float] = random.uniform) -> float:
        """The jittered, capped delay before retry ``retry``."""
        base = self.base_delay_s(retry)
        if self.jitter:
            base *= uniform(1 - self.jitter, 1 + self.jitter)
        return min(self.max_delay_s, base)

    def with_floor(self, delay_s: float, floor_s: float | None) -> float:
        """Raise ``delay_s`` to at least ``floor_s`` (a server-requested delay), still capped."""
        if floor_s is None:
            return delay_s
        return min(self.max_delay_s, max(delay_s, floor_s))


@attrs.frozen
class Retry:
    """Decision: run again after ``delay_s``; this is retry number ``retry``."""

    retry: int
    delay_s: float


@attrs.frozen
class GiveUp:
    """Decision: do not run again. ``exhausted`` tells a spent budget from a hopeless failure."""

    exhausted: bool


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """A retry budget on top of a backoff schedule.

    ``decide`` is pure: the caller owns the counter, so it can keep it across a
    pause, reset it after progress, or refill it on a manual retry.
    """

    max_retries: int = 5
    backoff: Backoff = Backoff()

    def decide(
        self,
        retries_used: int,
        *,
        retryable: bool,
        floor_s: float | None = None,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> Retry | GiveUp:
        """What to do after a failure, given how many retries were already used."""
        if not retryable:
            return GiveUp(exhausted=False)
        if retries_used >= self.max_retries:
            return GiveUp(exhausted=True)
        n = retries_used + 1
        delay = self.backoff.with_floor(self.backoff.delay_s(n, uniform=uniform), floor_s)
        return Retry(retry=n, delay_s=delay)
