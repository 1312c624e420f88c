"""Mailboxes, request/reply, and the skippable backoff wait."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from supervisors import ActorGone, Mailbox, Request, SkippableSleep, open_mailbox


async def echo_actor(mailbox: Mailbox[Any], seen: list[Any] | None = None) -> None:
    """Replies to asks with ``("echo", message)``, fails asks for ``"boom"``, records tells."""
    async for msg in mailbox:
        if isinstance(msg, Request):
            if msg.message == "boom":
                msg.fail(KeyError("boom"))
            else:
                msg.reply(("echo", msg.message))
        elif seen is not None:
            seen.append(msg)


# -- tell / ask ----------------------------------------------------------------------


async def test_tell_delivers_in_order() -> None:
    """Told messages arrive in the order they were sent, without a Request wrapper."""
    mb = open_mailbox()
    for i in range(5):
        mb.address.tell(i)
    assert [mb.receive_nowait() for _ in range(5)] == [0, 1, 2, 3, 4]


async def test_tell_never_blocks() -> None:
    """The mailbox is unbounded: many tells with no reader never raise or wait."""
    mb = open_mailbox()
    for i in range(10_000):
        mb.address.tell(i)
    assert mb.receive_nowait() == 0


async def test_receive_nowait_on_empty_raises_would_block() -> None:
    """An empty mailbox raises trio.WouldBlock from receive_nowait."""
    with pytest.raises(trio.WouldBlock):
        open_mailbox().receive_nowait()


async def test_receive_waits_for_a_message() -> None:
    """`receive` blocks until something is told."""
    mb = open_mailbox()
    got: list[Any] = []

    async def reader() -> None:
        got.append(await mb.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        mb.address.tell("hello")
    assert got == ["hello"]


async def test_ask_gets_the_reply() -> None:
    """`ask` wraps the message in a Request and returns the actor's reply."""
    mb = open_mailbox()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo_actor, mb)
        assert await mb.address.ask("ping") == ("echo", "ping")
        assert await mb.address.ask(42) == ("echo", 42)
        mb.address.close()


async def test_reply_default_is_none() -> None:
    """`Request.reply()` with no value makes `ask` return None."""
    mb = open_mailbox()

    async def actor() -> None:
        req = await mb.receive()
        assert isinstance(req, Request)
        req.reply()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor)
        assert await mb.address.ask("x") is None


async def test_ask_fail_raises_in_the_caller() -> None:
    """`Request.fail(exc)` makes the caller's `ask` raise that very exception."""
    mb = open_mailbox()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo_actor, mb)
        with pytest.raises(KeyError, match="boom"):
            await mb.address.ask("boom")
        # The actor survives a failed request.
        assert await mb.address.ask("after") == ("echo", "after")
        mb.address.close()


async def test_concurrent_asks_get_their_own_replies() -> None:
    """Each ask has a private reply channel, so replies never cross between callers."""
    mb = open_mailbox()
    results: dict[int, Any] = {}

    async def actor() -> None:
        pending: list[Request[Any]] = []
        async for req in mb:
            assert isinstance(req, Request)
            pending.append(req)
            if len(pending) == 20:
                for r in reversed(pending):  # answer in the opposite order
                    r.reply(r.message * 10)
                return

    async def caller(i: int) -> None:
        results[i] = await mb.address.ask(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor)
        for i in range(20):
            nursery.start_soon(caller, i)
    assert results == {i: i * 10 for i in range(20)}


async def test_second_reply_is_ignored() -> None:
    """Only the first reply counts; a second reply or fail does not raise in the actor."""
    mb = open_mailbox()

    async def actor() -> None:
        req = await mb.receive()
        assert isinstance(req, Request)
        req.reply("first")
        req.reply("second")
        req.fail(RuntimeError("late"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor)
        assert await mb.address.ask("q") == "first"


async def test_reply_after_caller_gave_up_is_not_an_error(autojump_clock: trio.abc.Clock) -> None:
    """An actor replying to a caller whose ask was cancelled does not raise."""
    mb = open_mailbox()
    with trio.move_on_after(1):
        await mb.address.ask("slow")
    req = mb.receive_nowait()
    assert isinstance(req, Request)
    req.reply("too late")
    req.fail(RuntimeError("too late"))


async def test_ask_is_cancellable(autojump_clock: trio.abc.Clock) -> None:
    """An ask nobody answers can be abandoned with a cancel scope."""
    mb = open_mailbox()
    with trio.move_on_after(5) as scope:
        await mb.address.ask("anyone?")
    assert scope.cancelled_caught
    assert trio.current_time() == pytest.approx(5)


# -- closing -------------------------------------------------------------------------


async def test_tell_after_mailbox_close_raises_actor_gone() -> None:
    """Once the actor closes its mailbox, `tell` raises ActorGone (caused by the broken channel)."""
    mb = open_mailbox()
    mb.close()
    with pytest.raises(ActorGone) as info:
        mb.address.tell("late")
    assert isinstance(info.value.__cause__, trio.BrokenResourceError)


async def test_ask_after_mailbox_close_raises_actor_gone() -> None:
    """`ask` to a closed mailbox raises ActorGone at once instead of waiting."""
    mb = open_mailbox()
    mb.close()
    with trio.fail_after(1):
        with pytest.raises(ActorGone):
            await mb.address.ask("late")


async def test_tell_after_address_close_raises_actor_gone() -> None:
    """A closed address refuses further messages with ActorGone."""
    mb = open_mailbox()
    mb.address.close()
    with pytest.raises(ActorGone):
        mb.address.tell("late")


async def test_address_close_ends_the_actor_loop() -> None:
    """Closing the address ends `async for` over the mailbox once queued messages are read."""
    mb = open_mailbox()
    seen: list[Any] = []
    mb.address.tell("a")
    mb.address.tell("b")
    mb.address.close()
    with trio.fail_after(1):
        await echo_actor(mb, seen)
    assert seen == ["a", "b"]


async def test_pending_asks_fail_when_the_mailbox_closes(autojump_clock: trio.abc.Clock) -> None:
    """Asks queued but unread when the actor closes its mailbox raise ActorGone, not hang."""
    mb = open_mailbox()
    outcomes: list[Any] = []

    async def caller(i: int) -> None:
        try:
            outcomes.append(await mb.address.ask(i))
        except ActorGone as exc:
            outcomes.append(exc)

    with trio.fail_after(60):  # a regression would hang the callers forever
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(caller, i)
            mb.address.tell("a plain message")  # tells in the queue are simply dropped
            await trio.testing.wait_all_tasks_blocked()
            mb.close()
    assert len(outcomes) == 3
    assert all(isinstance(o, ActorGone) for o in outcomes)


async def test_close_after_some_asks_were_answered(autojump_clock: trio.abc.Clock) -> None:
    """Closing fails only the unread asks; the answered ones got their replies."""
    mb = open_mailbox()
    outcomes: dict[int, Any] = {}

    async def caller(i: int) -> None:
        try:
            outcomes[i] = await mb.address.ask(i)
        except ActorGone:
            outcomes[i] = "gone"

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(caller, i)
                await trio.testing.wait_all_tasks_blocked()
            for _ in range(2):
                req = mb.receive_nowait()
                assert isinstance(req, Request)
                req.reply("ok")
            mb.close()
    assert outcomes == {0: "ok", 1: "ok", 2: "gone", 3: "gone"}


async def test_close_is_idempotent() -> None:
    """Closing a mailbox twice is harmless."""
    mb = open_mailbox()
    mb.close()
    mb.close()
    with pytest.raises(ActorGone):
        mb.address.tell("x")


# -- SkippableSleep ------------------------------------------------------------------


async def test_sleep_runs_to_its_deadline(autojump_clock: trio.abc.Clock) -> None:
    """Without a skip, `sleep_until` returns True exactly at the deadline."""
    sleep = SkippableSleep()
    start = trio.current_time()
    assert await sleep.sleep_until(start + 8) is True
    assert trio.current_time() == pytest.approx(start + 8)
    assert not sleep.waiting
    assert sleep.deadline is None


async def test_skip_ends_the_wait_early(autojump_clock: trio.abc.Clock) -> None:
    """`skip` cuts the wait short; `sleep_until` returns False at the moment of the skip."""
    sleep = SkippableSleep()
    start = trio.current_time()
    result: list[bool] = []

    async def sleeper() -> None:
        result.append(await sleep.sleep_until(start + 100))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper)
        await trio.sleep(3)
        assert sleep.waiting
        assert sleep.deadline == pytest.approx(start + 100)
        assert sleep.skip() is True
    assert result == [False]
    assert trio.current_time() == pytest.approx(start + 3)
    assert not sleep.waiting
    assert sleep.deadline is None


async def test_skip_without_a_wait_returns_false() -> None:
    """Skipping when nothing is waiting does nothing and says so."""
    sleep = SkippableSleep()
    assert sleep.skip() is False
    assert not sleep.waiting


async def test_earlier_skip_does_not_affect_the_next_wait(autojump_clock: trio.abc.Clock) -> None:
    """A sleep reused after a skip waits out its full deadline and reports True."""
    sleep = SkippableSleep()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleep.sleep_until, trio.current_time() + 50)
        await trio.testing.wait_all_tasks_blocked()
        sleep.skip()
    start = trio.current_time()
    assert await sleep.sleep_until(start + 2) is True
    assert trio.current_time() == pytest.approx(start + 2)


async def test_past_deadline_returns_at_once(autojump_clock: trio.abc.Clock) -> None:
    """A deadline already passed returns True without waiting."""
    start = trio.current_time()
    assert await SkippableSleep().sleep_until(start - 1) is True
    assert trio.current_time() == start


async def test_outer_cancel_propagates(autojump_clock: trio.abc.Clock) -> None:
    """Cancelling the sleeper from outside is not mistaken for a skip or a deadline."""
    sleep = SkippableSleep()
    with trio.move_on_after(1) as scope:
        await sleep.sleep_until(trio.current_time() + 10)
        pytest.fail("the sleep should have been cancelled")  # pragma: no cover
    assert scope.cancelled_caught
    assert not sleep.waiting
    assert sleep.deadline is None
