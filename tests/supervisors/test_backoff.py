"""Backoff schedules and the retry decisions of `RetryPolicy` (SPEC section 3)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisors import Backoff, GiveUp, Retry, RetryPolicy


def _low(lo: float, hi: float) -> float:
    return lo


def _high(lo: float, hi: float) -> float:
    return hi


def _mid(lo: float, hi: float) -> float:
    return (lo + hi) / 2


# -- Backoff -------------------------------------------------------------------------


def test_defaults_match_spec() -> None:
    """The default schedule is SPEC section 3's: 2 s, factor 2, cap 300 s, jitter 0.1."""
    b = Backoff()
    assert (b.initial_delay_s, b.factor, b.max_delay_s, b.jitter) == (2.0, 2.0, 300.0, 0.1)


def test_default_base_delays_double() -> None:
    """Without jitter the default delays before retries 1..5 are 2, 4, 8, 16, 32 seconds."""
    b = Backoff()
    assert [b.base_delay_s(n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 16.0, 32.0]


@pytest.mark.parametrize(("retry", "base"), [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 32.0)])
def test_default_jittered_delays_stay_in_band(retry: int, base: float) -> None:
    """Real random jitter keeps every default delay within +-10% of its base."""
    b = Backoff()
    for _ in range(500):
        assert base * 0.9 <= b.delay_s(retry) <= base * 1.1


@pytest.mark.parametrize(("retry", "base"), [(1, 2.0), (3, 8.0), (5, 32.0)])
def test_jitter_band_edges_are_reached(retry: int, base: float) -> None:
    """The jitter factor is drawn from exactly [1 - jitter, 1 + jitter]."""
    b = Backoff()
    assert b.delay_s(retry, uniform=_low) == pytest.approx(base * 0.9)
    assert b.delay_s(retry, uniform=_high) == pytest.approx(base * 1.1)
    assert b.delay_s(retry, uniform=_mid) == pytest.approx(base)


def test_uniform_receives_jitter_bounds() -> None:
    """`delay_s` asks the random source for uniform(1 - jitter, 1 + jitter)."""
    seen: list[tuple[float, float]] = []

    def spy(lo: float, hi: float) -> float:
        seen.append((lo, hi))
        return 1.0

    Backoff(jitter=0.25).delay_s(1, uniform=spy)
    assert seen == [(0.75, 1.25)]


def test_zero_jitter_is_deterministic_and_skips_randomness() -> None:
    """With jitter 0 the delay is the base delay and no random number is drawn."""

    def boom(lo: float, hi: float) -> float:
        raise AssertionError("uniform must not be called without jitter")

    b = Backoff(jitter=0)
    assert [b.delay_s(n, uniform=boom) for n in range(1, 6)] == [2.0, 4.0, 8.0, 16.0, 32.0]


def test_delays_reach_the_300s_cap_and_stay_there() -> None:
    """From retry 9 (2 * 2**8 = 512 s) the default base delay is capped at 300 s."""
    b = Backoff()
    assert b.base_delay_s(8) == 256.0
    assert b.base_delay_s(9) == 300.0
    assert all(b.base_delay_s(n) == 300.0 for n in range(9, 60))


def test_jitter_never_exceeds_the_cap() -> None:
    """Upward jitter on a capped delay is cut back to max_delay_s; downward jitter still applies."""
    b = Backoff()
    assert b.delay_s(20, uniform=_high) == 300.0
    assert b.delay_s(20, uniform=_low) == pytest.approx(270.0)
    # Just below the cap: 256 * 1.1 = 281.6 is under 300, so it stands.
    assert b.delay_s(8, uniform=_high) == pytest.approx(281.6)


def test_huge_retry_numbers_do_not_overflow() -> None:
    """A retry number whose power overflows a float still gives the cap."""
    b = Backoff()
    assert b.base_delay_s(10_000) == 300.0
    assert b.delay_s(10**9, uniform=_high) == 300.0


def test_huge_retry_number_with_int_settings_is_capped_quickly() -> None:
    """An int factor does not build a giant int for a huge retry number: it is the cap."""
    b = Backoff(initial_delay_s=2, factor=2, max_delay_s=300)
    assert b.base_delay_s(10**12) == 300


def test_zero_initial_delay_stays_zero_for_every_retry() -> None:
    """A 0 s start means no wait at all, even once the power overflows."""
    b = Backoff(initial_delay_s=0.0)
    assert b.base_delay_s(1) == 0.0
    assert b.base_delay_s(5_000) == 0.0
    assert b.delay_s(5_000, uniform=_high) == 0.0


def test_factor_one_is_constant() -> None:
    """A factor of 1 gives the same delay before every retry."""
    b = Backoff(initial_delay_s=5.0, factor=1.0, jitter=0)
    assert {b.delay_s(n) for n in range(1, 50)} == {5.0}


def test_floor_raises_a_short_delay() -> None:
    """A Retry-After longer than the computed delay wins."""
    assert Backoff().with_floor(2.0, 10.0) == 10.0


def test_floor_never_shortens_a_delay() -> None:
    """A Retry-After shorter than the computed delay is ignored."""
    assert Backoff().with_floor(16.0, 1.0) == 16.0


def test_floor_is_capped() -> None:
    """A Retry-After beyond max_delay_s is cut to the cap."""
    assert Backoff().with_floor(2.0, 3600.0) == 300.0
    assert Backoff(max_delay_s=60.0).with_floor(2.0, 120.0) == 60.0


def test_no_floor_keeps_the_delay() -> None:
    """``floor_s=None`` (no Retry-After) returns the delay unchanged."""
    assert Backoff().with_floor(4.2, None) == 4.2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_delay_s": -1.0},
        {"max_delay_s": -0.5},
        {"factor": 0.5},
        {"factor": 0},
        {"jitter": -0.1},
        {"jitter": 1.0},
        {"jitter": 1.5},
        {"jitter": math.nan},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, float]) -> None:
    """Negative delays, a factor below 1 and jitter outside [0, 1) raise ValueError naming the field."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Backoff(**kwargs)


@pytest.mark.parametrize("retry", [0, -1])
def test_retry_numbers_start_at_one(retry: int) -> None:
    """Asking for retry 0 or below is a ValueError, for both base and jittered delays."""
    with pytest.raises(ValueError, match="start at 1"):
        Backoff().base_delay_s(retry)
    with pytest.raises(ValueError, match="start at 1"):
        Backoff().delay_s(retry)


def test_boundary_values_are_accepted() -> None:
    """Zero delays, factor 1 and jitter 0 are valid settings."""
    Backoff(initial_delay_s=0, max_delay_s=0, factor=1, jitter=0)


def test_backoff_is_frozen_and_keyword_only() -> None:
    """A Backoff cannot be mutated and takes keyword arguments only."""
    b = Backoff()
    with pytest.raises(AttributeError):
        b.max_delay_s = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        Backoff(2.0)  # type: ignore[misc]
    assert Backoff() == Backoff()


# -- Hypothesis properties -----------------------------------------------------------

delays = st.floats(min_value=0, max_value=1e6, allow_nan=False)
factors = st.floats(min_value=1, max_value=100, allow_nan=False)
jitters = st.floats(min_value=0, max_value=0.999, allow_nan=False)
retries = st.integers(min_value=1, max_value=5_000)
unit = st.floats(min_value=0, max_value=1)


@st.composite
def backoffs(draw: st.DrawFn) -> Backoff:
    return Backoff(initial_delay_s=draw(delays), factor=draw(factors),
                   max_delay_s=draw(delays), jitter=draw(jitters))


@given(backoffs(), retries, unit)
def test_delay_is_within_jitter_band_and_cap(b: Backoff, retry: int, u: float) -> None:
    """For any schedule, the delay is base*(1 +- jitter), never above the cap, never negative."""

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * u

    base = b.base_delay_s(retry)
    d = b.delay_s(retry, uniform=uniform)
    assert 0 <= d <= b.max_delay_s
    assert d >= base * (1 - b.jitter) * (1 - 1e-12)
    assert d <= base * (1 + b.jitter) * (1 + 1e-12)


@given(backoffs(), retries)
def test_base_delay_follows_the_formula(b: Backoff, retry: int) -> None:
    """The base delay is min(max_delay_s, initial_delay_s * factor ** (n - 1))."""
    try:
        raw = b.initial_delay_s * b.factor ** (retry - 1)
    except OverflowError:
        raw = math.inf if b.initial_delay_s > 0 else 0.0
    assert b.base_delay_s(retry) == pytest.approx(min(b.max_delay_s, raw))


@given(backoffs(), st.integers(min_value=1, max_value=2_000))
def test_base_delay_never_decreases(b: Backoff, retry: int) -> None:
    """Each retry waits at least as long (before jitter) as the one before."""
    assert b.base_delay_s(retry + 1) >= b.base_delay_s(retry)


@given(backoffs(), retries, st.one_of(st.none(), st.floats(min_value=0, max_value=1e7)))
def test_floor_bounds(b: Backoff, retry: int, floor: float | None) -> None:
    """With a Retry-After floor the delay is at least min(floor, cap) and at most the cap."""
    d = b.delay_s(retry)
    floored = b.with_floor(d, floor)
    assert floored <= b.max_delay_s
    assert floored >= d
    if floor is not None:
        assert floored >= min(floor, b.max_delay_s)


@given(retries, unit)
def test_default_schedule_property(retry: int, u: float) -> None:
    """The default delay before retry n lies in [0.9, 1.1] * min(300, 2 * 2**(n-1)) and <= 300."""

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * u

    d = Backoff().delay_s(retry, uniform=uniform)
    base = min(300.0, 2.0 * 2.0 ** min(retry - 1, 100))
    assert 0.9 * base * (1 - 1e-12) <= d <= min(300.0, 1.1 * base * (1 + 1e-12))


# -- RetryPolicy ---------------------------------------------------------------------


def test_policy_defaults() -> None:
    """The default policy allows 5 retries on the default backoff."""
    p = RetryPolicy()
    assert p.max_retries == 5
    assert p.backoff == Backoff()


def test_policy_schedules_each_retry_in_turn() -> None:
    """Retries 1..5 are numbered from retries_used + 1 and use that retry's delay."""
    p = RetryPolicy()
    decisions = [p.decide(used, retryable=True, uniform=_mid) for used in range(5)]
    assert decisions == [Retry(retry=n, delay_s=pytest.approx(d))  # type: ignore[arg-type]
                         for n, d in zip(range(1, 6), [2.0, 4.0, 8.0, 16.0, 32.0])]


def test_policy_exhausts_after_the_budget() -> None:
    """Once max_retries are used the decision is GiveUp(exhausted=True)."""
    p = RetryPolicy(max_retries=3)
    assert p.decide(3, retryable=True) == GiveUp(exhausted=True)
    assert p.decide(10, retryable=True) == GiveUp(exhausted=True)


def test_policy_not_retryable_gives_up_unexhausted() -> None:
    """A failure that is not retry-worthy gives up at once, not as an exhausted budget."""
    p = RetryPolicy()
    assert p.decide(0, retryable=False) == GiveUp(exhausted=False)
    # Even with the budget spent, a hopeless failure is reported as not retryable.
    assert p.decide(5, retryable=False) == GiveUp(exhausted=False)


def test_policy_zero_retries_gives_up_on_first_failure() -> None:
    """max_retries=0 means the first failure already exhausts the budget."""
    assert RetryPolicy(max_retries=0).decide(0, retryable=True) == GiveUp(exhausted=True)


def test_policy_floor_raises_delay() -> None:
    """A Retry-After floor lengthens the scheduled delay."""
    d = RetryPolicy().decide(0, retryable=True, floor_s=30.0, uniform=_mid)
    assert d == Retry(retry=1, delay_s=30.0)


def test_policy_floor_is_capped() -> None:
    """A Retry-After beyond max_delay_s is cut to the cap."""
    d = RetryPolicy().decide(0, retryable=True, floor_s=10_000.0, uniform=_mid)
    assert d == Retry(retry=1, delay_s=300.0)


def test_policy_floor_never_shortens() -> None:
    """A short Retry-After does not shorten the backoff delay."""
    d = RetryPolicy().decide(3, retryable=True, floor_s=1.0, uniform=_mid)
    assert isinstance(d, Retry)
    assert d.delay_s == pytest.approx(16.0)


def test_policy_uses_its_own_backoff() -> None:
    """The policy's delays come from the backoff it was given."""
    p = RetryPolicy(max_retries=2, backoff=Backoff(initial_delay_s=0.5, factor=3, jitter=0))
    assert p.decide(0, retryable=True) == Retry(retry=1, delay_s=0.5)
    assert p.decide(1, retryable=True) == Retry(retry=2, delay_s=1.5)
    assert p.decide(2, retryable=True) == GiveUp(exhausted=True)


@given(st.integers(min_value=0, max_value=50), st.integers(min_value=0, max_value=60), st.booleans())
def test_policy_decision_property(max_retries: int, used: int, retryable: bool) -> None:
    """decide() retries exactly while retryable and used < max_retries, with a capped delay."""
    d = RetryPolicy(max_retries=max_retries).decide(used, retryable=retryable)
    if not retryable:
        assert d == GiveUp(exhausted=False)
    elif used >= max_retries:
        assert d == GiveUp(exhausted=True)
    else:
        assert isinstance(d, Retry)
        assert d.retry == used + 1
        assert 0 <= d.delay_s <= 300.0
