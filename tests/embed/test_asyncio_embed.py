"""`asyncio_engine`: the engine as a trio guest of an asyncio loop (SPEC 12.1).

Each test is a plain function running ``asyncio.run`` (pytest-trio owns the
``async def`` tests), in real time with tiny delays, every wait bounded.
Every test also proves it left no thread and no asyncio task behind.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import DownloadSpec, Event, RefusedError, Settings, StateDirLocked, Status
from engine.testing._scripted import ScriptedExplosion, ScriptedKind, ScriptedSpec
from engine.embed import AsyncioEngine, EngineBroken, EngineClosed, asyncio_engine, threaded_engine
from engine.testing import FaultServer, Faults, VirtualFile

SIZE = 800_000
LIMIT_S = 20.0


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``asyncio.run(main())`` bounded in time; then no task but the runner's may remain."""

    async def bounded() -> None:
        async with asyncio.timeout(LIMIT_S):
            await main()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(bounded())


def fast(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(initial_delay_s=0.05, max_delay_s=0.2, jitter=0.0, checkpoint_interval_s=0.05,
                    download_root=str(tmp_path / "downloads"), **kw)


def spec(name: str, *script: str) -> ScriptedSpec:
    return ScriptedSpec(name=name, script=list(script) or ["ok"])


async def until(eng: AsyncioEngine, op_id: str, *statuses: Status, check: Callable[[Any], bool] | None = None) -> Any:
    """Poll (real time, bounded) until the operation is in one of ``statuses``."""
    async with asyncio.timeout(10):
        while True:
            op = eng.get(op_id)
            if op.status in statuses and (check is None or check(op)):
                return op
            await asyncio.sleep(0.01)


def contains(exc: BaseException | None, kind: type[BaseException]) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(kind) is not None
    return isinstance(exc, kind)


def test_download_recovers_pauses_and_resumes(tmp_path: Path) -> None:
    """An asyncio program downloads through a dropped connection, pauses, resumes and reads every event."""
    server = FaultServer()
    with server.run_in_thread():
        url = server.url("/files/m.bin", size=SIZE, faults=Faults(drop_after=100_000, drop_times=1, rate_bps=1_000_000))
        sha = VirtualFile(seed="/files/m.bin", size=SIZE).sha256

        async def main() -> None:
            async with asyncio_engine(tmp_path / "state", fast(tmp_path)) as eng:
                events: list[Event] = []

                async def read(sub: Any) -> None:
                    async for event in sub:
                        events.append(event)
                        if event.type == "status" and event["status"] == "success":
                            return

                reader = asyncio.create_task(read(eng.subscribe()))
                op = await eng.submit(DownloadSpec(url=url, dest="m.bin", sha256=sha))
                await until(eng, op.id, Status.IN_PROGRESS, Status.RECOVERING,
                            check=lambda o: o.retries_total >= 1 and o.bytes_done >= 300_000)
                paused = await eng.pause(op.id)
                assert paused.status is Status.PAUSED
                kept = (tmp_path / "downloads" / "m.bin.part").stat().st_size
                await asyncio.sleep(0.2)
                assert (tmp_path / "downloads" / "m.bin.part").stat().st_size == kept  # nothing moves while paused
                await eng.resume(op.id)
                final = await eng.wait(op.id, timeout=10)
                await asyncio.wait_for(reader, 5)
                assert final.status is Status.SUCCESS, final.error
                assert eng.statistics().recovered_operations == 1

            mine = [e for e in events if e.op_id == op.id]
            statuses = [e["status"] for e in mine if e.type == "status"]
            assert "recovering" in statuses and "paused" in statuses and statuses[-1] == "success"
            assert [e["error"]["code"] for e in mine if e.type == "retry_scheduled"] == ["E_NET_INTERRUPTED"]
            assert any(e.type == "progress" for e in mine)

        run(main)
        ranges = server.stats.paths["/files/m.bin"].ranges
    data = (tmp_path / "downloads" / "m.bin").read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha
    assert ranges[0][0] == 0 and len(ranges) >= 3 and all((start or 0) > 0 for start, _ in ranges[1:])


def test_every_method_has_the_same_name_and_result(tmp_path: Path) -> None:
    """Controls, readers, settings and breakers answer like `Engine`'s; refusals raise `RefusedError`."""

    async def main() -> None:
        async with asyncio_engine(tmp_path / "state", fast(tmp_path), kinds=[ScriptedKind()]) as eng:
            assert eng.state_dir == tmp_path / "state"
            settings = await eng.update_settings(initial_delay_s=60, max_delay_s=60)
            assert settings.initial_delay_s == 60 and eng.settings == settings

            hang = await eng.submit(spec("hang", "hang"))
            await until(eng, hang.id, Status.IN_PROGRESS)
            assert (await eng.pause(hang.id)).status is Status.PAUSED
            with pytest.raises(RefusedError) as refused:
                await eng.retry_now(hang.id)
            assert refused.value.code == "E_INVALID_STATE"
            assert (await eng.resume(hang.id)).status in (Status.PENDING, Status.IN_PROGRESS)
            assert (await eng.control(hang.id, "pause")).status is Status.PAUSED
            assert eng.find("scripted:hang") == eng.get(hang.id)

            flaky = await eng.submit(spec("flaky", "fail:E_SERVER_OVERLOAD"))
            await until(eng, flaky.id, Status.RECOVERING)
            assert (await eng.retry_now(flaky.id)).status is Status.IN_PROGRESS
            await until(eng, flaky.id, Status.RECOVERING, check=lambda o: o.attempt == 2)
            assert (await eng.cancel_recovery(flaky.id)).status is Status.FAILED
            assert (await eng.force_retry(flaky.id)).status is Status.IN_PROGRESS
            await until(eng, flaky.id, Status.RECOVERING)
            await eng.cancel_recovery(flaky.id)
            assert (await eng.wait(flaky.id, timeout=5)).status is Status.FAILED
            await eng.forget(flaky.id)
            with pytest.raises(RefusedError) as missing:
                eng.get(flaky.id)
            assert missing.value.code == "E_NOT_FOUND"

            assert (await eng.cancel(hang.id)).status is Status.CANCELLED
            assert [op.id for op in eng.list()] == []
            assert eng.statistics().total_operations == 2
            assert isinstance(await eng.breakers(), list)

    run(main)


def test_cancelling_a_waiting_task_leaves_the_engine_working(tmp_path: Path) -> None:
    """Cancelling the asyncio task awaiting `wait()` cancels only that wait; the operation finishes."""

    async def main() -> None:
        async with asyncio_engine(tmp_path / "state", fast(tmp_path), kinds=[ScriptedKind()]) as eng:
            op = await eng.submit(spec("slow", "sleep:0.3+ok"))
            waiter = asyncio.create_task(eng.wait(op.id))
            await asyncio.sleep(0.05)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(eng.wait(op.id), 0.05)
            await asyncio.sleep(0.02)
            assert not eng._host._pending  # both trio-side waits were cancelled, not abandoned
            assert eng.get(op.id).status is Status.IN_PROGRESS
            final = await eng.wait(op.id, timeout=5)
            assert final.status is Status.SUCCESS

    run(main)


def test_a_wait_timeout_raises_timeout_error(tmp_path: Path) -> None:
    """``wait(op_id, timeout=...)`` raises the builtin `TimeoutError` and the operation goes on."""

    async def main() -> None:
        async with asyncio_engine(tmp_path / "state", fast(tmp_path), kinds=[ScriptedKind()]) as eng:
            op = await eng.submit(spec("hang", "hang"))
            with pytest.raises(TimeoutError):
                await eng.wait(op.id, timeout=0.05)
            assert eng.get(op.id).status is Status.IN_PROGRESS

    run(main)


def test_a_locked_state_dir_raises_state_dir_locked(tmp_path: Path) -> None:
    """An engine that cannot start (its state dir is held by another) raises in asyncio, and leaves nothing running."""

    async def main() -> None:
        with pytest.raises(StateDirLocked):
            async with asyncio_engine(tmp_path / "state", fast(tmp_path)):
                pytest.fail("the block must not run")  # pragma: no cover

    with threaded_engine(tmp_path / "state", fast(tmp_path)):
        run(main)

    async def again() -> None:  # the failed start left no trio run behind in this thread
        async with asyncio_engine(tmp_path / "state", fast(tmp_path)) as eng:
            assert eng.list() == []

    run(again)


def test_one_asyncio_engine_per_loop(tmp_path: Path) -> None:
    """A second `asyncio_engine` on the same loop is refused clearly (trio allows one run per thread)."""

    async def main() -> None:
        async with asyncio_engine(tmp_path / "a", fast(tmp_path)):
            with pytest.raises(RuntimeError, match="one asyncio_engine per event loop"):
                async with asyncio_engine(tmp_path / "b", fast(tmp_path)):
                    pass  # pragma: no cover

    run(main)


def test_an_engine_crash_raises_instead_of_hanging(tmp_path: Path) -> None:
    """When the engine dies, pending and later calls raise `EngineBroken`, and so does leaving the block."""

    async def main() -> None:
        with pytest.raises(EngineBroken) as broken:
            async with asyncio_engine(tmp_path / "state", fast(tmp_path), kinds=[ScriptedKind()]) as eng:
                hang = await eng.submit(spec("hang", "hang"))
                waiter = asyncio.create_task(eng.wait(hang.id))
                await asyncio.sleep(0.02)
                await eng.submit(spec("bomb", "explode"))
                with pytest.raises(EngineBroken) as pending:
                    await waiter
                assert contains(pending.value.__cause__, ScriptedExplosion)
                with pytest.raises(EngineBroken):
                    await eng.pause(hang.id)
                with pytest.raises(EngineBroken):
                    eng.list()
        assert contains(broken.value.__cause__, ScriptedExplosion)

    run(main)


def test_subscriptions_close_on_break_and_end_with_the_engine(tmp_path: Path) -> None:
    """``break`` closes a subscription; an iteration still running when the block is left just ends."""

    async def main() -> None:
        async with asyncio_engine(tmp_path / "state", fast(tmp_path), kinds=[ScriptedKind()]) as eng:
            bus = eng._host.engine._events  # type: ignore[union-attr]

            async def first() -> Event:
                async for event in eng.subscribe():
                    return event
                raise AssertionError("no event")  # pragma: no cover

            task = asyncio.create_task(first())
            await asyncio.sleep(0.01)
            op = await eng.submit(spec("one"))
            assert (await task).type == "submitted"
            await asyncio.sleep(0.02)
            assert bus.subscriber_count == 0

            async with eng.subscribe() as events:
                await eng.wait(op.id, timeout=5)
                await eng.wait((await eng.submit(spec("mid"))).id, timeout=5)
                assert bus.subscriber_count == 1 and events.drain()
            await asyncio.sleep(0.02)
            assert bus.subscriber_count == 0

            async def read_all() -> list[Event]:
                return [event async for event in eng.subscribe()]

            reader = asyncio.create_task(read_all())
            await asyncio.sleep(0.01)
            await eng.submit(spec("two"))
        assert [e.type for e in await asyncio.wait_for(reader, 5)][:1] == ["submitted"]

    run(main)


def test_calls_after_the_block_raise_engine_closed(tmp_path: Path) -> None:
    """Once the block is left, every method raises `EngineClosed`; the running operation resumes next time."""

    async def main() -> None:
        async with asyncio_engine(tmp_path / "state", fast(tmp_path), kinds=[ScriptedKind()]) as eng:
            op = await eng.submit(spec("long", "hang", "ok"))
            await until(eng, op.id, Status.IN_PROGRESS)
        with pytest.raises(EngineClosed):
            await eng.pause(op.id)
        with pytest.raises(EngineClosed):
            eng.get(op.id)
        with pytest.raises(EngineClosed):
            eng.subscribe()
        async with asyncio_engine(tmp_path / "state", fast(tmp_path), kinds=[ScriptedKind()]) as eng:
            assert (await eng.wait(op.id, timeout=5)).status is Status.SUCCESS

    run(main)


def test_cancelling_the_owner_task_still_shuts_down_cleanly(tmp_path: Path) -> None:
    """A task cancelled inside the block still leaves the engine stopped and its state dir free."""

    async def owner(started: asyncio.Event) -> None:
        async with asyncio_engine(tmp_path / "state", fast(tmp_path), kinds=[ScriptedKind()]) as eng:
            await eng.submit(spec("hang", "hang"))
            started.set()
            await asyncio.sleep(3600)

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(owner(started))
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not trio.lowlevel.in_trio_run()
        async with asyncio_engine(tmp_path / "state", fast(tmp_path), kinds=[ScriptedKind()]) as eng:
            assert [op.status for op in eng.list()] in ([Status.PENDING], [Status.IN_PROGRESS])

    run(main)
