"""Downloads end to end through `open_engine` and the fault server, under the mock clock."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import DownloadSpec, Settings, Status, open_engine
from engine.testing import INLINE_DISK
from engine.testing import FaultServer, Faults

SIZE = 1_000_000


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    srv = FaultServer()
    async with srv.running():
        yield srv


def settings_for(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(initial_delay_s=1.0, jitter=0.0, download_root=str(tmp_path / "downloads"), **kw)


async def settle(eng: Any, op_id: str, *statuses: Status) -> Any:
    """Wait (mock time) until the operation reaches one of ``statuses``."""
    with trio.fail_after(10_000):
        while eng.get(op_id).status not in statuses:
            await trio.sleep(0.01)
    return eng.get(op_id)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_drops_three_times_then_succeeds(server: FaultServer, tmp_path: Path, autojump_clock: Any) -> None:
    """A download whose connection drops three times recovers, resumes each time and ends exact."""
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(drop_after=200_000, drop_times=3))
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path), disk=INLINE_DISK) as eng:
        async with eng.subscribe() as sub:
            op = await eng.submit(DownloadSpec(url=server.base_url + "/m.bin", dest="m.bin", sha256=file.sha256))
            final = await eng.wait(op.id)
            events = sub.drain()
        stats = eng.statistics()
    assert final.status is Status.SUCCESS, final.error
    dest = tmp_path / "downloads" / "m.bin"
    assert sha256_of(dest) == file.sha256 and not dest.with_name("m.bin.part").exists()
    statuses = [e["status"] for e in events if e.type == "status" and e.op_id == op.id]
    assert statuses.count("recovering") == 3 and statuses[-1] == "success"
    assert [e["error"]["code"] for e in events if e.type == "retry_scheduled"] == ["E_NET_INTERRUPTED"] * 3
    ranges = [(start or 0, sent) for start, sent in server.stats.paths["/m.bin"].ranges]
    assert len(ranges) == 4 and ranges[0][0] == 0
    for (start, sent), (next_start, _) in zip(ranges, ranges[1:]):
        assert 0 < next_start <= start + sent  # each attempt resumes where the last one's durable data ended
    assert stats.recovered_operations == 1 and stats.bytes_discarded == 0


async def test_pause_and_resume_continue_from_the_offset(
    server: FaultServer, tmp_path: Path, autojump_clock: Any
) -> None:
    """Pausing mid-download keeps the .part; resuming asks only for the rest."""
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(rate_bps=100_000))
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path), disk=INLINE_DISK) as eng:
        op = await eng.submit(DownloadSpec(url=server.base_url + "/m.bin", dest="m.bin", sha256=file.sha256))
        await settle(eng, op.id, Status.IN_PROGRESS)
        await trio.sleep(3.5)
        paused = await eng.pause(op.id)
        await settle(eng, op.id, Status.PAUSED)
        part = tmp_path / "downloads" / "m.bin.part"
        kept = part.stat().st_size
        assert 0 < kept < SIZE and paused.status in (Status.PAUSED, Status.IN_PROGRESS)
        await trio.sleep(60)  # nothing moves while paused
        assert part.stat().st_size == kept and len(server.stats.paths["/m.bin"].ranges) == 1
        await eng.resume(op.id)
        final = await eng.wait(op.id)
    assert final.status is Status.SUCCESS, final.error
    assert sha256_of(tmp_path / "downloads" / "m.bin") == file.sha256
    (first_start, first_sent), (second_start, second_sent) = server.stats.paths["/m.bin"].ranges
    assert first_start == 0 and second_start == kept and second_sent == SIZE - kept


async def test_restart_resumes_from_the_snapshot(server: FaultServer, tmp_path: Path, autojump_clock: Any) -> None:
    """An engine shut down mid-download resumes from the snapshot's offset when opened again."""
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(rate_bps=100_000))
    spec = DownloadSpec(url=server.base_url + "/m.bin", dest="m.bin", sha256=file.sha256)
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path), disk=INLINE_DISK) as eng:
        op = await eng.submit(spec)
        await settle(eng, op.id, Status.IN_PROGRESS)
        await trio.sleep(4.2)
    kept = (tmp_path / "downloads" / "m.bin.part").stat().st_size
    assert 0 < kept < SIZE
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path), disk=INLINE_DISK) as eng:
        final = await eng.wait(op.id)
    assert final.status is Status.SUCCESS, final.error
    assert sha256_of(tmp_path / "downloads" / "m.bin") == file.sha256
    (_, _), (second_start, second_sent) = server.stats.paths["/m.bin"].ranges
    assert second_start == kept and second_sent == SIZE - kept


async def test_same_destination_returns_the_live_operation(
    server: FaultServer, tmp_path: Path, autojump_clock: Any
) -> None:
    """Submitting a download to a destination a live operation owns returns that operation."""
    server.add_file("/m.bin", size=SIZE, faults=Faults(rate_bps=100_000))
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path), disk=INLINE_DISK) as eng:
        first = await eng.submit(DownloadSpec(url=server.base_url + "/m.bin", dest="m.bin"))
        again = await eng.submit(DownloadSpec(url=server.base_url + "/m.bin", dest=str(tmp_path / "downloads/m.bin")))
        assert again.id == first.id
        await eng.cancel(first.id)
    assert not (tmp_path / "downloads" / "m.bin.part").exists()


async def test_a_failure_that_wrote_nothing_leaves_no_part_file(server: FaultServer, tmp_path: Path,
                                                                 autojump_clock: Any) -> None:
    """A 404 fails at once and leaves no empty .part behind; a drop after data keeps its .part."""
    server.add_file("/gone.bin", size=10, faults=Faults(status=404))
    server.add_file("/half.bin", size=SIZE, faults=Faults(drop_after=300_000))
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path, max_retries=0), disk=INLINE_DISK) as eng:
        gone = await eng.wait((await eng.submit(DownloadSpec(url=server.base_url + "/gone.bin", dest="gone.bin"))).id)
        half = await eng.wait((await eng.submit(DownloadSpec(url=server.base_url + "/half.bin", dest="half.bin"))).id)
    downloads = tmp_path / "downloads"
    assert gone.status is Status.FAILED and gone.error.code == "E_HTTP_CLIENT"
    assert not (downloads / "gone.bin.part").exists() and not (downloads / "gone.bin").exists()
    assert half.status is Status.EXHAUSTED and (downloads / "half.bin.part").stat().st_size > 0
