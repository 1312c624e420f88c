"""Events, statistics, settings and restarts of the engine core."""

from __future__ import annotations

import json
import os
import stat

import msgpack
import pytest
import trio

from engine import RefusedError, Settings, StateDirLocked, Status, open_engine
from engine.testing import INLINE_DISK
from engine.testing._scripted import ScriptedKind, ScriptedSpec


def spec(name: str, *script: str, **kw) -> ScriptedSpec:
    return ScriptedSpec(name=name, script=list(script) or ["ok"], **kw)


async def test_thousand_ops_with_a_subscriber_that_never_reads(state_dir, scripted, autojump_clock) -> None:
    """1,000 operations complete while a subscriber never reads; its progress events are coalesced."""
    settings = Settings(max_concurrent=200, max_per_host=200)
    async with open_engine(state_dir, settings, kinds=[scripted], disk=INLINE_DISK) as eng:
        async with eng.subscribe() as lazy:
            ops = [await eng.submit(spec(f"op{i}", "progress:100+progress:100+fail:E_NET_TIMEOUT",
                                         "progress:100+ok")) for i in range(1000)]
            for op in ops:
                assert (await eng.wait(op.id)).status is Status.SUCCESS
            queued = lazy.drain()
    kinds = [e["type"] for e in (q.to_dict() for q in queued)]
    # in_progress, recovering, in_progress again (the retry flows), success: none dropped
    assert kinds.count("status") == 1000 * 4
    assert kinds.count("progress") <= 1000  # at most one unread progress event per operation
    assert kinds.count("submitted") == 1000 and kinds.count("retry_scheduled") == 1000


async def test_progress_events_are_throttled(eng, autojump_clock) -> None:
    """At most 10 progress events per second per operation reach a subscriber."""
    script = "+".join(["progress:10"] * 100)
    async with eng.subscribe() as sub:
        op = await eng.submit(spec("x", script))
        await eng.wait(op.id)
        progress = [e for e in sub.drain() if e.type == "progress"]
    assert 1 <= len(progress) <= 2  # 100 reports within the same instant of mock time


async def test_exact_statistics_for_a_scripted_mix(state_dir, scripted, autojump_clock) -> None:
    """Recovered count, failures, retries and the average recovery time are exact."""
    async with open_engine(state_dir, Settings(jitter=0.0), kinds=[scripted], disk=INLINE_DISK) as eng:
        ops = [
            await eng.submit(spec("clean", "ok")),
            await eng.submit(spec("one", "fail:E_NET_TIMEOUT", "ok")),               # recovers after 2 s
            await eng.submit(spec("two", "fail:E_NET_TIMEOUT", "fail:E_NET_TIMEOUT", "ok")),  # 2 + 4 s
            await eng.submit(spec("bad", "fail:E_HTTP_CLIENT")),
            await eng.submit(spec("dead", "fail:E_SERVER_OVERLOAD")),
        ]
        for op in ops:
            await eng.wait(op.id)
        stats = eng.statistics()
    assert stats.total_operations == 5
    assert stats.success_operations == 3 and stats.recovered_operations == 2
    assert stats.failed_operations == 2
    assert stats.retry_attempts == 1 + 2 + 5
    assert stats.average_recovery_time_s == pytest.approx((2 + 6) / 2, abs=0.01)
    assert stats.errors_by_code == {"E_NET_TIMEOUT": 3, "E_HTTP_CLIENT": 1, "E_SERVER_OVERLOAD": 6}
    assert stats.active_operations == 0
    # persisted across restarts
    async with open_engine(state_dir, Settings(), kinds=[ScriptedKind()], disk=INLINE_DISK) as eng:
        again = eng.statistics()
    assert again.recovered_operations == 2 and again.retry_attempts == 8 and again.total_operations == 5


async def test_restart_resumes_live_and_keeps_parked(state_dir, autojump_clock) -> None:
    """After a restart, pending/in_progress/recovering resume; paused/failed/exhausted stay."""
    kind = ScriptedKind()
    async with open_engine(state_dir, Settings(initial_delay_s=500, max_concurrent=10), kinds=[kind], disk=INLINE_DISK) as eng:
        running = await eng.submit(spec("running", "progress:5+hang", "ok"))
        recovering = await eng.submit(spec("recovering", "fail:E_NET_TIMEOUT", "ok"))
        paused = await eng.submit(spec("paused", "hang"))
        failed = await eng.submit(spec("failed", "fail:E_AUTH"))
        await trio.sleep(1)
        await eng.pause(paused.id)
        assert eng.get(running.id).status is Status.IN_PROGRESS
        assert eng.get(recovering.id).status is Status.RECOVERING
        assert eng.get(failed.id).status is Status.FAILED
    kind2 = ScriptedKind()
    async with open_engine(state_dir, Settings(initial_delay_s=500), kinds=[kind2], disk=INLINE_DISK) as eng:
        assert eng.get(paused.id).status is Status.PAUSED
        assert eng.get(failed.id).status is Status.FAILED
        for op_id in (running.id, recovering.id):
            assert (await eng.wait(op_id)).status is Status.SUCCESS
        assert eng.get(running.id).bytes_done == 5  # the kind's state survived
        assert eng.get(recovering.id).attempt == 1
        assert "paused" not in kind2.started and "failed" not in kind2.started


async def test_snapshot_files_are_private(state_dir, eng, autojump_clock) -> None:
    """The state dir is 0700 and snapshots are 0600."""
    op = await eng.submit(spec("x", "hang"))
    await trio.sleep(0.1)
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state_dir / "operations" / f"{op.id}.msgpack").st_mode) == 0o600


async def test_corrupt_and_newer_snapshots(state_dir, autojump_clock) -> None:
    """A corrupt snapshot is moved to .corrupt and reported; a newer schema is left untouched; the rest load."""
    async with open_engine(state_dir, Settings(), kinds=[ScriptedKind()], disk=INLINE_DISK) as eng:
        good = await eng.submit(spec("good", "hang"))
        await trio.sleep(0.1)
    ops = state_dir / "operations"
    (ops / "broken.msgpack").write_bytes(b"\xc1 definitely not msgpack")
    newer = msgpack.packb({"schema": 99, "operation": {"id": "future"}})
    (ops / "future.msgpack").write_bytes(newer)
    async with open_engine(state_dir, Settings(), kinds=[ScriptedKind()], disk=INLINE_DISK) as eng:
        assert eng.get(good.id).status in (Status.PENDING, Status.IN_PROGRESS)
        reasons = {os.path.basename(p.path): p.reason for p in eng.load_problems}
    assert (ops / "broken.msgpack.corrupt").exists() and not (ops / "broken.msgpack").exists()
    assert "decoded" in reasons["broken.msgpack"]
    assert (ops / "future.msgpack").read_bytes() == newer
    assert "newer" in reasons["future.msgpack"]


async def test_second_engine_on_same_dir_fails_at_once(state_dir) -> None:
    """A second engine on one state dir raises StateDirLocked with a clear message."""
    async with open_engine(state_dir, Settings(), kinds=[ScriptedKind()], disk=INLINE_DISK):
        with pytest.raises(StateDirLocked, match="already using the state directory"):
            async with open_engine(state_dir, Settings(), kinds=[ScriptedKind()], disk=INLINE_DISK):
                pass  # pragma: no cover


async def test_settings_validation_names_field(eng) -> None:
    """Bad settings are refused with the field and the reason; good ones persist to settings.json."""
    for changes, field in [({"initial_delay_s": -1}, "initial_delay_s"), ({"backoff_factor": 0.5}, "backoff_factor"),
                           ({"max_concurrent": 0}, "max_concurrent"), ({"nope": 1}, "nope"),
                           ({"max_retries": "x"}, "max_retries"), ({"max_retries": 1.5}, "max_retries")]:
        with pytest.raises(RefusedError) as info:
            await eng.update_settings(**changes)
        assert info.value.field == field and info.value.code == "E_INVALID_INPUT"
    await eng.update_settings(max_retries=8)
    assert eng.settings.max_retries == 8
    saved = json.loads((eng.state_dir / "settings.json").read_text())
    assert saved == {"max_retries": 8}


async def test_overrides_are_not_persisted(state_dir) -> None:
    """`overrides` (the CLI's --set) apply to the run and never reach settings.json."""
    async with open_engine(state_dir, overrides={"max_retries": 9}, kinds=[ScriptedKind()], disk=INLINE_DISK) as eng:
        assert eng.settings.max_retries == 9
        await eng.update_settings(jitter=0.2)
    assert json.loads((state_dir / "settings.json").read_text()) == {"jitter": 0.2}
    async with open_engine(state_dir, kinds=[ScriptedKind()], disk=INLINE_DISK) as eng:
        assert eng.settings.max_retries == 5 and eng.settings.jitter == 0.2


async def test_history_limit_forgets_oldest_success(state_dir, autojump_clock) -> None:
    """Finished operations beyond history_limit are forgotten, oldest first."""
    async with open_engine(state_dir, Settings(history_limit=3), kinds=[ScriptedKind()], disk=INLINE_DISK) as eng:
        ids = []
        for i in range(5):
            op = await eng.submit(spec(f"x{i}"))
            await eng.wait(op.id)
            ids.append(op.id)
            await trio.sleep(1)
        assert [o.id for o in eng.list()] == ids[2:]
    assert sorted(p.stem for p in (state_dir / "operations").glob("*.msgpack")) == sorted(ids[2:])


async def test_forget_refuses_live_ops(eng, autojump_clock) -> None:
    """forget drops a finished op and refuses a live one."""
    live = await eng.submit(spec("live", "hang"))
    done = await eng.submit(spec("done"))
    await eng.wait(done.id)
    with pytest.raises(RefusedError) as info:
        await eng.forget(live.id)
    assert info.value.code == "E_INVALID_STATE"
    await eng.forget(done.id)
    assert [o.id for o in eng.list()] == [live.id]
