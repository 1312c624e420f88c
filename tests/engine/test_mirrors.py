"""Mirrors (SPEC 6.2): other URLs of one file, tried when the main one fails, each its own breaker scope."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import DownloadSpec, Settings, Status, open_engine
from engine._download._kind import DownloadKind
from engine.testing import INLINE_DISK, FaultServer, Faults

MIB = 1024 * 1024
SIZE = 2 * MIB


@pytest.fixture
async def servers() -> AsyncIterator[list[FaultServer]]:
    """Three servers on three loopback addresses: three hosts, three breaker scopes."""
    found = [FaultServer(host=f"127.0.0.{i}") for i in (1, 2, 3)]
    async with found[0].running(), found[1].running(), found[2].running():
        yield found


def settings_for(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(initial_delay_s=1.0, jitter=0.0, download_root=str(tmp_path / "downloads"),
                    min_segment_bytes=256 * 1024, **kw)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_mirror_that_404s_and_one_that_drops(
    servers: list[FaultServer], tmp_path: Path, autojump_clock: Any
) -> None:
    """Main URL and first mirror 404; the second drops once and the next attempt resumes it there: exact."""
    main, first, second = servers
    main.add_file("/other.bin", size=SIZE)  # /m.bin is not there: 404
    first.add_file("/other.bin", size=SIZE)
    file = second.add_file("/m.bin", size=SIZE, seed="m", faults=Faults(rate_bps=MIB, drop_after=MIB, drop_times=1))
    spec = DownloadSpec(url=main.base_url + "/m.bin", dest="m.bin", sha256=file.sha256,
                        mirrors=[first.base_url + "/m.bin", second.base_url + "/m.bin"], connections=1)
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path), disk=INLINE_DISK) as eng:
        async with eng.subscribe() as sub:
            op = await eng.submit(spec)
            final = await eng.wait(op.id)
            events = sub.drain()
    assert final.status is Status.SUCCESS, final.error
    assert sha256_of(tmp_path / "downloads" / "m.bin") == file.sha256
    assert [r.status for r in main.stats.paths["/m.bin"].records] == [404]
    assert [r.status for r in first.stats.paths["/m.bin"].records] == [404]
    records = second.stats.paths["/m.bin"].records
    assert records[0].outcome == "dropped" and records[-1].status == 206  # resumed on the mirror
    assert [e["error"]["code"] for e in events if e.type == "retry_scheduled"] == ["E_NET_INTERRUPTED"]
    assert final.spec["mirrors"] == spec.mirrors


async def test_without_sha256_a_mirror_serves_the_whole_file(
    servers: list[FaultServer], tmp_path: Path, autojump_clock: Any
) -> None:
    """The main URL drops then 503s; without a sha256 the mirror starts the file over and serves all of it."""
    main, mirror, _ = servers
    main.add_file("/m.bin", size=SIZE, seed="m", faults=Faults(rate_bps=MIB, drop_after=MIB, drop_times=1))
    file = mirror.add_file("/m.bin", size=SIZE, seed="m")
    spec = DownloadSpec(url=main.base_url + "/m.bin", dest="m.bin", mirrors=[mirror.base_url + "/m.bin"])
    async with open_engine(state_dir=tmp_path / "state", settings=settings_for(tmp_path), disk=INLINE_DISK) as eng:
        op = await eng.submit(spec)
        with trio.fail_after(100):
            while not main.stats.paths.get("/m.bin") or main.stats.paths["/m.bin"].records[0].outcome != "dropped":
                await trio.sleep(0.1)
        main.add_file("/m.bin", size=SIZE, seed="m", faults=Faults(status=503))  # the main host is down now
        final = await eng.wait(op.id)
    assert final.status is Status.SUCCESS, final.error
    assert sha256_of(tmp_path / "downloads" / "m.bin") == file.sha256
    records = mirror.stats.paths["/m.bin"].records
    assert [(r.status, r.range_start) for r in records] == [(200, 0)]  # the whole file, not a range


def test_each_source_is_its_own_breaker_scope() -> None:
    """The breaker scope follows the source the next attempt starts from."""
    kind = DownloadKind()
    spec = DownloadSpec(url="http://a.example/m.bin", dest="/tmp/m.bin", mirrors=["http://b.example:8080/m.bin"])
    assert kind.scope(spec, {}) == "a.example"
    assert kind.scope(spec, {"source": 1}) == "b.example:8080"
    assert kind.scope(spec, {"source": 7}) == "a.example"
