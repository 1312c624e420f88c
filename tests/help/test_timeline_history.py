"""Attempt timelines and the hourly history (SPEC 10.1), under the mock clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from engine import DownloadSpec, Settings, Status, open_engine
from engine.testing import INLINE_DISK
from engine._history import History, Timeline, summarize
from engine.testing import FaultServer, Faults
from engine.testing._scripted import ScriptedSpec

SIZE = 1_000_000


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    srv = FaultServer()
    async with srv.running():
        yield srv


async def settle(eng: Any, op_id: str, *statuses: Status) -> Any:
    with trio.fail_after(10_000):
        while eng.get(op_id).status not in statuses:
            await trio.sleep(0.01)
    return eng.get(op_id)


async def test_timeline_of_two_drops_then_success_across_a_restart(
    server: FaultServer, tmp_path: Path, autojump_clock: Any
) -> None:
    """Two dropped attempts and a good one give three entries with codes, bytes and triggers, kept across a restart."""
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(drop_after=200_000, drop_times=2))
    settings = Settings(initial_delay_s=1.0, jitter=0.0, download_root=str(tmp_path / "dl"))
    spec = DownloadSpec(url=server.base_url + "/m.bin", dest="m.bin", sha256=file.sha256)
    async with open_engine(tmp_path / "state", settings, disk=INLINE_DISK) as eng:
        op = await eng.submit(spec)
        await settle(eng, op.id, Status.RECOVERING)
    async with open_engine(tmp_path / "state", settings, disk=INLINE_DISK) as eng:
        final = await eng.wait(op.id)
    assert final.status is Status.SUCCESS, final.error
    async with open_engine(tmp_path / "state", settings, disk=INLINE_DISK) as eng:
        timeline = eng.get(op.id).timeline
    assert [t["trigger"] for t in timeline] == ["submit", "resume", "automatic"]
    assert [t["code"] for t in timeline] == ["E_NET_INTERRUPTED", "E_NET_INTERRUPTED", None]
    assert [t["outcome"] for t in timeline] == ["failed", "failed", "success"]
    assert [t["number"] for t in timeline] == [1, 2, 3]
    assert [t["delay_s"] for t in timeline] == [0.0, 0.0, 2.0]  # retry 2 of the budget: 1 s * 2
    sent = [s for _, s in server.stats.paths["/m.bin"].ranges]
    assert 0 < timeline[0]["bytes_received"] <= 200_000 and 0 < timeline[1]["bytes_received"] <= 200_000
    assert timeline[2]["bytes_received"] == sent[2]
    assert all(t["connections"] is not None and t["connections"] >= 1 for t in timeline)
    assert all(t["started_at"] <= t["ended_at"] for t in timeline)


async def test_timeline_names_manual_triggers(state_dir: Path, scripted: Any, autojump_clock: Any) -> None:
    """Retry now, force retry and resume are recorded as what started the attempt."""
    async with open_engine(state_dir, Settings(max_retries=0), kinds=[scripted], disk=INLINE_DISK) as eng:
        op = await eng.submit(ScriptedSpec(name="m", script=["fail:E_NET_TIMEOUT", "fail:E_AUTH", "hang", "ok"]))
        await settle(eng, op.id, Status.EXHAUSTED)
        await eng.retry_now(op.id)
        await settle(eng, op.id, Status.FAILED)
        await eng.force_retry(op.id)
        await settle(eng, op.id, Status.IN_PROGRESS)
        await trio.sleep(1)
        await eng.pause(op.id)
        await settle(eng, op.id, Status.PAUSED)
        await eng.resume(op.id)
        final = await eng.wait(op.id)
    assert final.status is Status.SUCCESS
    assert [t["trigger"] for t in final.timeline] == ["submit", "retry_now", "force_retry", "resume"]
    assert [t["outcome"] for t in final.timeline] == ["failed", "failed", "interrupted", "success"]
    assert [t["code"] for t in final.timeline] == ["E_NET_TIMEOUT", "E_AUTH", None, None]


def test_timeline_is_bounded_and_loads_old_snapshots() -> None:
    """The timeline keeps the last 50 attempts; a snapshot without one loads empty; a crashed attempt reads interrupted."""
    t = Timeline()
    for i in range(60):
        t.begin(now=float(i))
        t.end("failed", code="E_NET_TIMEOUT", bytes_received=i, connections=1, now=i + 0.5)
    assert len(t.entries) == 50 and t.entries[0].number == 11 and t.entries[-1].number == 60
    t.begin(now=100.0)
    loaded = Timeline.from_records(t.to_records())
    assert loaded.entries[-1].outcome == "interrupted" and loaded.next_trigger == "resume"
    assert Timeline.from_records(None).entries == [] and Timeline.from_records(None).next_trigger == "submit"


async def test_history_buckets_after_a_scripted_mix(state_dir: Path, scripted: Any, autojump_clock: Any) -> None:
    """A scripted mix of failures and recoveries gives exact counts by code and host, persisted with the statistics."""
    settings = Settings(initial_delay_s=2.0, jitter=0.0, max_per_host=4)
    mix = [
        ScriptedSpec(name="a", scope="h1", script=["fail:E_NET_TIMEOUT", "progress:100+ok"]),
        ScriptedSpec(name="b", scope="h2", script=["fail:E_HTTP_CLIENT"]),
        ScriptedSpec(name="c", scope="h1", script=["progress:50+fail:E_SERVER_OVERLOAD", "fail:E_SERVER_OVERLOAD",
                                                   "ok"]),
        ScriptedSpec(name="d", script=["ok"]),
    ]
    async with open_engine(state_dir, settings, kinds=[scripted], disk=INLINE_DISK) as eng:
        ops = [await eng.submit(s) for s in mix]
        finals = [await eng.wait(op.id) for op in ops]
        live = summarize(eng.history(hours=2))
    assert [f.status for f in finals] == [Status.SUCCESS, Status.FAILED, Status.SUCCESS, Status.SUCCESS]
    expected = {
        "attempts": 7, "failures": 4, "recoveries": 2, "recovery_time_s": 8.0, "bytes_received": 150,
        "failures_by_code": {"E_NET_TIMEOUT": 1, "E_HTTP_CLIENT": 1, "E_SERVER_OVERLOAD": 2},
        "failures_by_host": {"h1": 3, "h2": 1},
    }
    assert live == expected
    stored = msgpack.unpackb((state_dir / "stats.msgpack").read_bytes())["stats"]
    assert "history" in stored and stored["total_operations"] == 4
    async with open_engine(state_dir, settings, kinds=[scripted], disk=INLINE_DISK) as eng:
        buckets = eng.history(hours=2)
        totals = eng.failure_totals()
    assert summarize(buckets) == expected
    assert len(buckets) == 2 and all(b.hour % 3600 == 0 for b in buckets)
    assert totals == {("E_NET_TIMEOUT", "h1"): 1, ("E_HTTP_CLIENT", "h2"): 1, ("E_SERVER_OVERLOAD", "h1"): 2}


def test_history_keeps_thirty_days_and_counts_all_time() -> None:
    """Buckets older than 30 days are dropped; all-time failure counters are not; empty hours are listed."""
    h = History()
    day = 86400.0
    now = 1_800_000_000.0
    h.failure("E_NET_TIMEOUT", "a", now=now - 31 * day)
    h.attempt(now=now - 31 * day)
    h.failure("E_NET_TIMEOUT", "a", now=now)
    h.received(10, now=now - 3600)
    month = h.buckets(hours=720, now=now)
    assert len(month) == 720 and summarize(month)["failures"] == 1 and summarize(month)["attempts"] == 0
    assert h.failures_total == {("E_NET_TIMEOUT", "a"): 2}
    assert [b.bytes_received for b in h.buckets(hours=2, now=now)] == [10, 0]
    again = History.from_record(h.to_record())
    assert summarize(again.buckets(720, now=now)) == summarize(month) and again.failures_total == h.failures_total
    assert History.from_record({"hours": "garbage"}).buckets(1, now=now)[0].attempts == 0


async def test_counting_history_writes_nothing_per_event(
    state_dir: Path, scripted: Any, autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hundreds of counted attempts cost no write each: the history is written with the statistics, once a second."""
    from engine._store import SnapshotStore

    writes: list[float] = []
    real_write = SnapshotStore.write_stats

    def counting_write(self: SnapshotStore, record: dict[str, Any]) -> None:
        writes.append(trio.current_time())
        real_write(self, record)

    monkeypatch.setattr(SnapshotStore, "write_stats", counting_write)
    settings = Settings(initial_delay_s=0.5, max_delay_s=2.0, jitter=0.0, max_retries=5, max_concurrent=50,
                        max_per_host=50, breaker_failure_threshold=1000)
    script = ["fail:E_NET_TIMEOUT"] * 4 + ["ok"]
    async with open_engine(state_dir, settings, kinds=[scripted], disk=INLINE_DISK) as eng:
        started = trio.current_time()
        ops = [await eng.submit(ScriptedSpec(name=f"m{i}", scope=f"h{i % 5}", script=script)) for i in range(50)]
        for op in ops:
            await eng.wait(op.id)
        elapsed = trio.current_time() - started
        counted = summarize(eng.history(hours=2))
    assert counted["attempts"] == 250 and counted["failures"] == 200 and counted["recoveries"] == 50
    # one periodic write per second of (virtual) time at most, and the last one at close
    assert elapsed >= 5.5 and 2 <= len(writes) <= elapsed / 1.0 + 2, (len(writes), elapsed)
    stored = History.from_record(msgpack.unpackb((state_dir / "stats.msgpack").read_bytes())["stats"]["history"])
    assert summarize(stored.buckets(2)) == counted
