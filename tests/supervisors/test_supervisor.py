"""Supervisor nurseries: reruns by policy, give-up, pause/resume/cancel, skip_wait, services."""

from __future__ import annotations

import logging
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from supervisors import Backoff, Child, RetryPolicy, Supervisor, open_supervisor


class Boom(Exception):
    """The failure our scripted children raise."""


@attrs.define(eq=False)
class Script:
    """A child body: run ``i`` plays ``steps[min(i, len - 1)]`` and records what happened.

    A step is ``"fail"`` (raise Boom), ``"ok"`` (return), ``"hang"`` (sleep until
    cancelled), a number (sleep that many seconds, then return) or
    ``("fail", s)`` (sleep s seconds, then raise Boom).
    """

    steps: list[Any]
    starts: list[float] = attrs.Factory(list)
    cancels: list[float] = attrs.Factory(list)
    ends: list[float] = attrs.Factory(list)

    @property
    def runs(self) -> int:
        return len(self.starts)

    async def __call__(self) -> None:
        step = self.steps[min(self.runs, len(self.steps) - 1)]
        self.starts.append(trio.current_time())
        try:
            if isinstance(step, tuple):
                await trio.sleep(step[1])
                step = step[0]
            if step == "fail":
                await trio.lowlevel.checkpoint()
                raise Boom(f"run {self.runs}")
            if step == "hang":
                await trio.sleep_forever()
            if isinstance(step, (int, float)):
                await trio.sleep(step)
            await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            self.cancels.append(trio.current_time())
            raise
        self.ends.append(trio.current_time())


def fixed(max_retries: int = 5, initial_delay_s: float = 2.0) -> RetryPolicy:
    """A jitter-free policy so the test can assert exact trio times."""
    return RetryPolicy(max_retries=max_retries,
                       backoff=Backoff(initial_delay_s=initial_delay_s, jitter=0))


async def test_failing_child_is_rerun_after_the_backoff_delay(autojump_clock: trio.abc.Clock) -> None:
    """A child that raises is rerun 2 s, then 4 s later, and then succeeds."""
    script = Script(["fail", "fail", "ok"])
    t0 = trio.current_time()
    async with open_supervisor() as sup:
        child = sup.start_soon(script, name="c", restart=fixed())
    assert [t - t0 for t in script.starts] == pytest.approx([0, 2, 6])
    assert trio.current_time() - t0 == pytest.approx(6)
    assert child.restarts == 2
    assert child.state == "done"
    assert child.done.is_set()
    assert child.error is None
    assert sup.children == {}


async def test_rerun_delay_is_jittered_within_the_band(autojump_clock: trio.abc.Clock) -> None:
    """With the default policy the reruns come 2 s and 4 s later, each within +-10%."""
    script = Script(["fail", "fail", "ok"])
    async with open_supervisor() as sup:
        sup.start_soon(script, name="c", restart=RetryPolicy())
    first, second, third = script.starts
    assert 1.8 <= second - first <= 2.2
    assert 3.6 <= third - second <= 4.4


async def test_child_state_and_next_run_at_while_waiting(autojump_clock: trio.abc.Clock) -> None:
    """Between runs the child is ``waiting`` and ``next_run_at`` is the trio time of the rerun."""
    script = Script(["fail", "hang"])
    async with open_supervisor() as sup:
        t0 = trio.current_time()
        child = sup.start_soon(script, name="c", restart=fixed(initial_delay_s=10))
        await trio.sleep(1)
        assert child.state == "waiting"
        assert child.next_run_at == pytest.approx(t0 + 10)
        await trio.sleep(10)
        assert child.state == "running"
        assert child.next_run_at is None
        child.cancel()


async def test_gives_up_after_max_retries_and_siblings_keep_running(
    autojump_clock: trio.abc.Clock,
) -> None:
    """After max_retries reruns the child stops, on_give_up hears of it, and a sibling runs on."""
    given_up: list[tuple[Child, BaseException, float]] = []
    ticks: list[float] = []

    def on_give_up(child: Child, exc: BaseException) -> None:
        given_up.append((child, exc, trio.current_time()))

    async def sibling() -> None:
        while True:
            await trio.sleep(1)
            ticks.append(trio.current_time())

    script = Script(["fail"])
    t0 = trio.current_time()
    async with open_supervisor(on_give_up=on_give_up) as sup:
        sib = sup.start_soon(sibling, name="sibling")
        child = sup.start_soon(script, name="c", restart=fixed(max_retries=3))
        await child.done.wait()
        # 1 first run + 3 reruns after 2, 4 and 8 s.
        assert [t - t0 for t in script.starts] == pytest.approx([0, 2, 6, 14])
        assert len(given_up) == 1
        gchild, exc, when = given_up[0]
        assert gchild is child
        assert isinstance(exc, Boom) and str(exc) == "run 4"
        assert when - t0 == pytest.approx(14)
        assert child.error is exc
        assert child.restarts == 3
        assert child.state == "done"
        assert "c" not in sup.children
        # The sibling was not disturbed and keeps ticking after the give-up.
        await trio.sleep(5.5)  # off the tick grid, so no same-instant ordering question
        assert [t - t0 for t in ticks if t > when] == pytest.approx([15, 16, 17, 18, 19])
        assert sib.state == "running"
        sup.cancel_all()


async def test_no_policy_gives_up_on_first_failure(autojump_clock: trio.abc.Clock) -> None:
    """A child started without a restart policy is not rerun: one failure ends it."""
    given_up: list[BaseException] = []
    script = Script(["fail", "ok"])
    async with open_supervisor(on_give_up=lambda c, e: given_up.append(e)) as sup:
        child = sup.start_soon(script, name="c")
    assert script.runs == 1
    assert len(given_up) == 1 and isinstance(given_up[0], Boom)
    assert child.restarts == 0


async def test_give_up_without_hook_does_not_crash_the_supervisor(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Without on_give_up, a child that fails for good is logged and the block exits cleanly."""
    async with open_supervisor() as sup:
        child = sup.start_soon(Script(["fail"]), name="c", restart=fixed(max_retries=1))
    assert isinstance(child.error, Boom)


async def test_success_needs_no_rerun(autojump_clock: trio.abc.Clock) -> None:
    """A child that returns is done at once with no restarts and no hook call."""
    hook_calls: list[Any] = []
    script = Script(["ok"])
    async with open_supervisor(on_give_up=lambda c, e: hook_calls.append(e)) as sup:
        child = sup.start_soon(script, name="c", restart=fixed())
    assert script.runs == 1
    assert child.restarts == 0 and child.error is None and hook_calls == []


async def test_pause_cancels_the_running_child_promptly(autojump_clock: trio.abc.Clock) -> None:
    """`pause` cancels the running body at once (no trio time passes) and parks the child."""
    script = Script(["hang"])
    async with open_supervisor() as sup:
        child = sup.start_soon(script, name="c", restart=fixed())
        await trio.sleep(5)
        paused_at = trio.current_time()
        child.pause()
        await trio.testing.wait_all_tasks_blocked()
        assert script.cancels == [paused_at]
        assert child.state == "paused"
        # It stays parked: nothing reruns however long we wait.
        await trio.sleep(1000)
        assert script.runs == 1
        assert child.state == "paused"
        child.cancel()


async def test_resume_reruns_and_keeps_the_restart_counter(autojump_clock: trio.abc.Clock) -> None:
    """After pause and resume the child runs again with the restart counter it had."""
    script = Script(["fail", "hang", ("fail", 1), "ok"])
    t0 = trio.current_time()
    async with open_supervisor() as sup:
        child = sup.start_soon(script, name="c", restart=fixed())
        await trio.sleep(3)  # failed at 0, rerun 1 at 2 s, now hanging
        assert child.restarts == 1 and child.state == "running"
        child.pause()
        await trio.sleep(10)
        assert child.state == "paused"
        resumed_at = trio.current_time()
        child.resume()
        await trio.testing.wait_all_tasks_blocked()
        assert script.starts[-1] == resumed_at
        assert child.restarts == 1  # kept across the pause
        # Run 3 fails 1 s later: the next wait is retry 2's (4 s), not retry 1's.
        await child.done.wait()
    assert [t - t0 for t in script.starts] == pytest.approx([0, 2, 13, 18])
    assert child.restarts == 2
    assert child.error is None


async def test_pause_during_backoff_wait_keeps_the_counter(autojump_clock: trio.abc.Clock) -> None:
    """Pausing a child that waits to rerun parks it; resume reruns at once with the counter kept."""
    script = Script(["fail", "ok"])
    async with open_supervisor() as sup:
        child = sup.start_soon(script, name="c", restart=fixed(initial_delay_s=100))
        await trio.sleep(1)
        assert child.state == "waiting"
        child.pause()
        await trio.testing.wait_all_tasks_blocked()
        assert child.state == "paused"
        assert child.next_run_at is None
        await trio.sleep(500)  # well past the original rerun time: still parked
        assert script.runs == 1
        resumed_at = trio.current_time()
        child.resume()
    assert script.starts[-1] == resumed_at
    assert child.restarts == 1


async def test_pause_is_idempotent_and_resume_of_running_is_a_no_op(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Pausing twice needs one resume; resuming a running child changes nothing."""
    script = Script(["hang"])
    async with open_supervisor() as sup:
        child = sup.start_soon(script, name="c")
        await trio.testing.wait_all_tasks_blocked()
        child.resume()
        await trio.testing.wait_all_tasks_blocked()
        assert script.runs == 1 and script.cancels == []
        child.pause()
        child.pause()
        await trio.testing.wait_all_tasks_blocked()
        assert len(script.cancels) == 1
        child.resume()
        await trio.testing.wait_all_tasks_blocked()
        assert child.state == "running" and script.runs == 2
        child.cancel()


async def test_pause_again_right_after_resume_stays_paused(autojump_clock: trio.abc.Clock) -> None:
    """A pause that lands between resume and the child's wakeup keeps it parked (no stray run)."""
    script = Script([1.0])
    async with open_supervisor() as sup:
        child = sup.start_soon(script, name="c")
        await trio.testing.wait_all_tasks_blocked()
        child.pause()
        await trio.testing.wait_all_tasks_blocked()
        assert script.runs == 1 and child.state == "paused"
        child.resume()
        child.pause()
        await trio.sleep(10)
        assert script.runs == 1
        assert child.state == "paused"
        child.resume()
    assert script.runs == 2
    assert len(script.ends) == 1


async def test_pause_before_the_first_run(autojump_clock: trio.abc.Clock) -> None:
    """A child paused before it was scheduled does not run until resumed."""
    script = Script(["ok"])
    async with open_supervisor() as sup:
        child = sup.start_soon(script, name="c")
        child.pause()
        await trio.sleep(10)
        assert script.runs == 0
        assert child.state == "paused"
        child.resume()
    assert script.runs == 1


async def test_failure_while_pausing_does_not_spend_a_retry(autojump_clock: trio.abc.Clock) -> None:
    """If the body raises while being paused, the pause wins: no rerun is scheduled or counted."""
    runs: list[float] = []

    async def messy() -> None:
        runs.append(trio.current_time())
        try:
            await trio.sleep_forever()
        finally:
            raise Boom("cleanup failed")

    async with open_supervisor() as sup:
        child = sup.start_soon(messy, name="c", restart=fixed())
        await trio.testing.wait_all_tasks_blocked()
        child.pause()
        await trio.sleep(100)
        assert child.state == "paused"
        assert child.restarts == 0
        assert len(runs) == 1
        child.cancel()


async def test_cancel_ends_a_running_child(autojump_clock: trio.abc.Clock) -> None:
    """`cancel` stops a running child for good: done, removed, not rerun, no give-up."""
    hook_calls: list[Any] = []
    script = Script(["hang"])
    async with open_supervisor(on_give_up=lambda c, e: hook_calls.append(e)) as sup:
        child = sup.start_soon(script, name="c", restart=fixed())
        await trio.sleep(2)
        child.cancel()
        with trio.fail_after(0.001):
            await child.done.wait()
        assert child.state == "done"
        assert "c" not in sup.children
    assert script.cancels == [pytest.approx(script.starts[0] + 2)]
    assert script.runs == 1
    assert hook_calls == []
    assert child.error is None


async def test_cancel_ends_a_paused_child(autojump_clock: trio.abc.Clock) -> None:
    """A paused child can be cancelled; resume afterwards does not bring it back."""
    script = Script(["hang"])
    async with open_supervisor() as sup:
        child = sup.start_soon(script, name="c")
        await trio.testing.wait_all_tasks_blocked()
        child.pause()
        await trio.testing.wait_all_tasks_blocked()
        child.cancel()
        await child.done.wait()
        child.resume()
        child.pause()  # on a done child: ignored
    assert script.runs == 1
    assert child.state == "done"


async def test_cancel_ends_a_waiting_child(autojump_clock: trio.abc.Clock) -> None:
    """A child waiting to rerun is ended by cancel without waiting out the delay."""
    script = Script(["fail"])
    async with open_supervisor() as sup:
        child = sup.start_soon(script, name="c", restart=fixed(initial_delay_s=100))
        await trio.sleep(1)
        assert child.state == "waiting"
        t = trio.current_time()
        child.cancel()
        await child.done.wait()
        assert trio.current_time() == t
    assert script.runs == 1


async def test_cancel_before_the_first_run(autojump_clock: trio.abc.Clock) -> None:
    """A child cancelled before it was scheduled is cancelled at its first checkpoint."""
    script = Script([5])
    t0 = trio.current_time()
    async with open_supervisor() as sup:
        child = sup.start_soon(script, name="c", restart=fixed())
        child.cancel()
    assert script.ends == []
    assert script.cancels == [t0]
    assert script.runs <= 1
    assert child.done.is_set() and child.restarts == 0
    assert trio.current_time() == t0


async def test_skip_wait_reruns_immediately(autojump_clock: trio.abc.Clock) -> None:
    """`skip_wait` cuts the backoff short: the rerun starts now and the counter is kept."""
    script = Script(["fail", "ok"])
    async with open_supervisor() as sup:
        child = sup.start_soon(script, name="c", restart=fixed(initial_delay_s=100))
        await trio.sleep(7)
        skipped_at = trio.current_time()
        assert child.skip_wait() is True
    assert script.starts[1] == skipped_at
    assert trio.current_time() == skipped_at
    assert child.restarts == 1


async def test_skip_wait_when_not_waiting_returns_false(autojump_clock: trio.abc.Clock) -> None:
    """`skip_wait` on a running child is refused and changes nothing."""
    script = Script(["hang"])
    async with open_supervisor() as sup:
        child = sup.start_soon(script, name="c")
        await trio.testing.wait_all_tasks_blocked()
        assert child.skip_wait() is False
        assert script.cancels == []
        child.cancel()


async def test_skip_wait_then_failure_uses_the_next_delay(autojump_clock: trio.abc.Clock) -> None:
    """After a skipped wait, the next failure waits retry 2's delay (the counter was kept)."""
    script = Script(["fail", "fail", "ok"])
    async with open_supervisor() as sup:
        sup_child = sup.start_soon(script, name="c", restart=fixed())
        await trio.sleep(1)
        sup_child.skip_wait()
    t0 = script.starts[0]
    assert [t - t0 for t in script.starts] == pytest.approx([0, 1, 5])


async def test_start_returns_the_task_status_value(autojump_clock: trio.abc.Clock) -> None:
    """`start` waits for the service's started(value) and returns (child, value)."""
    events: list[str] = []

    async def service(port: int, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(3)  # getting ready takes a while
        task_status.started(("127.0.0.1", port))
        events.append("ready")
        try:
            await trio.sleep_forever()
        finally:
            events.append("stopped")

    async with open_supervisor() as sup:
        t0 = trio.current_time()
        child, value = await sup.start(service, 8765, name="svc")
        assert trio.current_time() - t0 == pytest.approx(3)
        assert value == ("127.0.0.1", 8765)
        assert events == ["ready"]
        assert sup.children["svc"] is child
        child.cancel()
        await child.done.wait()
        assert "svc" not in sup.children
    assert events == ["ready", "stopped"]


async def test_start_propagates_an_early_failure() -> None:
    """A service that raises before started() makes `start` raise, and frees its name."""

    async def broken(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.lowlevel.checkpoint()
        raise Boom("could not bind")

    async with open_supervisor() as sup:
        with pytest.raises(Boom):
            await sup.start(broken, name="svc")
        assert "svc" not in sup.children


async def test_duplicate_names_are_refused(autojump_clock: trio.abc.Clock) -> None:
    """A second live child with the same name is a ValueError for start_soon and start."""

    async def service(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async with open_supervisor() as sup:
        sup.start_soon(Script(["hang"]), name="c")
        with pytest.raises(ValueError, match="'c'"):
            sup.start_soon(Script(["ok"]), name="c")
        with pytest.raises(ValueError, match="'c'"):
            await sup.start(service, name="c")
        sup.cancel_all()


async def test_name_is_free_again_once_done(autojump_clock: trio.abc.Clock) -> None:
    """After a child finishes, a new child may take its name."""
    async with open_supervisor() as sup:
        first = sup.start_soon(Script(["ok"]), name="c")
        await first.done.wait()
        second = sup.start_soon(Script(["hang"]), name="c")
        assert sup.children["c"] is second
        sup.cancel_all()


async def test_block_exit_waits_for_children(autojump_clock: trio.abc.Clock) -> None:
    """Leaving open_supervisor normally waits until every child has finished."""
    t0 = trio.current_time()
    script = Script([30])
    async with open_supervisor() as sup:
        sup.start_soon(script, name="c")
    assert trio.current_time() - t0 == pytest.approx(30)
    assert script.ends == [pytest.approx(t0 + 30)]


async def test_cancel_all_stops_every_child(autojump_clock: trio.abc.Clock) -> None:
    """`cancel_all` ends running, paused and waiting children at once."""
    running, paused, waiting = Script(["hang"]), Script(["hang"]), Script(["fail"])
    async with open_supervisor() as sup:
        sup.start_soon(running, name="running")
        p = sup.start_soon(paused, name="paused")
        w = sup.start_soon(waiting, name="waiting", restart=fixed(initial_delay_s=50))
        await trio.testing.wait_all_tasks_blocked()
        p.pause()
        await trio.testing.wait_all_tasks_blocked()
        assert w.state == "waiting"
        t = trio.current_time()
        sup.cancel_all()
    assert trio.current_time() == t
    assert sup.children == {}


async def test_child_failure_does_not_cancel_siblings_or_supervisor(
    autojump_clock: trio.abc.Clock,
) -> None:
    """One child's exception never escapes into the nursery: siblings finish normally."""
    good = Script([5])
    async with open_supervisor() as sup:
        sup.start_soon(Script(["fail"]), name="bad")
        sup.start_soon(good, name="good")
    assert len(good.ends) == 1
    assert good.cancels == []


async def test_task_names_are_namespaced(autojump_clock: trio.abc.Clock) -> None:
    """Child tasks are named ``<supervisor>/<child>`` for debugging."""
    names: list[str] = []

    async def who() -> None:
        names.append(trio.lowlevel.current_task().name)

    async with open_supervisor("ops") as sup:
        assert isinstance(sup, Supervisor) and sup.name == "ops"
        sup.start_soon(who, name="op-1")
    assert names == ["ops/op-1"]


async def test_reruns_and_give_up_are_logged(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Each rerun is a warning and the give-up an error on the ``supervisors`` logger."""
    caplog.set_level(logging.DEBUG, logger="supervisors")
    async with open_supervisor("sup") as sup:
        sup.start_soon(Script(["fail"]), name="c", restart=fixed(max_retries=2))
    records = [r for r in caplog.records if r.name == "supervisors"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING, logging.ERROR]
    assert "rerun 1 in 2.00s" in records[0].getMessage()
    assert "rerun 2 in 4.00s" in records[1].getMessage()
    assert "failed for good" in records[2].getMessage()
    assert records[2].exc_info is not None


async def test_a_server_requested_delay_raises_the_rerun_wait(autojump_clock: trio.abc.Clock) -> None:
    """An exception carrying ``retry_after_s`` makes the rerun wait at least that long (capped)."""

    class Busy(Exception):
        retry_after_s = 30.0

    starts: list[float] = []

    async def child() -> None:
        starts.append(trio.current_time())
        if len(starts) == 1:
            raise Busy("come back in 30 s")

    async with open_supervisor() as sup:
        sup.start_soon(child, name="c", restart=fixed())
    assert starts[1] - starts[0] == pytest.approx(30)
