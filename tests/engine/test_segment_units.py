"""The pieces under a segmented download: the table, the bucket, the prefix hash, the rate parser, the specs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import DownloadSpec, Settings, _platform
from engine._download._kind import DownloadKind
from engine._download._ratelimit import TokenBucket, read_size
from engine._download._segments import SegmentTable
from engine._download._wire import PrefixHasher
from engine._errors import RefusedError
from engine._projects._file import parse_project
from engine._units import parse_rate

MIB = 1024 * 1024


def test_a_table_splits_without_touching_written_bytes_and_records_durable_ends() -> None:
    """Splitting keeps written bytes with their owner; the snapshot form keeps only durable ends."""
    table = SegmentTable.whole(100)
    head = table.segments[0]
    head.pos, head.durable = 30, 20
    tail = table.split(head, 65)
    assert (head.start, head.end, tail.start, tail.end, tail.pos) == (0, 65, 65, 100, 65)
    with pytest.raises(ValueError):
        table.split(head, 10)  # before what was written
    assert table.to_state() == [[0, 65, 20], [65, 100, 65]]
    assert table.prefix() == 30 and table.prefix("durable") == 20
    back = SegmentTable.from_state(table.to_state(), 100)
    assert back is not None and [(s.start, s.end, s.pos) for s in back] == [(0, 65, 20), (65, 100, 65)]


def test_finished_neighbours_merge_and_bad_tables_are_refused() -> None:
    """Done neighbours merge in the snapshot; a table that does not cover the file exactly is None."""
    table = SegmentTable.whole(90)
    first = table.segments[0]
    second = table.split(first, 30)
    third = table.split(second, 60)
    for seg in (first, second):
        seg.pos = seg.durable = seg.end
    third.durable = third.pos = 70
    assert table.to_state() == [[0, 60, 60], [60, 90, 70]]
    for bad in ([[0, 50, 10]], [[0, 50, 60], [50, 90, 50]], [[0, 50, 0], [40, 90, 40]], "x", [], [[0, 90]],
                [[0, 90, True]]):
        assert SegmentTable.from_state(bad, 90) is None, bad


async def test_a_shared_bucket_holds_its_rate_for_all_takers(autojump_clock: Any) -> None:
    """Four takers of one bucket together get the bucket's rate, and a live change applies within a second."""
    rate = [1000.0]
    bucket = TokenBucket(lambda: rate[0])
    taken = [0]

    async def taker() -> None:
        while True:
            await bucket.take(100)
            taken[0] += 100

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(taker)
        await trio.sleep(1)
        start = taken[0]
        await trio.sleep(10)
        assert abs((taken[0] - start) / 10 - 1000) <= 50
        rate[0] = 4000.0
        await trio.sleep(1)
        start = taken[0]
        await trio.sleep(10)
        assert abs((taken[0] - start) / 10 - 4000) <= 200
        nursery.cancel_scope.cancel()
    rate[0] = 0.0  # unlimited: a take returns at once, however much was taken
    with trio.fail_after(0.001):
        await bucket.take(10**9)
    assert bucket.waiting == 0 and read_size((bucket,), 1 << 20) == 1 << 20


def test_the_prefix_hasher_reads_the_file_back_in_order(tmp_path: Path) -> None:
    """The sha256 of the contiguous prefix, however it grew, equals the file's."""
    data = os.urandom(3_000_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        hasher = PrefixHasher(lambda n, at: _platform.pread(fd, n, at))
        for upto in (10, 5, 1_000_000, 2_999_999, 3_000_000):
            hasher.advance(upto)
        assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
        seeded = hashlib.sha256(data[:1000])
        resumed = PrefixHasher(lambda n, at: _platform.pread(fd, n, at), hasher=seeded, start=1000)
        resumed.advance(len(data))
        assert resumed.hexdigest() == hashlib.sha256(data).hexdigest()
    finally:
        os.close(fd)


def test_preallocate_sizes_the_file_natively_and_sparse(tmp_path: Path) -> None:
    """The .part gets its full size up front, with fallocate and with the sparse fallback."""
    from engine._platform import _select

    before = set(_select._forced)  # what the run forced (--platform-fallback) comes back after
    for forced in (False, True):
        path = tmp_path / f"p{forced}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        try:
            if forced:
                _platform.force_fallback(*before, "fallocate")
            _platform.preallocate(fd, 5_000_000)
            assert os.fstat(fd).st_size == 5_000_000
        finally:
            _platform.force_fallback(*before)
            os.close(fd)


def test_rates_parse_like_curl() -> None:
    """--limit-rate takes 10M, 500k, 1.5m, 2G and plain bytes; anything else is refused."""
    assert parse_rate("10M") == 10 * 1024 * 1024 and parse_rate("500k") == 512_000
    assert parse_rate("4096") == 4096 and parse_rate("2G") == 2 << 30 and parse_rate("1.5m") == 1572864
    for bad in ("", "fast", "-1", "M", "nan", "inf"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_spec_fields_are_validated(tmp_path: Path) -> None:
    """connections, rate_limit_bps and mirrors are checked like the rest of a spec, naming the field."""
    kind, settings = DownloadKind(), Settings(download_root=str(tmp_path))
    ok = kind.validate(DownloadSpec(url="http://a.example/m.bin", connections=4, rate_limit_bps=1000,
                                    mirrors=["https://b.example/m.bin"]), settings)
    assert ok.mirrors == ["https://b.example/m.bin"]
    assert kind.describe(ok)["mirrors"] == ["https://b.example/m.bin"] and kind.describe(ok)["connections"] == 4
    for spec, field in ((DownloadSpec(url="http://a.example/m", connections=0), "connections"),
                        (DownloadSpec(url="http://a.example/m", rate_limit_bps=-1), "rate_limit_bps"),
                        (DownloadSpec(url="http://a.example/m", mirrors=["ftp://b.example/m"]), "mirrors[0]")):
        with pytest.raises(RefusedError) as info:
            kind.validate(spec, settings)
        assert info.value.field == field


def test_project_files_take_mirrors(tmp_path: Path) -> None:
    """A project file's download step takes "mirrors"; a mirror that is not a string is refused."""
    spec = parse_project({"name": "p", "steps": [{"kind": "download", "url": "http://a.example/m.bin",
                                                  "mirrors": ["http://b.example/m.bin"]}]}, tmp_path)
    step = spec.steps[0]
    assert isinstance(step, DownloadSpec) and step.mirrors == ["http://b.example/m.bin"]
    with pytest.raises(RefusedError) as info:
        parse_project({"name": "p", "steps": [{"kind": "download", "url": "http://a.example/m.bin",
                                               "mirrors": [1]}]}, tmp_path)
    assert info.value.field == "steps[0].mirrors"


class _Ctx:
    """The little of an attempt context that segment assignment reads."""

    op_id = "op"
    settings = Settings(min_segment_bytes=100)


def _transfer(table: SegmentTable) -> Any:
    from engine._download._hosts import HostConnections
    from engine._download._multi import SegmentedTransfer

    async def never(start: int, end: int) -> Any:
        raise AssertionError("no request here")

    return SegmentedTransfer(_Ctx(), -1, table, never, HostConnections(), "h", 8)  # type: ignore[arg-type]


async def test_work_stealing_takes_half_and_a_far_slower_connection_hands_over_all(autojump_clock: Any) -> None:
    """A free connection takes half of the largest remainder; from a far slower owner it takes all that is left."""
    from engine._download._multi import _Conn

    table = SegmentTable.whole(10 * MIB)
    transfer = _transfer(table)
    owner, thief = _Conn(1, extra=False), _Conn(2, extra=True)
    seg = table.segments[0]
    seg.owner, seg.pos = owner, MIB
    await trio.sleep(1)
    owner.got, thief.got = 1_000, 1_100  # about as fast: half of the 9 MiB left
    tail = transfer._assign(thief)
    assert (seg.end, tail.start, tail.end, tail.owner) == (5.5 * MIB, 5.5 * MIB, 10 * MIB, thief)
    seg.pos = 2 * MIB  # the owner went on: the thief's segment has the most left now
    third = _Conn(3, extra=True)
    third.got = 100_000  # far faster than the thief that owns the largest remainder
    handed = transfer._assign(third)
    assert handed is tail and tail.owner is third  # nothing written there yet: the whole segment changes hands
    tail.owner = None
    assert transfer._assign(_Conn(4, extra=True)) is tail  # an unowned segment goes first
    tail.pos = tail.end
    seg.end = seg.pos + 150  # 150 bytes left: no piece below min_segment_bytes (100)
    assert transfer._assign(_Conn(5, extra=True)) is None
