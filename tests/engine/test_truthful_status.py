"""SPEC 2.1: a retry that flows again is in_progress (attempt kept, error null, last_error set); rates are recent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import DownloadSpec, Settings, Status, open_engine
from engine.testing import INLINE_DISK
from engine._rate import RateWindow
from engine.testing import FaultServer, Faults

SIZE = 2_000_000


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    srv = FaultServer()
    async with srv.running():
        yield srv


def settings_for(tmp_path: Path) -> Settings:
    return Settings(initial_delay_s=1.0, jitter=0.0, download_root=str(tmp_path / "downloads"))


async def test_retry_that_transfers_returns_to_in_progress(
        server: FaultServer, tmp_path: Path, autojump_clock: Any) -> None:
    """After a drop, the resumed attempt is in_progress with Attempt 1/5, no error and the drop as last_error."""
    server.add_file("/m.bin", size=SIZE, faults=Faults(drop_after=300_000, drop_times=1, rate_bps=200_000))
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path), disk=INLINE_DISK) as eng:
        async with eng.subscribe() as sub:
            op = await eng.submit(DownloadSpec(url=server.base_url + "/m.bin", dest="m.bin"))
            seen: list[Any] = []
            with trio.fail_after(1000):
                while True:
                    view = eng.get(op.id)
                    if view.status is Status.IN_PROGRESS and view.attempt == 1 and view.bytes_done > 400_000:
                        seen.append(view)
                        break
                    await trio.sleep(0.05)
            final = await eng.wait(op.id)
            events = sub.drain()
    flowing = seen[0]
    assert flowing.error is None
    assert flowing.last_error is not None and flowing.last_error.code == "E_NET_INTERRUPTED"
    assert flowing.rate_bps > 100_000 and flowing.eta_s is not None
    assert flowing.to_dict()["last_error"]["code"] == "E_NET_INTERRUPTED"
    statuses = [(e["previous"], e["status"]) for e in events if e.type == "status" and e.op_id == op.id]
    assert ("recovering", "in_progress") in statuses
    assert statuses[-1] == ("in_progress", "success")  # never "recovering" up to the end
    assert final.status is Status.SUCCESS and final.attempt == 1


async def test_waiting_to_retry_shows_no_old_rate(server: FaultServer, tmp_path: Path, autojump_clock: Any) -> None:
    """While an operation waits for its retry, rate is 0 and ETA unknown (not the figure from before the drop)."""
    server.add_file("/w.bin", size=SIZE, faults=Faults(drop_after=300_000, drop_times=1, rate_bps=200_000))
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path), disk=INLINE_DISK) as eng:
        op = await eng.submit(DownloadSpec(url=server.base_url + "/w.bin", dest="w.bin"))
        with trio.fail_after(1000):
            while eng.get(op.id).status is not Status.RECOVERING:
                await trio.sleep(0.01)
        view = eng.get(op.id)
        assert view.rate_bps == 0.0 and view.eta_s is None
        assert view.error is not None and view.error.code == "E_NET_INTERRUPTED"
        await eng.wait(op.id)


def test_rate_window_is_recent_and_stalls_to_zero() -> None:
    """The rate follows the last seconds: fast after a slow start, 0 once nothing arrived for a window."""
    w = RateWindow(window_s=3.0)
    done = 0
    for t in range(10):  # 10 s at 100 kB/s
        done += 100_000
        w.add(float(t), done)
    for t in range(10, 14):  # then 4 s at 1 MB/s
        done += 1_000_000
        w.add(float(t), done)
    assert w.rate(13.0) > 900_000  # not the 10-second average
    assert w.rate(16.5) == 0.0  # nothing for a whole window: stalled


async def test_statistics_move_while_things_happen(server: FaultServer, tmp_path: Path, autojump_clock: Any) -> None:
    """bytes_downloaded grows during a transfer; failed_operations counts failed ops now; no average before a recovery."""
    from engine.testing._scripted import ScriptedKind, ScriptedSpec

    server.add_file("/live.bin", size=SIZE, faults=Faults(rate_bps=200_000))
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path), disk=INLINE_DISK,
                           kinds=[ScriptedKind()]) as eng:
        assert eng.statistics().average_recovery_time_s is None
        op = await eng.submit(DownloadSpec(url=server.base_url + "/live.bin", dest="live.bin"))
        with trio.fail_after(1000):
            while eng.get(op.id).bytes_done < SIZE // 2:
                await trio.sleep(0.05)
            # the statistics refresh on their own tick: wait for it, not for the end of the transfer
            while eng.statistics().bytes_downloaded < SIZE // 4:
                await trio.sleep(0.05)
        assert eng.get(op.id).status is Status.IN_PROGRESS  # still running: the counter moved before the end
        await eng.wait(op.id)

        bad = await eng.submit(ScriptedSpec(name="bad", script=["fail:E_HTTP_CLIENT", "ok"]))
        assert (await eng.wait(bad.id)).status is Status.FAILED
        with trio.fail_after(1000):
            while eng.statistics().failed_operations != 1:
                await trio.sleep(0.05)
        await eng.force_retry(bad.id)
        assert (await eng.wait(bad.id)).status is Status.SUCCESS
        with trio.fail_after(1000):
            while eng.statistics().failed_operations != 0:  # retried and recovered: no longer failed
                await trio.sleep(0.05)
        assert eng.statistics().average_recovery_time_s is not None
