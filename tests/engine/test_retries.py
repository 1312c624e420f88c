"""Retry policy through the engine (SPEC section 3), under the mock clock."""

from __future__ import annotations

import trio

from engine import Settings, Status, open_engine
from engine.testing import INLINE_DISK
from engine.testing._scripted import ScriptedSpec


def spec(name: str, *script: str) -> ScriptedSpec:
    return ScriptedSpec(name=name, script=list(script))


def retry_events(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "retry_scheduled"]


async def test_default_backoff_schedule_then_exhausted(eng, autojump_clock) -> None:
    """Defaults give delays 2, 4, 8, 16, 32 s (within ±10%), then exhausted after 5 retries."""
    async with eng.subscribe() as sub:
        op = await eng.submit(spec("x", "fail:E_NET_INTERRUPTED"))
        t0 = trio.current_time()
        final = await eng.wait(op.id)
        elapsed = trio.current_time() - t0
        events = sub.drain()
    assert final.status is Status.EXHAUSTED and final.error.code == "E_NET_INTERRUPTED"
    retries = retry_events(events)
    assert [e["attempt"] for e in retries] == [1, 2, 3, 4, 5]
    for e, base in zip(retries, [2, 4, 8, 16, 32]):
        assert base * 0.9 <= e["delay_s"] <= base * 1.1
        assert e["max_retries"] == 5 and e["error"]["code"] == "E_NET_INTERRUPTED"
    assert 62 * 0.9 <= elapsed <= 62 * 1.1 + 0.5
    statuses = [e["status"] for e in events if e["type"] == "status"]
    assert statuses[0] == "in_progress" and statuses[-1] == "exhausted"


async def test_delay_is_capped(state_dir, scripted, autojump_clock) -> None:
    """No delay exceeds max_delay_s (300 s), even with jitter."""
    settings = Settings(initial_delay_s=100, max_retries=4, jitter=0.1)
    async with open_engine(state_dir, settings, kinds=[scripted], disk=INLINE_DISK) as eng:
        async with eng.subscribe() as sub:
            op = await eng.submit(spec("x", "fail:E_NET_TIMEOUT"))
            await eng.wait(op.id)
            delays = [e["delay_s"] for e in retry_events(sub.drain())]
    assert delays[0] <= 110 and all(d <= 300 for d in delays)
    assert all(270 <= d <= 300 for d in delays[2:])  # base capped at 300, then jittered, then capped


async def test_retry_after_raises_the_delay(eng, autojump_clock) -> None:
    """A server-requested delay (Retry-After) lengthens the wait, capped by max_delay_s."""
    async with eng.subscribe() as sub:
        op = await eng.submit(spec("x", "fail:E_SERVER_OVERLOAD:120", "fail:E_SERVER_OVERLOAD:9999", "ok"))
        final = await eng.wait(op.id)
        delays = [e["delay_s"] for e in retry_events(sub.drain())]
    assert final.status is Status.SUCCESS
    assert delays == [120, 300]


async def test_non_retryable_fails_at_once(eng, scripted, autojump_clock) -> None:
    """A failure automatic retry cannot fix ends in failed after one attempt, no retry scheduled."""
    async with eng.subscribe() as sub:
        op = await eng.submit(spec("x", "fail:E_DISK_FULL", "ok"))
        final = await eng.wait(op.id)
        events = sub.drain()
    assert final.status is Status.FAILED and final.error.code == "E_DISK_FULL"
    assert final.error.suggestion and not retry_events(events)
    assert scripted.started["x"] == 1


async def test_progress_resets_the_counter(eng, scripted, autojump_clock) -> None:
    """Attempts that each make >= progress_reset_bytes of durable progress never exhaust."""
    mib = 1024 * 1024
    script = [f"progress:{mib}+fail:E_NET_INTERRUPTED"] * 12 + ["ok"]
    op = await eng.submit(spec("x", *script))
    final = await eng.wait(op.id)
    assert final.status is Status.SUCCESS
    assert scripted.started["x"] == 13 and final.retries_total == 12


async def test_small_progress_does_not_reset(eng, scripted, autojump_clock) -> None:
    """Progress below the threshold does not refill the budget: the op exhausts."""
    op = await eng.submit(spec("x", "progress:1000+fail:E_NET_INTERRUPTED"))
    final = await eng.wait(op.id)
    assert final.status is Status.EXHAUSTED and scripted.started["x"] == 6


async def test_integrity_is_retried_once(eng, scripted, autojump_clock) -> None:
    """E_INTEGRITY gets exactly one fresh retry, then fails."""
    async with eng.subscribe() as sub:
        op = await eng.submit(spec("x", "fail:E_INTEGRITY"))
        final = await eng.wait(op.id)
        events = sub.drain()
    assert final.status is Status.FAILED and final.error.code == "E_INTEGRITY"
    assert len(retry_events(events)) == 1 and scripted.started["x"] == 2


async def test_unexpected_exception_is_internal(eng, autojump_clock) -> None:
    """A kind that raises an unexpected exception fails the op with E_INTERNAL; the engine lives on."""
    op = await eng.submit(spec("x", "crash"))
    final = await eng.wait(op.id)
    assert final.status is Status.FAILED and final.error.code == "E_INTERNAL"
    other = await eng.submit(spec("y", "ok"))
    assert (await eng.wait(other.id)).status is Status.SUCCESS


async def test_attempt_indicator_while_recovering(eng, autojump_clock) -> None:
    """While recovering the op shows attempt n / max_retries and an absolute next_retry_at."""
    import time

    op = await eng.submit(spec("x", "fail:E_NET_TIMEOUT", "fail:E_NET_TIMEOUT", "hang"))
    while eng.get(op.id).attempt < 2:
        await trio.sleep(0.5)
    view = eng.get(op.id)
    assert view.status is Status.RECOVERING and (view.attempt, view.max_retries) == (2, 5)
    assert view.next_retry_at is not None and view.next_retry_at > time.time()


async def test_a_bug_in_the_worker_fails_the_op_and_keeps_its_actor(eng, scripted, monkeypatch, autojump_clock) -> None:
    """An engine bug while handling an attempt ends in failed/E_INTERNAL; controls still work."""
    from engine._operation import OpActor

    original = OpActor._succeeded
    calls = {"n": 0}

    def broken(self: OpActor) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("a bug")
        original(self)

    monkeypatch.setattr(OpActor, "_succeeded", broken)
    op = await eng.submit(spec("x", "ok"))
    final = await eng.wait(op.id)
    assert final.status is Status.FAILED and final.error.code == "E_INTERNAL" and "KeyError" in final.error.message
    await eng.force_retry(op.id)
    assert (await eng.wait(op.id)).status is Status.SUCCESS
