"""Statuses, transitions and the six controls (SPEC sections 2.1 and 2.2)."""

from __future__ import annotations

import pytest
import trio

from engine import RefusedError, Settings, Status, TRANSITIONS, open_engine
from engine.testing import INLINE_DISK
from engine._model import CONTROLS, Control, check_transition
from engine.testing._scripted import ScriptedSpec


def spec(name: str, *script: str, **kw: object) -> ScriptedSpec:
    return ScriptedSpec(name=name, script=list(script) or ["ok"], **kw)  # type: ignore[arg-type]


async def settle(eng, op_id, *statuses):  # type: ignore[no-untyped-def]
    """Wait (mock time) until the operation reaches one of ``statuses``."""
    with trio.fail_after(10_000):
        while eng.get(op_id).status not in statuses:
            await trio.sleep(0.01)
    return eng.get(op_id)


def test_illegal_transition_raises() -> None:
    """A status change that is not a row of the table cannot be made."""
    with pytest.raises(RuntimeError, match="success -> in_progress"):
        check_transition(Status.SUCCESS, Status.IN_PROGRESS)
    for (old, new) in TRANSITIONS:
        check_transition(old, new)
    assert not any(old in (Status.SUCCESS, Status.CANCELLED) for old, _ in TRANSITIONS)


def test_controls_table_matches_spec() -> None:
    """Each control applies from exactly the statuses SPEC 2.2 lists."""
    S = Status
    assert CONTROLS[Control.PAUSE] == {S.PENDING, S.IN_PROGRESS, S.RECOVERING}
    assert CONTROLS[Control.RESUME] == {S.PAUSED}
    assert CONTROLS[Control.CANCEL] == set(S) - {S.SUCCESS, S.CANCELLED}
    assert CONTROLS[Control.RETRY_NOW] == {S.RECOVERING, S.EXHAUSTED, S.FAILED}
    assert CONTROLS[Control.FORCE_RETRY] == {S.RECOVERING, S.FAILED, S.EXHAUSTED}
    assert CONTROLS[Control.CANCEL_RECOVERY] == {S.RECOVERING}


async def test_every_reachable_transition_is_observed(state_dir, scripted, autojump_clock) -> None:
    """Driving operations through every control produces every edge of the table that
    happens at run time (the two restart edges are covered by the restart test)."""
    seen: set[tuple[str, str]] = set()
    settings = Settings(max_concurrent=1, max_retries=1)
    async with open_engine(state_dir, settings, kinds=[scripted], disk=INLINE_DISK) as eng:
        async with eng.subscribe() as sub:
            gate = await eng.submit(spec("gate", "gate"))           # holds the only slot
            await settle(eng, gate.id, Status.IN_PROGRESS)
            queued = await eng.submit(spec("queued"))
            await eng.pause(queued.id)                                # P -> Z
            await eng.cancel(queued.id)                               # Z -> C
            q2 = await eng.submit(spec("q2"))
            await eng.cancel(q2.id)                                   # P -> C
            q3 = await eng.submit(spec("q3"))
            await eng.pause(gate.id)                                  # I -> Z, then q3 P -> I, I -> S
            await settle(eng, q3.id, Status.SUCCESS)
            await eng.resume(gate.id)                                 # Z -> P
            scripted.open_gate("gate")
            await settle(eng, gate.id, Status.SUCCESS)

            a = await eng.submit(spec("a", "fail:E_NET_TIMEOUT", "fail:E_NET_TIMEOUT"))
            await settle(eng, a.id, Status.RECOVERING)                # I -> R
            await eng.retry_now(a.id)                                 # R -> I
            await settle(eng, a.id, Status.EXHAUSTED)                 # R -> X? (I -> R -> X)
            await eng.retry_now(a.id)                                 # X -> I
            await settle(eng, a.id, Status.RECOVERING)
            await eng.cancel_recovery(a.id)                           # R -> F
            await eng.retry_now(a.id)                                 # F -> I (error retry-worthy)
            await settle(eng, a.id, Status.RECOVERING)
            await eng.pause(a.id)                                     # R -> Z
            await eng.cancel(a.id)

            b = await eng.submit(spec("b", "fail:E_HTTP_CLIENT", "ok"))
            await settle(eng, b.id, Status.FAILED)                    # I -> F
            await eng.force_retry(b.id)                               # F -> I, I -> S
            await settle(eng, b.id, Status.SUCCESS)

            c = await eng.submit(spec("c", "fail:E_NET_TIMEOUT", "ok"))
            await settle(eng, c.id, Status.SUCCESS)                   # R -> S
            d = await eng.submit(spec("d", "fail:E_NET_TIMEOUT", "fail:E_HTTP_CLIENT"))
            await settle(eng, d.id, Status.FAILED)                    # R -> F
            await eng.cancel(d.id)                                    # F -> C
            e = await eng.submit(spec("e", "fail:E_NET_TIMEOUT", "hang"))
            await settle(eng, e.id, Status.RECOVERING)
            await eng.cancel(e.id)                                    # R -> C
            f = await eng.submit(spec("f", "hang"))
            await settle(eng, f.id, Status.IN_PROGRESS)
            await eng.cancel(f.id)                                    # I -> C
            g = await eng.submit(spec("g", "fail:E_NET_TIMEOUT"))
            await settle(eng, g.id, Status.EXHAUSTED)
            await eng.cancel(g.id)                                    # X -> C

            # slot-less retries: hold the slot, then retry a failed and an exhausted op
            h = await eng.submit(spec("h", "fail:E_NET_TIMEOUT:0", "fail:E_NET_TIMEOUT", "ok"))
            await settle(eng, h.id, Status.EXHAUSTED)
            k = await eng.submit(spec("k", "fail:E_HTTP_CLIENT", "ok"))
            await settle(eng, k.id, Status.FAILED)
            hold = await eng.submit(spec("hold", "gate"))
            await settle(eng, hold.id, Status.IN_PROGRESS)
            assert (await eng.retry_now(h.id)).status is Status.PENDING   # X -> P
            assert (await eng.force_retry(k.id)).status is Status.PENDING  # F -> P
            scripted.open_gate("hold")
            await settle(eng, k.id, Status.SUCCESS)
            await settle(eng, h.id, Status.SUCCESS)

            zero = Settings(max_retries=0)
            await eng.update_settings(max_retries=0)
            z = await eng.submit(spec("z", "fail:E_NET_TIMEOUT"))
            await settle(eng, z.id, Status.EXHAUSTED)                 # I -> X
            await eng.update_settings(max_retries=zero.max_retries + 1)

            # breaker: an open scope makes a pending op recovering (P -> R)
            await eng.update_settings(breaker_failure_threshold=1)
            s1 = await eng.submit(spec("s1", "fail:E_NET_UNREACHABLE", "ok", scope="down"))
            await settle(eng, s1.id, Status.RECOVERING)
            s2 = await eng.submit(spec("s2", scope="down"))
            await settle(eng, s2.id, Status.RECOVERING)
            await settle(eng, s2.id, Status.SUCCESS)

            for ev in sub.drain():
                if ev["type"] == "status":
                    seen.add((ev["previous"], ev["status"]))
    expected = {(o.value, n.value) for (o, n) in TRANSITIONS}
    restart_only = {("in_progress", "pending"), ("recovering", "pending")}
    assert expected - restart_only <= seen | set(), sorted(expected - restart_only - seen)
    assert seen <= expected | {("recovering", "recovering")}


@pytest.mark.parametrize(
    "control,status",
    [(c, s) for c in Control for s in Status if s not in CONTROLS[c] and s is not Status.CANCELLED
     and not (c is Control.PAUSE and s is Status.PAUSED)
     and not (c is Control.RESUME and s in (Status.PENDING, Status.IN_PROGRESS, Status.RECOVERING))],
)
async def test_refused_controls_name_the_status(eng, scripted, autojump_clock, control, status) -> None:
    """A control that does not apply is refused with E_INVALID_STATE naming the status."""
    script = {
        Status.PENDING: ["gate"], Status.IN_PROGRESS: ["gate"], Status.RECOVERING: ["fail:E_NET_TIMEOUT", "hang"],
        Status.PAUSED: ["hang"], Status.SUCCESS: ["ok"], Status.FAILED: ["fail:E_HTTP_CLIENT"],
        Status.EXHAUSTED: ["fail:E_NET_TIMEOUT"],
    }[status]
    if status is Status.EXHAUSTED:
        await eng.update_settings(max_retries=0)
    if status is Status.PENDING:
        await eng.update_settings(max_concurrent=1)
        blocker = await eng.submit(spec("blocker", "gate"))
        await settle(eng, blocker.id, Status.IN_PROGRESS)
    op = await eng.submit(spec("x", *script))
    if status is Status.PAUSED:
        await settle(eng, op.id, Status.IN_PROGRESS)
        await eng.pause(op.id)
    await settle(eng, op.id, status)
    with pytest.raises(RefusedError) as info:
        await eng.control(op.id, control.value)
    assert info.value.code == "E_INVALID_STATE"
    assert status.value in info.value.message
    assert eng.get(op.id).status is status


async def test_retry_now_refused_on_non_retryable_failure(eng, autojump_clock) -> None:
    """retry_now on a failed op whose error is not retry-worthy is E_NOT_RETRYABLE, pointing to force_retry."""
    op = await eng.submit(spec("x", "fail:E_AUTH"))
    await settle(eng, op.id, Status.FAILED)
    with pytest.raises(RefusedError) as info:
        await eng.retry_now(op.id)
    assert info.value.code == "E_NOT_RETRYABLE"
    assert "force_retry" in info.value.message


async def test_unknown_id_is_not_found(eng) -> None:
    """Every control and get on an unknown id is E_NOT_FOUND."""
    for call in (eng.pause, eng.resume, eng.cancel, eng.retry_now, eng.force_retry, eng.cancel_recovery, eng.wait):
        with pytest.raises(RefusedError) as info:
            await call("nope")
        assert info.value.code == "E_NOT_FOUND"
    with pytest.raises(RefusedError):
        eng.get("nope")


async def test_idempotent_controls(eng, autojump_clock) -> None:
    """Pausing a paused operation and resuming a running one are not errors."""
    op = await eng.submit(spec("x", "hang"))
    await settle(eng, op.id, Status.IN_PROGRESS)
    assert (await eng.resume(op.id)).status is Status.IN_PROGRESS
    assert (await eng.pause(op.id)).status is Status.PAUSED
    assert (await eng.pause(op.id)).status is Status.PAUSED


async def test_pause_running_attempt_cancels_work_promptly(eng, scripted, autojump_clock) -> None:
    """Pause cancels the running attempt's work within 1 s and keeps the retry counter."""
    op = await eng.submit(spec("x", "fail:E_NET_TIMEOUT", "progress:10+hang", "ok"))
    await settle(eng, op.id, Status.RECOVERING)
    await eng.retry_now(op.id)
    await settle(eng, op.id, Status.IN_PROGRESS)
    await trio.sleep(5)
    t0 = trio.current_time()
    paused = await eng.pause(op.id)
    assert paused.status is Status.PAUSED
    assert scripted.cancelled["x"] and scripted.cancelled["x"][-1] - t0 < 1.0
    assert paused.attempt == 1
    resumed = await eng.resume(op.id)
    assert resumed.status is Status.PENDING and resumed.attempt == 1
    final = await eng.wait(op.id)
    assert final.status is Status.SUCCESS
    assert scripted.started["x"] == 3


async def test_pause_during_backoff_wait(eng, scripted, autojump_clock) -> None:
    """Pause during a backoff wait stops the wait; resume runs the next attempt with the counter kept."""
    await eng.update_settings(initial_delay_s=100.0)
    op = await eng.submit(spec("x", "fail:E_NET_TIMEOUT", "ok"))
    await settle(eng, op.id, Status.RECOVERING)
    assert (await eng.pause(op.id)).status is Status.PAUSED
    await trio.sleep(1000)
    assert scripted.started["x"] == 1  # the wait did not fire while paused
    t0 = trio.current_time()
    await eng.resume(op.id)
    final = await eng.wait(op.id)
    assert final.status is Status.SUCCESS and trio.current_time() - t0 < 1
    assert final.retries_total == 1


async def test_retry_now_skips_a_long_wait(eng, scripted, autojump_clock) -> None:
    """retry_now runs the next attempt at once, keeping the attempt counter."""
    await eng.update_settings(initial_delay_s=250.0)
    op = await eng.submit(spec("x", "fail:E_NET_TIMEOUT", "hang"))
    await settle(eng, op.id, Status.RECOVERING)
    t0 = trio.current_time()
    now = await eng.retry_now(op.id)
    assert now.status is Status.IN_PROGRESS
    await settle(eng, op.id, Status.IN_PROGRESS)
    await trio.sleep(0.1)
    assert scripted.started["x"] == 2 and trio.current_time() - t0 < 1
    assert eng.get(op.id).attempt == 1


async def test_force_retry_on_non_retryable_failure(eng, scripted, autojump_clock) -> None:
    """force_retry retries a failure that classification calls hopeless, with a fresh budget."""
    op = await eng.submit(spec("x", "fail:E_HTTP_CLIENT", "ok"))
    await settle(eng, op.id, Status.FAILED)
    await eng.force_retry(op.id)
    final = await eng.wait(op.id)
    assert final.status is Status.SUCCESS and scripted.started["x"] == 2


async def test_cancel_recovery_keeps_the_last_error(eng, autojump_clock) -> None:
    """cancel_recovery stops automatic retry: failed, with the last error kept."""
    await eng.update_settings(initial_delay_s=60.0)
    op = await eng.submit(spec("x", "fail:E_SERVER_OVERLOAD", "ok"))
    await settle(eng, op.id, Status.RECOVERING)
    failed = await eng.cancel_recovery(op.id)
    assert failed.status is Status.FAILED and failed.error is not None
    assert failed.error.code == "E_SERVER_OVERLOAD"
    await trio.sleep(600)
    assert eng.get(op.id).status is Status.FAILED
    # the error is retry-worthy, so retry_now is allowed from failed
    await eng.retry_now(op.id)
    assert (await eng.wait(op.id)).status is Status.SUCCESS


async def test_cancel_deletes_snapshot_and_discards(eng, scripted, state_dir, autojump_clock) -> None:
    """Cancel calls the kind's discard and leaves no snapshot behind."""
    op = await eng.submit(spec("x", "hang"))
    await settle(eng, op.id, Status.IN_PROGRESS)
    await trio.sleep(0.1)  # a status change is durable within the writer's gathering time
    assert (state_dir / "operations" / f"{op.id}.msgpack").exists()
    cancelled = await eng.cancel(op.id)
    assert cancelled.status is Status.CANCELLED
    assert scripted.discarded == ["x"]
    assert not (state_dir / "operations" / f"{op.id}.msgpack").exists()
    assert eng.get(op.id).status is Status.CANCELLED  # still answerable, but gone from the list
    assert (await eng.wait(op.id)).status is Status.CANCELLED
    assert op.id not in [o.id for o in eng.list()]
    with pytest.raises(RefusedError) as info:
        await eng.pause(op.id)
    assert info.value.code == "E_INVALID_STATE"


async def test_second_submit_for_same_resource_returns_the_live_op(eng, autojump_clock) -> None:
    """Two submissions for one resource never make two writers."""
    a = await eng.submit(spec("same", "hang"))
    b = await eng.submit(spec("same", "hang"))
    assert a.id == b.id and len(eng.list()) == 1
