"""Downloads over several connections (SPEC 6.2) against the loopback fault server, on the mock clock.

The server throttles each connection (``rate_bps`` per response), so on the
mock clock every added connection adds exactly its share of the rate: the
engine's choice of connections and the outcome are the same however loaded
the machine is. Time here is virtual; the bytes are real.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import DownloadSpec, Settings, Status, open_engine
from engine.testing import INLINE_DISK, FaultServer, Faults, content_bytes

MIB = 1024 * 1024
SIZE = 8 * MIB
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
