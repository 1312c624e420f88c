"""Downloads over several connections (SPEC 6.2) against the loopback fault server, on the mock clock.

The server throttles each connection (``rate_bps`` per response), so on the
mock clock every added connection adds exactly its share of the rate: the
engine's choice of connections and the outcome are the same however loaded
the machine is. Time here is virtual; the bytes are real.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import DownloadSpec, Settings, Status, open_engine
from engine.testing import INLINE_DISK, FaultServer, Faults, content_bytes

MIB = 1024 * 1024
SIZE = 16 * MIB  # long enough to double from 1 to 16 connections, a second per step
PER_CONNECTION_BPS = 512 * 1024
SEGMENT = 128 * 1024


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    srv = FaultServer()
    async with srv.running():
        yield srv


def settings_for(tmp_path: Path, **kw: Any) -> Settings:
    values: dict[str, Any] = dict(initial_delay_s=1.0, jitter=0.0, download_root=str(tmp_path / "downloads"),
                                  min_segment_bytes=SEGMENT)
    values.update(kw)
    return Settings(**values)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def peak(server: FaultServer) -> int:
    return max(h.peak_connections for h in server.stats.hosts.values())


async def watch_connections(eng: Any, seen: set[int], *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Collect the ``connections`` of every progress event as it is published."""
    async with eng.subscribe() as sub:
        task_status.started()
        while True:
            event = await sub.receive()
            if event.type == "progress" and "connections" in event.fields:
                seen.add(event["connections"])


async def settle(eng: Any, op_id: str, *statuses: Status) -> Any:
    with trio.fail_after(10_000):
        while eng.get(op_id).status not in statuses:
            await trio.sleep(0.01)
    return eng.get(op_id)


@pytest.mark.parametrize("connections", [1, 4, 16])
async def test_file_exact_over_n_connections(
    server: FaultServer, tmp_path: Path, autojump_clock: Any, connections: int
) -> None:
    """A throttled file fetched with a cap of 1, 4 or 16 connections climbs to the cap and ends exact."""
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(rate_bps=PER_CONNECTION_BPS))
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path), disk=INLINE_DISK) as eng:
        shown: set[int] = set()
        async with trio.open_nursery() as nursery:
            await nursery.start(watch_connections, eng, shown)
            op = await eng.submit(DownloadSpec(url=server.base_url + "/m.bin", dest="m.bin", sha256=file.sha256,
                                               connections=connections))
            final = await eng.wait(op.id)
            nursery.cancel_scope.cancel()
    assert final.status is Status.SUCCESS, final.error
    dest = tmp_path / "downloads" / "m.bin"
    assert sha256_of(dest) == file.sha256 and not dest.with_name("m.bin.part").exists()
    assert peak(server) == connections
    assert max(shown) == connections
    if connections == 1:
        assert len(server.stats.paths["/m.bin"].records) == 1
    assert server.stats.paths["/m.bin"].body_bytes_sent >= SIZE


async def run_one(server: FaultServer, tmp_path: Path, spec: DownloadSpec, **settings: Any) -> tuple[Any, list[Any], set[int]]:
    """Run ``spec`` to its end; its final view, its events and every ``connections`` shown."""
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path, **settings),
                           disk=INLINE_DISK) as eng:
        shown: set[int] = set()
        async with eng.subscribe() as sub, trio.open_nursery() as nursery:
            await nursery.start(watch_connections, eng, shown)
            op = await eng.submit(spec)
            final = await eng.wait(op.id)
            nursery.cancel_scope.cancel()
            events = sub.drain()
    return final, events, shown


async def test_a_server_that_ignores_ranges_gets_one_connection(
    server: FaultServer, tmp_path: Path, autojump_clock: Any
) -> None:
    """No Accept-Ranges and 200 to every request: one connection, one request, the file exact."""
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(rate_bps=PER_CONNECTION_BPS, ignore_range=True))
    final, _, shown = await run_one(server, tmp_path, DownloadSpec(url=server.base_url + "/m.bin", dest="m.bin",
                                                                   sha256=file.sha256))
    assert final.status is Status.SUCCESS, final.error
    assert sha256_of(tmp_path / "downloads" / "m.bin") == file.sha256
    assert peak(server) == 1 and len(server.stats.paths["/m.bin"].records) == 1 and shown == {1}


async def test_a_server_that_refuses_a_second_range_is_used_with_one(
    server: FaultServer, tmp_path: Path, autojump_clock: Any
) -> None:
    """503 to the second connection: the download goes on with one, no retry, and the host is remembered."""
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(rate_bps=PER_CONNECTION_BPS, max_concurrent=1))
    server.add_file("/n.bin", size=SIZE, faults=Faults(rate_bps=PER_CONNECTION_BPS))
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path), disk=INLINE_DISK) as eng:
        async with eng.subscribe() as sub:
            op = await eng.submit(DownloadSpec(url=server.base_url + "/m.bin", dest="m.bin", sha256=file.sha256))
            final = await eng.wait(op.id)
            statuses = [r.status for r in server.stats.paths["/m.bin"].records]
            # a later download from the same host opens no second connection
            second = await eng.submit(DownloadSpec(url=server.base_url + "/n.bin", dest="n.bin"))
            second_final = await eng.wait(second.id)
            events = sub.drain()
    assert final.status is Status.SUCCESS and second_final.status is Status.SUCCESS
    assert sha256_of(tmp_path / "downloads" / "m.bin") == file.sha256
    assert statuses[0] == 200 and 503 in statuses and not [e for e in events if e.type == "retry_scheduled"]
    assert len(server.stats.paths["/n.bin"].records) == 1


async def test_a_drop_on_one_connection_retries_that_segment_only(
    server: FaultServer, tmp_path: Path, autojump_clock: Any
) -> None:
    """One connection drops while others run: its segment resumes inside the attempt, no retry is scheduled."""
    file = server.add_file("/m.bin", size=SIZE,
                           faults=Faults(rate_bps=PER_CONNECTION_BPS, drop_after=700_000, drop_times=1))
    final, events, shown = await run_one(server, tmp_path, DownloadSpec(
        url=server.base_url + "/m.bin", dest="m.bin", sha256=file.sha256, connections=4))
    assert final.status is Status.SUCCESS, final.error
    assert sha256_of(tmp_path / "downloads" / "m.bin") == file.sha256
    records = server.stats.paths["/m.bin"].records
    assert [r.outcome for r in records].count("dropped") == 1
    assert not [e for e in events if e.type == "retry_scheduled"] and final.retries_total == 0
    assert max(shown) > 1
    dropped = next(r for r in records if r.outcome == "dropped")
    resumed_at = (dropped.range_start or 0) + dropped.bytes_sent
    assert [r for r in records if r.range_start == resumed_at]  # the retry asked for the bytes after the drop


async def test_content_changed_on_one_connection_restarts_cleanly(
    server: FaultServer, tmp_path: Path, autojump_clock: Any
) -> None:
    """The file changes after two requests: the next range gets a 200 and the whole download restarts, exact."""
    server.add_file("/m.bin", size=SIZE, faults=Faults(rate_bps=PER_CONNECTION_BPS, change_after=2))
    final, events, _ = await run_one(server, tmp_path, DownloadSpec(url=server.base_url + "/m.bin", dest="m.bin"))
    assert final.status is Status.SUCCESS, final.error
    changed = server._files["/m.bin"][0].changed()
    assert (tmp_path / "downloads" / "m.bin").read_bytes() == changed.read()
    records = server.stats.paths["/m.bin"].records
    assert records[-1].status == 200 and records[-1].range_start == 0 and records[-1].outcome == "complete"


async def test_pause_and_resume_with_eight_connections_open(
    server: FaultServer, tmp_path: Path, autojump_clock: Any
) -> None:
    """Pause with 8 connections open closes them all within a second; resume continues every segment, exact."""
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(rate_bps=PER_CONNECTION_BPS))
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path), disk=INLINE_DISK) as eng:
        shown: set[int] = set()
        async with trio.open_nursery() as nursery:
            await nursery.start(watch_connections, eng, shown)
            op = await eng.submit(DownloadSpec(url=server.base_url + "/m.bin", dest="m.bin", sha256=file.sha256,
                                               connections=8))
            with trio.fail_after(60):
                while 8 not in shown:
                    await trio.sleep(0.05)
            assert server.stats.connections == 8 and eng.get(op.id).connections == 8
            await eng.pause(op.id)
            await settle(eng, op.id, Status.PAUSED)
            with trio.fail_after(1):  # the server sees every connection closed within a second
                while server.stats.connections:
                    await trio.sleep(0.01)
            assert eng.get(op.id).connections is None
            part = tmp_path / "downloads" / "m.bin.part"
            assert part.stat().st_size == SIZE  # sized up front
            requests = len(server.stats.paths["/m.bin"].records)
            await trio.sleep(30)
            assert len(server.stats.paths["/m.bin"].records) == requests  # nothing moves while paused
            await eng.resume(op.id)
            final = await eng.wait(op.id)
            nursery.cancel_scope.cancel()
    assert final.status is Status.SUCCESS, final.error
    assert sha256_of(tmp_path / "downloads" / "m.bin") == file.sha256
    records = server.stats.paths["/m.bin"].records
    resumed = records[requests:]
    assert all(r.status == 206 for r in resumed) and len(resumed) >= 2
    # every segment went on where it stopped: only bytes a split or the pause left in flight came twice
    assert sum(server.stats.paths["/m.bin"].refetched) <= 8 * 256 * 1024


async def test_engine_restart_resumes_every_segment_at_its_durable_end(
    server: FaultServer, tmp_path: Path, autojump_clock: Any
) -> None:
    """An engine stopped mid-download records each segment's durable end; the next one resumes them all."""
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(rate_bps=PER_CONNECTION_BPS))
    spec = DownloadSpec(url=server.base_url + "/m.bin", dest="m.bin", sha256=file.sha256, connections=4)
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path), disk=INLINE_DISK) as eng:
        op = await eng.submit(spec)
        await settle(eng, op.id, Status.IN_PROGRESS)
        await trio.sleep(4.3)
    first_run = len(server.stats.paths["/m.bin"].records)
    with trio.fail_after(1):
        while server.stats.connections:
            await trio.sleep(0.01)
    part = tmp_path / "downloads" / "m.bin.part"
    data = part.read_bytes()
    assert len(data) == SIZE
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path), disk=INLINE_DISK) as eng:
        final = await eng.wait(op.id)
    assert final.status is Status.SUCCESS, final.error
    assert sha256_of(tmp_path / "downloads" / "m.bin") == file.sha256
    records = server.stats.paths["/m.bin"].records
    resumed = records[first_run:]
    assert resumed and all(r.status == 206 for r in resumed)
    for r in resumed:  # each resume point had its bytes before it on disk already
        start = r.range_start or 0
        before = data[max(0, start - 4096):start]
        assert before == content_bytes("/m.bin", SIZE, max(0, start - 4096), start)


async def test_a_full_disk_shows_when_the_part_is_sized_up_front(
    server: FaultServer, tmp_path: Path, autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fallocate's ENOSPC fails the download as E_DISK_FULL before a byte is written, leaving no .part."""
    import errno

    from engine import _platform

    def full(fd: int, size: int) -> bool:
        os.ftruncate(fd, size // 2)  # a file system that reserved part of it, then gave up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_platform, "preallocate", full)
    server.add_file("/m.bin", size=SIZE, faults=Faults(rate_bps=PER_CONNECTION_BPS))
    final, _, _ = await run_one(server, tmp_path, DownloadSpec(url=server.base_url + "/m.bin", dest="m.bin"))
    assert final.status is Status.FAILED and final.error is not None and final.error.code == "E_DISK_FULL"
    assert not (tmp_path / "downloads" / "m.bin.part").exists()
