"""The download kind, one attempt at a time, against the real fault server.

Each test drives `DownloadKind.attempt` directly with a real `AttemptContext`
whose callbacks record progress and checkpoints, so what is proven here is the
kind's own contract: what it writes, what it records as durable, what it asks
the server for, and how it classifies what goes wrong.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from engine._download import _part as _fileio
from engine._download._kind import DownloadKind, dest_within_root, download_paths, redact_url, safe_basename
from engine._errors import AttemptFailed, RefusedError
from engine._kinds import AttemptContext, Kind
from engine._settings import Settings
from engine._specs import DownloadSpec
from engine.testing import INLINE_DISK, FaultServer, Faults, VirtualFile

SIZE = 300_000
CUT = 100_000


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    srv = FaultServer()
    async with srv.running():
        yield srv


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(follow_redirects=True, max_redirects=10) as c:
        yield c


@attrs.define(eq=False)
class Runner:
    """Runs attempts of one download like the engine would, recording what the kind reports."""

    client: httpx.AsyncClient
    spec: DownloadSpec
    settings: Settings
    kind: DownloadKind = attrs.Factory(DownloadKind)
    state: dict[str, Any] = attrs.Factory(dict)
    attempts: int = 0
    progress: list[tuple[int, int | None]] = attrs.Factory(list)
    checkpoints: list[dict[str, Any]] = attrs.Factory(list)

    @property
    def dest(self) -> Path:
        return download_paths(self.spec)[0]

    @property
    def part(self) -> Path:
        return download_paths(self.spec)[1]

    def context(self) -> AttemptContext:
        async def on_checkpoint() -> None:
            # Data before metadata: whatever a snapshot records is already in the .part.
            offset = self.state.get("offset", 0)
            if offset:
                assert self.part.stat().st_size >= offset
            self.checkpoints.append(dict(self.state))
            await trio.lowlevel.checkpoint()

        def on_progress(done: int, total: int | None, extra: dict[str, Any]) -> None:
            self.progress.append((done, total))

        self.attempts += 1
        return AttemptContext(
            "op-1", self.spec, self.state, self.attempts, self.client, lambda: self.settings,
            on_progress, on_checkpoint, lambda: None, lambda lines: None, trio.current_time,
            disk=INLINE_DISK,
        )

    async def run(self) -> AttemptContext:
        ctx = self.context()
        await self.kind.attempt(ctx)
        return ctx

    async def fail(self) -> tuple[AttemptFailed, AttemptContext]:
        ctx = self.context()
        with pytest.raises(AttemptFailed) as info:
            await self.kind.attempt(ctx)
        return info.value, ctx


@pytest.fixture
def make(client: httpx.AsyncClient, tmp_path: Path) -> Callable[..., Runner]:
    def make(url: str, *, dest: str | None = "model.bin", sha256: str | None = None,
             kind: DownloadKind | None = None, **settings: Any) -> Runner:
        cfg = Settings(download_root=str(tmp_path), **settings)
        spec = DownloadKind().validate(DownloadSpec(url=url, dest=dest, sha256=sha256), cfg)
        return Runner(client, spec, cfg, kind or DownloadKind())

    return make


def records(server: FaultServer, path: str) -> list[tuple[int, int | None, int]]:
    """``(status, range_start, bytes_sent)`` of every request for ``path``."""
    return [(r.status, r.range_start, r.bytes_sent) for r in server.stats.paths[path].records]


# --- transfers -----------------------------------------------------------------


async def test_clean_download_is_exact(server: FaultServer, make: Callable[..., Runner]) -> None:
    """A clean download lands at dest with the exact bytes and sha256, and no .part is left."""
    file = server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin", sha256=file.sha256)
    ctx = await run.run()
    assert hashlib.sha256(run.dest.read_bytes()).hexdigest() == file.sha256
    assert not run.part.exists()
    assert ctx.bytes_received == SIZE and ctx.durable_bytes == SIZE and ctx.bytes_discarded == 0
    assert run.progress[-1] == (SIZE, SIZE)
    assert run.state["complete"] and run.state["offset"] == SIZE
    assert records(server, "/m.bin") == [(200, 0, SIZE)]


async def test_resume_after_drop_fetches_only_the_rest(server: FaultServer, make: Callable[..., Runner]) -> None:
    """After a dropped connection the next attempt sends Range from the durable offset and gets only the rest."""
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(drop_after=CUT, drop_times=1))
    run = make(server.base_url + "/m.bin")
    exc, first = await run.fail()
    assert exc.error.code == "E_NET_INTERRUPTED"
    offset = run.state["offset"]
    assert 0 < offset <= CUT and run.part.stat().st_size == offset
    assert first.durable_bytes == offset
    await run.run()
    assert run.dest.read_bytes() == file.read()
    assert records(server, "/m.bin")[1] == (206, offset, SIZE - offset)


async def test_server_ignoring_range_restarts_and_counts_discarded(
    server: FaultServer, make: Callable[..., Runner]
) -> None:
    """A 200 answer to a range request restarts from 0 and counts the old bytes as discarded."""
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(drop_after=CUT, drop_times=1, ignore_range=True))
    run = make(server.base_url + "/m.bin", sha256=file.sha256)
    await run.fail()
    offset = run.state["offset"]
    assert offset > 0
    ctx = await run.run()
    assert ctx.bytes_discarded == offset
    assert run.dest.read_bytes() == file.read()
    assert records(server, "/m.bin")[1] == (200, 0, SIZE)


async def test_changed_file_restarts_with_new_content(server: FaultServer, make: Callable[..., Runner]) -> None:
    """When the file changes between attempts, If-Range makes the server send it whole and the new version wins."""
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(drop_after=CUT, drop_times=1, change_after=1))
    new = file.changed()
    run = make(server.base_url + "/m.bin", sha256=new.sha256)
    await run.fail()
    old_etag, offset = run.state["etag"], run.state["offset"]
    ctx = await run.run()
    assert run.dest.read_bytes() == new.read()
    assert ctx.bytes_discarded == offset
    assert run.state["etag"] == new.etag != old_etag
    assert records(server, "/m.bin")[1] == (200, 0, SIZE)


async def test_lying_content_range_discards_and_refetches(server: FaultServer, make: Callable[..., Runner]) -> None:
    """A 206 for another range than asked discards the .part and the same attempt refetches from 0."""
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(drop_after=CUT, drop_times=1, bad_content_range=True))
    run = make(server.base_url + "/m.bin", sha256=file.sha256)
    await run.fail()
    offset = run.state["offset"]
    ctx = await run.run()
    assert ctx.bytes_discarded == offset
    assert run.dest.read_bytes() == file.read()
    statuses = [(status, start) for status, start, _sent in records(server, "/m.bin")]
    assert statuses == [(200, 0), (206, 0), (200, 0)]
    assert {"offset": 0} in run.checkpoints  # the discard was recorded before new data


async def test_short_body_is_interrupted_then_resumes(server: FaultServer, make: Callable[..., Runner]) -> None:
    """A body shorter than Content-Length is E_NET_INTERRUPTED, never success, and the next attempt resumes."""
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(short_by=1000))
    run = make(server.base_url + "/m.bin")
    exc, _ = await run.fail()
    assert exc.error.code == "E_NET_INTERRUPTED" and exc.error.retryable
    assert not run.dest.exists()
    assert run.state["offset"] == SIZE - 1000
    server.add_file("/m.bin", size=SIZE)  # same content, the fault is gone
    await run.run()
    assert run.dest.read_bytes() == file.read()
    assert records(server, "/m.bin")[1] == (206, SIZE - 1000, 1000)


async def test_416_with_complete_part_finishes_without_refetch(
    server: FaultServer, make: Callable[..., Runner]
) -> None:
    """A .part already at full size gets a 416 */size and is verified and renamed without any body."""
    file = server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin", sha256=file.sha256)
    run.part.write_bytes(file.read())
    run.state.update(offset=SIZE, etag=file.etag)
    ctx = await run.run()
    assert run.dest.read_bytes() == file.read() and not run.part.exists()
    assert ctx.bytes_received == 0
    assert records(server, "/m.bin") == [(416, None, 0)]


@pytest.mark.parametrize("total_known", [False, True])
async def test_oversized_leftover_part_restarts(
    server: FaultServer, make: Callable[..., Runner], total_known: bool
) -> None:
    """A leftover .part larger than the server's file is discarded and the download restarts cleanly."""
    file = server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin", sha256=file.sha256)
    run.part.write_bytes(b"x" * (SIZE + 5000))
    run.state.update(offset=SIZE + 5000, etag=file.etag)
    if total_known:
        run.state["total"] = SIZE
    ctx = await run.run()
    assert run.dest.read_bytes() == file.read()
    assert ctx.bytes_discarded == SIZE + 5000
    statuses = [status for status, _start, _sent in records(server, "/m.bin")]
    assert statuses == ([200] if total_known else [416, 200])


async def test_unrecorded_tail_is_cut_back(server: FaultServer, make: Callable[..., Runner]) -> None:
    """Bytes past the recorded offset (a crash before the snapshot) are cut off and fetched again."""
    file = server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin", sha256=file.sha256)
    run.part.write_bytes(file.read(0, CUT) + b"garbage written after the last checkpoint")
    run.state.update(offset=CUT, etag=file.etag, total=SIZE)
    await run.run()
    assert run.dest.read_bytes() == file.read()
    assert records(server, "/m.bin") == [(206, CUT, SIZE - CUT)]


async def test_missing_part_restarts_from_what_is_there(server: FaultServer, make: Callable[..., Runner]) -> None:
    """A recorded offset whose .part vanished restarts from 0 instead of trusting the snapshot."""
    file = server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin")
    run.state.update(offset=CUT, etag=file.etag, total=SIZE)
    await run.run()
    assert run.dest.read_bytes() == file.read()
    assert records(server, "/m.bin") == [(200, 0, SIZE)]


async def test_stall_is_a_timeout(server: FaultServer, make: Callable[..., Runner], autojump_clock: Any) -> None:
    """No byte for stall_timeout_s is E_NET_TIMEOUT, long before the server's stall would end."""
    server.add_file("/m.bin", size=SIZE, faults=Faults(stall_after=CUT, stall_s=3600, stall_times=1))
    run = make(server.base_url + "/m.bin", stall_timeout_s=30)
    began = trio.current_time()
    exc, _ = await run.fail()
    assert exc.error.code == "E_NET_TIMEOUT"
    assert 30 <= trio.current_time() - began < 60
    assert run.state["offset"] == CUT


async def test_checkpoints_record_only_fsynced_offsets(
    server: FaultServer, make: Callable[..., Runner], autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During a slow transfer every checkpointed offset was covered by an fsync before it was recorded."""
    fsynced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        fsynced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(_fileio.os, "fsync", fsync)
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(rate_bps=50_000))
    run = make(server.base_url + "/m.bin", checkpoint_interval_s=1.0)

    ctx = run.context()
    seen: list[int] = []
    real_checkpoint = ctx._on_checkpoint

    async def on_checkpoint() -> None:
        offset = run.state.get("offset", 0)
        assert offset == 0 or (fsynced and fsynced[-1] >= offset)
        seen.append(offset)
        await real_checkpoint()

    ctx._on_checkpoint = on_checkpoint
    await run.kind.attempt(ctx)
    assert run.dest.read_bytes() == file.read()
    assert len(seen) >= 4 and seen == sorted(seen)


async def test_cancellation_records_the_durable_offset(
    server: FaultServer, make: Callable[..., Runner], autojump_clock: Any
) -> None:
    """A cancelled attempt (pause) fsyncs and records its offset, and the next attempt resumes there."""
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(rate_bps=50_000))
    run = make(server.base_url + "/m.bin", sha256=file.sha256)
    with trio.move_on_after(2.5):
        await run.run()
    offset = run.state["offset"]
    assert 0 < offset < SIZE and run.part.read_bytes() == file.read(0, offset)
    await run.run()
    assert run.dest.read_bytes() == file.read()
    assert records(server, "/m.bin")[1][:2] == (206, offset)


async def test_recorded_completion_is_finished_without_a_request(
    server: FaultServer, make: Callable[..., Runner]
) -> None:
    """A crash between the 'complete' checkpoint and the rename is finished by renaming, not refetching."""
    file = server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin")
    run.part.write_bytes(file.read())
    run.state.update(offset=SIZE, total=SIZE, complete=True)
    await run.run()
    assert run.dest.read_bytes() == file.read() and not run.part.exists()
    assert "/m.bin" not in server.stats.paths


async def test_no_content_length_completes_on_clean_close(server: FaultServer, make: Callable[..., Runner]) -> None:
    """A body without Content-Length is complete when the server closes cleanly (sha256 guards it)."""
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(no_length=True))
    run = make(server.base_url + "/m.bin", sha256=file.sha256)
    await run.run()
    assert run.dest.read_bytes() == file.read()


# --- HTTP errors ---------------------------------------------------------------


async def test_503_with_retry_after(server: FaultServer, make: Callable[..., Runner]) -> None:
    """A 503 with Retry-After is a retry-worthy overload carrying the server's delay."""
    server.add_file("/m.bin", size=SIZE, faults=Faults(status=503, retry_after="120"))
    run = make(server.base_url + "/m.bin")
    exc, _ = await run.fail()
    assert exc.error.code == "E_SERVER_OVERLOAD" and exc.error.retryable
    assert exc.retry_after_s == 120
    assert not run.dest.exists()


@pytest.mark.parametrize(("status", "code"), [(404, "E_HTTP_CLIENT"), (410, "E_HTTP_CLIENT"),
                                              (403, "E_AUTH"), (401, "E_AUTH")])
async def test_client_errors_are_not_retryable(
    server: FaultServer, make: Callable[..., Runner], status: int, code: str
) -> None:
    """4xx answers map to E_HTTP_CLIENT, and 401/403 to E_AUTH, neither retry-worthy; no empty .part is left."""
    server.add_file("/m.bin", size=SIZE, faults=Faults(status=status))
    run = make(server.base_url + "/m.bin")
    exc, _ = await run.fail()
    assert exc.error.code == code and not exc.error.retryable
    assert str(status) in exc.error.message
    assert not os.path.lexists(run.part) and not os.path.lexists(run.dest)  # SPEC 6.1


async def test_unreachable_server(make: Callable[..., Runner]) -> None:
    """A refused connection is the retry-worthy E_NET_UNREACHABLE."""
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = make(f"http://127.0.0.1:{port}/m.bin")
    exc, _ = await run.fail()
    assert exc.error.code == "E_NET_UNREACHABLE" and exc.error.retryable


# --- integrity -----------------------------------------------------------------


async def test_sha256_mismatch_deletes_part(server: FaultServer, make: Callable[..., Runner]) -> None:
    """A wrong sha256 is E_INTEGRITY: the .part is deleted, the state reset, dest never written."""
    server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin", sha256="0" * 64)
    exc, ctx = await run.fail()
    assert exc.error.code == "E_INTEGRITY" and exc.error.retryable
    assert not run.part.exists() and not run.dest.exists()
    assert run.state == {} and ctx.bytes_discarded == SIZE


async def test_resumed_sha256_covers_the_whole_file(server: FaultServer, make: Callable[..., Runner]) -> None:
    """The sha256 of a resumed download includes the preserved prefix, reread from disk."""
    file = server.add_file("/m.bin", size=SIZE, faults=Faults(drop_after=CUT, drop_times=2))
    run = make(server.base_url + "/m.bin", sha256=file.sha256)
    await run.fail()
    await run.fail()  # the second drop is past the first offset: a prefix from two attempts
    await run.run()
    assert run.dest.read_bytes() == file.read()

    # The same story with one byte of the preserved prefix corrupted on disk fails the check.
    server.add_file("/n.bin", size=SIZE, faults=Faults(drop_after=CUT, drop_times=1))
    other = make(server.base_url + "/n.bin", dest="n.bin", sha256=VirtualFile(seed="/n.bin", size=SIZE).sha256)
    await other.fail()
    with other.part.open("r+b") as f:
        f.write(b"\xff")
    exc, _ = await other.fail()
    assert exc.error.code == "E_INTEGRITY"


# --- redirects -----------------------------------------------------------------


async def test_redirects_followed_and_resume_uses_original_url(
    server: FaultServer, make: Callable[..., Runner]
) -> None:
    """Redirect chains are followed, and a resume starts again from the original URL, not the target."""
    server.add_file("/start", size=1, faults=Faults(redirect_to="/signed/m.bin"))
    file = server.add_file("/signed/m.bin", size=SIZE, faults=Faults(redirects=3, drop_after=CUT, drop_times=1))
    run = make(server.base_url + "/start", sha256=file.sha256)
    await run.fail()
    offset = run.state["offset"]
    await run.run()
    assert run.dest.read_bytes() == file.read()
    assert server.stats.paths["/start"].requests == 2
    signed = records(server, "/signed/m.bin")
    assert [status for status, _s, _b in signed] == [302, 302, 302, 200, 302, 302, 302, 206]
    assert signed[-1] == (206, offset, SIZE - offset)


# --- disk -----------------------------------------------------------------------


def failing_writer(after: int, err: int) -> Callable[[int, Any], int]:
    """An os.write that accepts ``after`` bytes in total, then fails with ``err``."""
    written = 0

    def write(fd: int, data: Any) -> int:
        nonlocal written
        room = after - written
        if room <= 0:
            raise OSError(err, os.strerror(err))
        n = os.write(fd, bytes(data[:room]))
        written += n
        return n

    return write


async def test_disk_full_while_writing_keeps_part(server: FaultServer, make: Callable[..., Runner]) -> None:
    """ENOSPC while writing is E_DISK_FULL; the .part and its recorded offset stay for a later resume."""
    file = server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin", sha256=file.sha256, kind=DownloadKind(write=failing_writer(CUT, errno.ENOSPC)))
    exc, _ = await run.fail()
    assert exc.error.code == "E_DISK_FULL" and not exc.error.retryable
    assert str(run.part) in exc.error.message
    assert run.state["offset"] == CUT and run.part.read_bytes() == file.read(0, CUT)
    run.kind = DownloadKind()
    await run.run()
    assert run.dest.read_bytes() == file.read()
    assert records(server, "/m.bin")[1][:2] == (206, CUT)


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS])
async def test_permission_denied_is_classified(server: FaultServer, make: Callable[..., Runner], err: int) -> None:
    """EACCES/EROFS from the file system is E_PERMISSION (injected: the tests run as root, which chmod cannot stop)."""
    server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin", kind=DownloadKind(write=failing_writer(0, err)))
    exc, _ = await run.fail()
    assert exc.error.code == "E_PERMISSION" and not exc.error.retryable
    assert not run.part.exists() and run.state["offset"] == 0  # no empty .part left (SPEC 6.1)


async def test_too_little_free_space_is_refused_before_writing(
    server: FaultServer, make: Callable[..., Runner]
) -> None:
    """When statvfs shows less free space than remains, the attempt fails with E_DISK_FULL naming both sizes."""
    server.add_file("/m.bin", size=SIZE)

    def statvfs(path: str) -> os.statvfs_result:
        return os.statvfs_result((4096, 4096, 1000, 10, 10, 100, 10, 10, 0, 255))  # 40960 bytes free

    run = make(server.base_url + "/m.bin", kind=DownloadKind(statvfs=statvfs))
    exc, ctx = await run.fail()
    assert exc.error.code == "E_DISK_FULL"
    assert "40960" in exc.error.message and str(SIZE) in exc.error.message
    assert ctx.bytes_received == 0 and not run.part.exists()  # disk full before the first byte: no .part


async def test_missing_parent_directory_is_created(server: FaultServer, make: Callable[..., Runner]) -> None:
    """A destination in a directory that does not exist yet gets its directories created."""
    file = server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin", dest="models/checkpoints/m.bin")
    await run.run()
    assert run.dest.read_bytes() == file.read()


# --- Content-Disposition ---------------------------------------------------------


async def test_content_disposition_names_a_nameless_url(
    server: FaultServer, make: Callable[..., Runner], tmp_path: Path
) -> None:
    """A URL without a file name takes the safe base name from Content-Disposition; an unsafe one is reduced."""
    file = server.add_file("/", size=SIZE, faults=Faults(filename="../../.evil model.bin"))
    run = make(server.base_url + "/", dest=None)
    assert run.dest == tmp_path / "download"
    await run.run()
    assert (tmp_path / "evil model.bin").read_bytes() == file.read()
    assert run.state["final_dest"] == str(tmp_path / "evil model.bin")
    assert not run.dest.exists() and not run.part.exists()


async def test_content_disposition_never_overrides_a_named_url(
    server: FaultServer, make: Callable[..., Runner], tmp_path: Path
) -> None:
    """A URL or destination that names the file keeps its name whatever Content-Disposition says."""
    server.add_file("/m.bin", size=SIZE, faults=Faults(filename="other.bin"))
    run = make(server.base_url + "/m.bin", dest=None)
    await run.run()
    assert (tmp_path / "m.bin").exists() and not (tmp_path / "other.bin").exists()


# --- validation, naming, redaction ------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://example.org/m.bin", "file:///etc/passwd", "javascript:alert(1)",
                                 "http:///m.bin", "example.org/m.bin", "http://exa mple.org/m.bin", "",
                                 "http://example.org:99999/m.bin"])
def test_bad_urls_are_refused(url: str, tmp_path: Path) -> None:
    """Only http(s) URLs with a host are accepted; the refusal names the url field."""
    with pytest.raises(RefusedError) as info:
        DownloadKind().validate(DownloadSpec(url=url), Settings(download_root=str(tmp_path)))
    assert info.value.code == "E_INVALID_INPUT" and info.value.field == "url"


@pytest.mark.parametrize(("field", "kwargs"), [
    ("sha256", {"sha256": "abc"}),
    ("sha256", {"sha256": "g" * 64}),
    ("headers", {"headers": {"X-Count": 3}}),
    ("headers", {"headers": {"X-Evil": "a\r\nInjected: 1"}}),
    ("headers", {"headers": {"Range": "bytes=5-"}}),
    ("dest", {"dest": ""}),
])
def test_bad_fields_are_refused(field: str, kwargs: dict[str, Any], tmp_path: Path) -> None:
    """A bad sha256, header or destination is refused naming its field."""
    with pytest.raises(RefusedError) as info:
        DownloadKind().validate(DownloadSpec(url="https://example.org/m.bin", **kwargs),
                                Settings(download_root=str(tmp_path)))
    assert info.value.code == "E_INVALID_INPUT" and info.value.field == field


def test_dest_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    """A destination whose parent is a regular file is refused at submission, not at write time."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(RefusedError) as info:
        DownloadKind().validate(DownloadSpec(url="https://e.org/m.bin", dest="file/m.bin"),
                                Settings(download_root=str(tmp_path)))
    assert info.value.field == "dest"


@pytest.mark.parametrize(("url", "name"), [
    ("https://e.org/models/ae.safetensors?download=true", "ae.safetensors"),
    ("https://e.org/a/..%2F..%2Fetc%2Fpasswd", "passwd"),
    ("https://e.org/a/..%5C..%5Cwin.ini", "win.ini"),
    ("https://e.org/.bashrc", "bashrc"),
    ("https://e.org/%2e%2e", "download"),
    ("https://e.org/", "download"),
    ("https://e.org/x%00y%0a%1b.bin", "xy.bin"),
    ("https://e.org/a%E2%80%AEnib.exe", "anib.exe"),
    ("https://e.org/what%3F%2A.bin", "what__.bin"),
])
def test_url_names_reduced_to_safe_base_names(url: str, name: str, tmp_path: Path) -> None:
    """A file name from the URL is reduced to a safe base name inside the destination directory."""
    spec = DownloadKind().validate(DownloadSpec(url=url), Settings(download_root=str(tmp_path)))
    assert spec.dest == str(tmp_path / name)


def test_dest_resolution(tmp_path: Path) -> None:
    """Relative destinations resolve against download_root; a directory or trailing slash takes the URL's name."""
    settings = Settings(download_root=str(tmp_path))
    (tmp_path / "vae").mkdir()
    kind = DownloadKind()
    url = "https://e.org/x/ae.safetensors"
    assert kind.validate(DownloadSpec(url=url, dest="vae"), settings).dest == str(tmp_path / "vae/ae.safetensors")
    assert kind.validate(DownloadSpec(url=url, dest="new/"), settings).dest == str(tmp_path / "new/ae.safetensors")
    assert kind.validate(DownloadSpec(url=url, dest="m.bin"), settings).dest == str(tmp_path / "m.bin")
    assert kind.validate(DownloadSpec(url=url, dest="/abs/m.bin"), settings).dest == "/abs/m.bin"
    assert kind.validate(DownloadSpec(url=url, sha256="AB" * 32), settings).sha256 == "ab" * 32


def test_dest_within_root(tmp_path: Path) -> None:
    """dest_within_root refuses paths that leave the root, by '..' or through a symlink."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "out").symlink_to(tmp_path)
    assert dest_within_root(root / "a/b.bin", root)
    assert dest_within_root("a/b.bin", root)
    assert not dest_within_root(root / "../b.bin", root)
    assert not dest_within_root(root / "out/b.bin", root)
    assert not dest_within_root("/etc/passwd", root)
    assert not dest_within_root(root, root)


def test_safe_basename_caps_length() -> None:
    """Very long names are cut to a length that leaves room for '.part', keeping the extension."""
    name = safe_basename("a" * 400 + ".safetensors")
    assert name is not None and name.endswith(".safetensors") and len(name.encode()) <= 200
    assert safe_basename("...") is None and safe_basename("/") is None


def test_describe_never_shows_credentials(tmp_path: Path) -> None:
    """describe() drops URL userinfo, masks credential query values and credential headers."""
    spec = DownloadKind().validate(DownloadSpec(
        url="https://user:hunter2@e.org/m.bin?download=true&token=SECRET1&X-Amz-Signature=SECRET2&sig=SECRET3",
        headers={"Authorization": "Bearer SECRET4", "Cookie": "session=SECRET5", "X-HF-Token": "SECRET6",
                 "User-Agent": "launcher/1"},
    ), Settings(download_root=str(tmp_path)))
    shown = DownloadKind().describe(spec)
    text = json.dumps(shown)
    assert "SECRET" not in text and "hunter2" not in text and "user" not in shown["url"]
    assert "download=true" in shown["url"] and shown["headers"]["User-Agent"] == "launcher/1"
    assert redact_url("https://e.org/m.bin?a=1") == "https://e.org/m.bin?a=1"


def test_scope_is_the_host() -> None:
    """The breaker scope is the lowercase host, with the port only when it is not the default."""
    kind = DownloadKind()
    assert kind.scope(DownloadSpec(url="https://HF.co/m"), {}) == "hf.co"
    assert kind.scope(DownloadSpec(url="https://hf.co:443/m"), {}) == "hf.co"
    assert kind.scope(DownloadSpec(url="http://127.0.0.1:8080/m"), {}) == "127.0.0.1:8080"
    assert kind.scope(DownloadSpec(url="http://[::1]:81/m"), {}) == "[::1]:81"


def test_resource_key_and_discard(tmp_path: Path) -> None:
    """The resource key is the absolute dest; discard deletes the .part and never the finished file."""
    kind = DownloadKind()
    spec = kind.validate(DownloadSpec(url="https://e.org/m.bin"), Settings(download_root=str(tmp_path)))
    dest, part = download_paths(spec)
    assert kind.resource_key(spec) == str(tmp_path / "m.bin") == str(dest)
    dest.write_bytes(b"done")
    part.write_bytes(b"partial")
    kind.discard(spec, {"offset": 7})
    kind.discard(spec, {"offset": 7})  # idempotent
    assert dest.read_bytes() == b"done" and not part.exists()


def test_is_a_kind() -> None:
    """DownloadKind satisfies the Kind protocol as the built-in 'download' kind."""
    kind = DownloadKind()
    assert isinstance(kind, Kind)
    assert kind.name == "download" and kind.spec_type is DownloadSpec
