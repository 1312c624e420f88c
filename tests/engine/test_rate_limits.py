"""Receive-rate limits (SPEC 6.2), measured at the loopback server on the mock clock.

The server counts the body bytes it handed to the kernel; over a 5 s window
in steady state that is what the engine let through, give or take what sits
in the socket buffers, which stay full while the engine throttles. Virtual
time makes the figures independent of how busy the machine is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import DownloadSpec, Settings, Status, open_engine
from engine.testing import INLINE_DISK, FaultServer, Faults

MIB = 1024 * 1024


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    srv = FaultServer(send_buffer=64 * 1024)  # what the server books as sent is what the engine took
    async with srv.running():
        yield srv


def settings_for(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(initial_delay_s=1.0, jitter=0.0, download_root=str(tmp_path / "downloads"),
                    min_segment_bytes=MIB, **kw)


async def rate_over(server: FaultServer, path: str, start: float, seconds: float) -> float:
    """Bytes per second the server sent for ``path`` from virtual time ``start`` for ``seconds``."""
    await trio.sleep_until(start)
    before = server.stats.paths[path].body_bytes_sent
    await trio.sleep(seconds)
    return (server.stats.paths[path].body_bytes_sent - before) / seconds


async def test_engine_rate_limit_holds_over_all_connections_and_changes_live(
    server: FaultServer, tmp_path: Path, autojump_clock: Any
) -> None:
    """max_download_rate_bps holds within 10% over 5 s across several connections, and a change applies live."""
    file = server.add_file("/m.bin", size=120 * MIB, faults=Faults(rate_bps=2 * MIB))
    limit, lower = 6 * MIB, 3 * MIB
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path, max_download_rate_bps=limit),
                           disk=INLINE_DISK) as eng:
        began = trio.current_time()
        op = await eng.submit(DownloadSpec(url=server.base_url + "/m.bin", dest="m.bin", sha256=file.sha256,
                                           connections=8))
        first = await rate_over(server, "/m.bin", began + 5, 5)  # connections added and their buffers full
        assert server.stats.connections > 1  # one connection could not reach the limit here
        await eng.update_settings(max_download_rate_bps=lower)
        changed_at = trio.current_time()
        second = await rate_over(server, "/m.bin", changed_at + 1, 5)
        await eng.update_settings(max_download_rate_bps=0)  # and off again: the rest at full speed
        final = await eng.wait(op.id)
    assert final.status is Status.SUCCESS, final.error
    assert abs(first - limit) <= 0.1 * limit, first / MIB
    assert abs(second - lower) <= 0.1 * lower, second / MIB


async def test_download_rate_limit_holds(server: FaultServer, tmp_path: Path, autojump_clock: Any) -> None:
    """DownloadSpec(rate_limit_bps=...) holds within 10% over 5 s and keeps the download at one connection."""
    server.add_file("/m.bin", size=40 * MIB)
    limit = 4 * MIB
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path), disk=INLINE_DISK) as eng:
        began = trio.current_time()
        op = await eng.submit(DownloadSpec(url=server.base_url + "/m.bin", dest="m.bin", rate_limit_bps=limit))
        measured = await rate_over(server, "/m.bin", began + 2, 5)
        final = await eng.wait(op.id)
    assert final.status is Status.SUCCESS, final.error
    assert abs(measured - limit) <= 0.1 * limit, measured / MIB
    assert (tmp_path / "downloads" / "m.bin").stat().st_size == 40 * MIB
