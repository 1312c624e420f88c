"""One attempt of a download: requests, server answers and the ``.part`` (SPEC 6, 6.2).

Several connections: a fresh download whose first answer shows the server
serves ranges of a file of at least ``2 * min_segment_bytes`` (and a
validator to send as ``If-Range``) goes on in `_multi.SegmentedTransfer`,
the first answer's body becoming the first segment; an attempt that finds a
recorded segment table resumes it there at once. A `Restart` from it (the
file changed, or the server broke the range contract) starts the file over
with one connection for the rest of the attempt.

Mirrors: the attempt fetches from ``state["source"]``; a source that fails
before sending a byte hands over to the next one within the attempt.

Data before metadata: chunks are written with plain ``os.write`` in the trio
thread (see ``_fileio``); every checkpoint fsyncs the ``.part`` *before*
``offset`` moves, so a recorded offset is always on disk, and each attempt
starts by cutting the ``.part`` back to it.

Server answers on resume (``Range: bytes=N-`` + ``If-Range``, always to the
original URL, never a redirect target):

- 206 starting at N: append.
- 206 starting elsewhere, or for another version of the file (its ETag,
  Last-Modified or total differ from what was recorded): the partial file is
  discarded (counted) and the same attempt asks again from 0, without a range.
  Nothing in a lying answer can be trusted, and asking again costs no retry.
- 200: the server ignored the range or the file changed: truncate, count the
  discarded bytes, keep writing this body from 0.
- 416 whose ``Content-Range: bytes */T`` says T == N: the ``.part`` is
  complete; verify and finish without a body. Any other 416 (including a
  leftover ``.part`` larger than the file): discard and ask again from 0.

A body that ends before its announced length is ``E_NET_INTERRUPTED``
(resumable), never success. A finished file whose size or sha256 is wrong is
deleted and ``E_INTEGRITY`` raised, with the state reset so the next attempt
starts clean.

Content-Disposition: its file name is used only when the destination was
derived from a URL without a usable name (the ``download`` fallback). The
``.part`` keeps the fallback name (the resource key never changes mid-flight);
at the end the verified file is renamed to the reduced, safe base name in the
same directory, unless a file of that name already exists, and
``state["final_dest"]`` says where it went.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Any, Callable, Literal

import attrs
import httpx
import trio

from .. import _platform
from .._units import human_bytes
from .._errors import AttemptFailed, classify_exception, classify_status, failure
from ._part import PartFile, free_bytes
from ._ranges import accepts_ranges, content_length, content_range, if_range, same_version, unsatisfied_total
from ._redirects import send_following_redirects
from ._safefile import file_identity, publish, recorded_part_ready
from .._kinds import AttemptContext
from ._names import FALLBACK_NAME, name_from_content_disposition, name_from_url, redact_url, url_scope
from .._specs import DownloadSpec
from ._wire import READ_BYTES, HashWorker, PrefixHasher, ReadBatcher, limit_buffer, widen_reads
from ._hosts import HostConnections
from ._multi import Restart, SegmentedTransfer
from ._ratelimit import TokenBucket, read_size, receive_buffer, take_all
from ._segments import SegmentTable
from ._credentials import CredentialStore
from ._hubs import HubEnv, host_auth, hub_failure, hub_url, web_page_failure


__all__ = ["Transfer", "finish_recorded_completion", "kept_bytes", "source_url"]

log = logging.getLogger("engine.download")

_CLOSE_GRACE_S = 1.0


def _derived_name(spec: DownloadSpec) -> bool:
    """Whether the destination's name is the fallback for a URL without a usable name."""
    return spec.dest is not None and Path(spec.dest).name == FALLBACK_NAME and name_from_url(spec.url) is None


#: Failures a mirror may answer better: the network, the server, or the URL itself.
_SOURCE_FAILURES = frozenset({"E_NET_TIMEOUT", "E_NET_UNREACHABLE", "E_NET_INTERRUPTED", "E_SERVER_OVERLOAD",
                              "E_HTTP_CLIENT", "E_NOT_FOUND", "E_FORBIDDEN", "E_AUTH", "E_TLS"})


def _sources(spec: DownloadSpec) -> list[str]:
    return [spec.url, *(spec.mirrors or [])]


def _source_index(spec: DownloadSpec, state: dict[str, Any]) -> int:
    index = state.get("source", 0)
    return index if isinstance(index, int) and 0 <= index < len(_sources(spec)) else 0


def source_url(spec: DownloadSpec, state: dict[str, Any]) -> str:
    return _sources(spec)[_source_index(spec, state)]


def _recorded_offset(state: dict[str, Any]) -> int:
    offset = state.get("offset")
    return offset if isinstance(offset, int) and offset > 0 else 0


def _recorded_table(state: dict[str, Any]) -> SegmentTable | None:
    total = state.get("total")
    if "segments" not in state or not isinstance(total, int) or state.get("complete"):
        return None
    return SegmentTable.from_state(state.get("segments"), total)


def kept_bytes(state: dict[str, Any]) -> int:
    """How much of a leftover ``.part`` an attempt keeps: the whole sized file of a segmented one."""
    table = _recorded_table(state)
    return table.total if table is not None else _recorded_offset(state)


def finish_recorded_completion(dest: Path, part: Path, state: dict[str, Any], overwrite: bool) -> bool:
    """Finish a download that crashed between its last checkpoint and its rename."""
    if not state.get("complete"):
        return False
    target = Path(state.get("final_dest") or dest)
    size = state.get("offset")
    try:
        if recorded_part_ready(part, size):
            publish(part, target, overwrite=overwrite)
            state["file"] = file_identity(target)
            return True
        if not os.path.lexists(part) and target.is_file() and target.stat().st_size == size:
            state["file"] = file_identity(target)
            return True
    except OSError as exc:
        raise classify_exception(exc) from exc
    state.clear()  # neither file is what was recorded: start over
    return False


_Outcome = Literal["done", "more", "restart"]
_VALIDATORS = ("etag", "last_modified", "total", "cd_name", "segments")


@attrs.define(eq=False)
class Transfer:
    """One attempt's moving parts: the open ``.part``, the hash, the totals."""

    ctx: AttemptContext
    spec: DownloadSpec
    dest: Path
    part: PartFile
    statvfs: Callable[[str], _platform.FsStats]
    credentials: CredentialStore | None = None
    hosts: HostConnections = attrs.Factory(HostConnections)
    buckets: tuple[TokenBucket, ...] = ()
    hasher: HashWorker | PrefixHasher | None = None
    hashed: int = 0
    total: int | None = None
    #: set once a segmented run had to start over: the rest of the attempt uses one connection
    no_split: bool = False
    _segmented: SegmentedTransfer | None = None
    _batcher: Any = None
    _env: HubEnv = attrs.Factory(HubEnv)
    _url: str = ""
    _sent_token: bool = False

    @property
    def state(self) -> dict[str, Any]:
        return self.ctx.state

    @property
    def source(self) -> str:
        """The URL this attempt fetches from now: ``spec.url`` or one of its mirrors."""
        return source_url(self.spec, self.state)

    async def run(self) -> None:
        """Fetch from the recorded source; one that fails before sending a byte hands over to the next.

        Mirrors (SPEC 6.2): without a sha256 nothing proves two servers'
        copies are the same, so a new source starts the file over; with one,
        the partial file is kept (the hash checks it at the end) and only the
        old server's validators are forgotten.
        """
        sources = _sources(self.spec)
        tried = 1
        while True:
            received = self.ctx.bytes_received
            try:
                await self._run_source()
                return
            except AttemptFailed as exc:
                if (tried >= len(sources) or self.ctx.bytes_received > received
                        or exc.error.code not in _SOURCE_FAILURES or self.part.closed):
                    raise
                failed = self.source
                tried += 1
                self.state["source"] = (_source_index(self.spec, self.state) + 1) % len(sources)
                log.warning("op %s: %s failed (%s: %s); trying mirror %s", self.ctx.op_id, redact_url(failed),
                            exc.error.code, exc.error.message, redact_url(self.source))
                await self._switch_source()

    async def _switch_source(self) -> None:
        for key in ("etag", "last_modified", "cd_name"):
            self.state.pop(key, None)
        if not self.spec.sha256 and (self.part.size or "segments" in self.state):
            await self._restart("another source serves the whole file")

    async def _run_source(self) -> None:
        state = self.state
        if self.part.size < _recorded_offset(state):
            state["offset"] = self.part.size  # .part lost or cut behind our back: keep what is there
        known_total = state.get("total")
        self.total = known_total if isinstance(known_total, int) else None
        if self.total is not None and self.part.size > self.total:
            await self._restart(f"the partial file ({self.part.size} bytes) is larger than the file")
        if self.spec.sha256:
            if self.hasher is not None:
                self.hasher.close()
            self.hasher, self.hashed = HashWorker(), 0
        restarts = 0
        table = _recorded_table(state)
        if table is None:
            state.pop("segments", None)
        else:
            if os.fstat(self.part.fd).st_size != table.total:
                await self._restart("the partial file no longer has the size it was given")
            elif await self._run_segmented(table, None):
                await self._finish()
                return
            else:
                restarts += 1
        while True:
            before = self.part.size
            outcome = await self._request()
            if outcome == "done":
                break
            if outcome == "restart":
                restarts += 1
                if restarts > 1:
                    raise failure("E_NET_INTERRUPTED",
                                  "the server keeps answering with ranges that do not match the request")
            elif self.part.size <= before:
                raise failure("E_NET_INTERRUPTED", "the server sent an empty partial response")
        await self._finish()

    # -- requests ------------------------------------------------------------------

    def _headers(self, offset: int, end: int | None = None) -> httpx.Headers:
        headers = httpx.Headers(self.spec.headers)
        headers["Accept-Encoding"] = "identity"  # byte offsets must be file offsets
        if offset > 0 or end is not None:
            headers["Range"] = f"bytes={offset}-" if end is None else f"bytes={offset}-{end - 1}"
            validator = if_range(self.state)
            if validator:
                headers["If-Range"] = validator
        return headers

    async def _request(self) -> _Outcome:
        offset = self.part.size
        if self.hasher is not None and self.hashed != offset:
            await self._rehash(offset)
        response = await self._send(self._headers(offset))
        reads = read_size(self.buckets, READ_BYTES)
        widen_reads(response, reads)
        buffer = receive_buffer(self.buckets)
        if buffer is not None:
            limit_buffer(response, buffer)
        try:
            return await self._handle(response, offset)
        except (httpx.HTTPError, OSError) as exc:
            raise classify_exception(exc) from exc
        finally:
            with trio.move_on_after(_CLOSE_GRACE_S, shield=True):
                try:
                    await response.aclose()
                except httpx.HTTPError:
                    pass

    async def _open_range(self, start: int, end: int) -> httpx.Response:
        """A segment's request: ``[start, end)`` of the recorded version (SPEC 6.2)."""
        return await self._send(self._headers(start, end))

    async def _send(self, headers: httpx.Headers) -> httpx.Response:
        """Send ``GET`` to the original URL with the hub rules and credentials; the streaming response."""
        ctx = self.ctx
        settings = ctx.settings
        timeout = httpx.Timeout(connect=settings.connect_timeout_s, read=settings.stall_timeout_s,
                                write=settings.stall_timeout_s, pool=None)
        # Every attempt starts from the original URL, with the hub rules of SPEC 6.3.
        env = HubEnv.current()
        url, note = hub_url(self.source, env)
        if note:
            log.info("op %s: %s: %s", ctx.op_id, note, redact_url(url))
        auth = host_auth(url, env, self.credentials)
        self._sent_token = bool(auth.headers) or any(k.lower() == "authorization" for k in self.spec.headers)
        self._env, self._url = env, url
        request = ctx.http.build_request("GET", url, headers=headers, timeout=timeout)
        # The host's own credentials go on the first request only; a redirect to
        # another host drops every credential header (send_following_redirects).
        request.headers.update(auth.headers)
        response: httpx.Response | None = None
        wait_s = settings.connect_timeout_s + settings.stall_timeout_s
        try:
            with trio.move_on_after(wait_s):
                response = await send_following_redirects(ctx.http, request)
        except httpx.HTTPError as exc:
            raise classify_exception(exc) from exc
        if response is None:
            raise failure("E_NET_TIMEOUT", f"no response from the server within {wait_s:g} s")
        return response

    def _same_version(self, headers: httpx.Headers) -> bool:
        return same_version(self.state, headers)

    async def _handle(self, response: httpx.Response, offset: int) -> _Outcome:
        status, headers = response.status_code, response.headers
        if status == 416 and offset > 0:
            total = unsatisfied_total(headers.get("content-range"))
            if total == offset and self._same_version(headers):
                self._set_total(total)
                return "done"
            why = (f"the server's file has {total} bytes, the partial file {offset}" if total is not None
                   else f"the server cannot resume at byte {offset}")
            await self._restart(why)
            return "restart"
        refused = hub_failure(self._url, response, self._env, sent_token=self._sent_token)
        if refused is not None:
            raise refused
        if status not in (200, 206):
            raise classify_status(status, headers)
        page = web_page_failure(self.dest.name, response)
        if page is not None:
            raise page  # before a byte is written (and before a partial file is discarded)

        if status == 206:
            got_range = content_range(headers.get("content-range"))
            problem = None
            if got_range is None:
                problem = "a partial response without a usable Content-Range"
            elif got_range[0] != offset:
                problem = f"a partial response from byte {got_range[0]} when byte {offset} was asked"
            elif not self._same_version(headers) or (
                    got_range[2] is not None and self.total is not None and got_range[2] != self.total):
                problem = "a partial response for another version of the file"
            if problem is not None or got_range is None:
                await self._restart(f"the server sent {problem}")
                return "restart"
            end: int | None = got_range[1] + 1
            self._set_total(got_range[2] if got_range[2] is not None else self.total)
            self._adopt_validators(headers, fresh=False)
        else:
            if offset > 0:
                await self._restart("the server ignored the range request or the file changed")
            end = content_length(headers)
            self._set_total(end)
            self._adopt_validators(headers, fresh=True)

        self._check_space(end if end is not None else self.total)
        if offset == 0 and self.part.size == 0 and self._splittable(status, headers):
            assert self.total is not None
            if await self._run_segmented(SegmentTable.whole(self.total), response):
                return "done"
            return "restart"
        self.ctx.progress(self.part.size, self.total, connections=1)
        await self._stream(response, end)
        if end is not None and self.part.size < end:
            raise failure("E_NET_INTERRUPTED",
                          f"the server closed the connection after {self.part.size} of {end} bytes")
        if self.total is not None and self.part.size < self.total:
            return "more"  # a 206 for less than the rest: ask for what is missing
        return "done"

    # -- many connections (SPEC 6.2) ----------------------------------------------------

    def _connection_cap(self) -> int:
        settings = self.ctx.settings
        cap = min(settings.max_connections, self.spec.connections or settings.max_connections)
        host_limit = self.hosts.limit(url_scope(self.source) or "")
        return min(cap, host_limit) if host_limit is not None else cap

    def _splittable(self, status: int, headers: httpx.Headers) -> bool:
        """Whether this fresh download may run over several connections."""
        total = self.total
        return (not self.no_split and total is not None
                and total >= 2 * self.ctx.settings.min_segment_bytes
                and self._connection_cap() > 1
                and (status == 206 or accepts_ranges(headers))
                and if_range(self.state) is not None)  # a segment must be able to say which version

    async def _run_segmented(self, table: SegmentTable, first: httpx.Response | None) -> bool:
        """Fetch ``table`` over several connections; False when it had to start over (restarted)."""
        fd = self.part.fd
        if first is not None:
            try:
                _platform.preallocate(fd, table.total)
            except OSError as exc:
                try:  # nothing was written: leave no half-reserved file behind (SPEC 6.1)
                    os.ftruncate(fd, 0)
                except OSError:
                    pass
                raise classify_exception(exc) from exc
        if isinstance(self.hasher, HashWorker):
            self.hasher.close()
            self.hasher = PrefixHasher(lambda n, at: _platform.pread(fd, n, at))
        segmented = self._segmented = SegmentedTransfer(
            self.ctx, fd, table, self._open_range, self.hosts, url_scope(self.source) or "",
            self._connection_cap(), self.buckets, self.hasher if isinstance(self.hasher, PrefixHasher) else None)
        try:
            await segmented.run(first)
        except Restart as exc:
            self._segmented = None
            self.no_split = True
            self.part.size = table.written
            await self._restart(exc.why)
            return False
        self._segmented = None
        self.part.settle(table.total)
        self.state.pop("segments", None)
        self.state["offset"] = table.total
        return True

    def _set_total(self, total: int | None) -> None:
        self.total = total
        if total is None:
            self.state.pop("total", None)
        else:
            self.state["total"] = total

    def _adopt_validators(self, headers: httpx.Headers, *, fresh: bool) -> None:
        for key, header in (("etag", "etag"), ("last_modified", "last-modified")):
            value = headers.get(header)
            if value:
                self.state[key] = value
            elif fresh:
                self.state.pop(key, None)
        cd_name = name_from_content_disposition(headers.get("content-disposition"))
        if cd_name:
            self.state["cd_name"] = cd_name
        elif fresh:
            self.state.pop("cd_name", None)

    def _check_space(self, end: int | None) -> None:
        if end is None:
            return
        needed = end - self.part.size
        if needed <= 0:
            return
        free = free_bytes(self.dest.parent, self.statvfs)
        if free is not None and free < needed:
            raise failure("E_DISK_FULL", f"not enough free space in {self.dest.parent}: "
                                         f"{human_bytes(free, exact=True)} free, {human_bytes(needed, exact=True)} still to download")

    # -- the body --------------------------------------------------------------------

    async def _stream(self, response: httpx.Response, end: int | None) -> None:
        """Write the body, guarding every chunk read against a stall (not only httpx's timeout)."""
        stall_s = self.ctx.settings.stall_timeout_s
        chunks = response.aiter_raw()
        self._batcher = ReadBatcher(response)
        try:
            await self._consume(chunks, end, stall_s)
        finally:
            self._batcher.close()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with trio.move_on_after(_CLOSE_GRACE_S, shield=True):
                    await aclose()

    async def _consume(self, chunks: AsyncIterator[bytes], end: int | None, stall_s: float) -> None:
        part = self.part
        # One cancel scope for the whole body, its deadline pushed forward after
        # every chunk: a stall is "no byte for stall_s", without a scope per read.
        with trio.CancelScope(deadline=trio.current_time() + stall_s) as waiting:
            await self._consume_guarded(chunks, end, stall_s, waiting)
        if waiting.cancelled_caught:
            raise failure("E_NET_TIMEOUT", f"the transfer stalled: no data for {stall_s:g} s "
                                           f"at byte {part.size}")

    async def _consume_guarded(self, chunks: AsyncIterator[bytes], end: int | None, stall_s: float,
                               waiting: trio.CancelScope) -> None:
        ctx, part = self.ctx, self.part
        while True:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            waiting.deadline = trio.current_time() + stall_s
            if end is not None and part.size + len(chunk) > end:
                chunk = chunk[: end - part.size]  # never write past what the range covers
            part.write_all(chunk)
            self._batcher.received(len(chunk), None if end is None else end - part.size)
            if self.buckets:
                waiting.deadline = math.inf  # waiting for tokens is not a stall
                await take_all(self.buckets, len(chunk))
                waiting.deadline = trio.current_time() + stall_s
            if isinstance(self.hasher, HashWorker):
                self.hasher.update(chunk)
                self.hashed = part.size
            ctx.received(len(chunk))
            ctx.progress(part.size, self.total)
            # Data before metadata, without stopping the transfer: the fsync runs
            # in a helper thread; its offset is recorded once it has returned.
            gained = part.poll_sync()
            if gained:
                ctx.made_durable(gained)
                self.state["offset"] = part.durable
                await ctx.checkpoint()
            elif ctx.checkpoint_due():
                part.start_sync()
            if end is not None and part.size >= end:
                return

    async def _rehash(self, upto: int) -> None:
        """Hash the preserved prefix, yielding between chunks so pause stays prompt."""
        hasher = hashlib.sha256()
        done = 0
        for chunk in self.part.chunks(upto):
            hasher.update(chunk)
            done += len(chunk)
            await trio.lowlevel.checkpoint()
        if done != upto:
            raise failure("E_NET_INTERRUPTED", f"the partial file could only be read to byte {done} of {upto}")
        self._new_hash(hasher)
        self.hashed = upto

    # -- durability ------------------------------------------------------------------

    def _sync(self) -> None:
        """fsync, then record the new offset (data before metadata)."""
        gained = self.part.sync()
        if gained:
            self.ctx.made_durable(gained)
        self.state["offset"] = self.part.durable

    async def _restart(self, why: str) -> None:
        """Throw the partial file away and make that durable in the snapshot before new data."""
        dropped = self.part.truncate()
        if dropped:
            self.ctx.discarded(dropped)
        for key in _VALIDATORS:
            self.state.pop(key, None)
        self.state["offset"] = 0
        self.total = None
        if self.hasher is not None:
            self._new_hash()
            self.hashed = 0
        log.info("op %s: restarting from 0 (%d bytes discarded): %s", self.ctx.op_id, dropped, why)
        await self.ctx.checkpoint()

    def _new_hash(self, hasher: Any = None) -> None:
        if self.hasher is not None:
            self.hasher.close()
        self.hasher = HashWorker(hasher)

    async def _finish(self) -> None:
        size = self.part.size
        if self.total is not None and size != self.total:
            self._integrity(f"size mismatch: {size} bytes received, the server announced {self.total}")
        if self.hasher is not None:
            digest = self.hasher.hexdigest()
            if digest != self.spec.sha256:
                self._integrity(f"sha256 mismatch: expected {self.spec.sha256}, got {digest}")
        target = self.dest
        cd_name = self.state.get("cd_name")
        if cd_name and _derived_name(self.spec):
            candidate = self.dest.with_name(cd_name)
            if candidate != self.dest and not os.path.lexists(candidate):
                target = candidate
        try:
            self._sync()
            self.state["total"] = size
            self.state["complete"] = True
            if target != self.dest:
                self.state["final_dest"] = str(target)
            await self.ctx.checkpoint()
            publish(self.part.path, target, overwrite=self.spec.overwrite, release=self.part.close)  # still locked
            self.part.close()
            self.state["file"] = file_identity(target)
        except OSError as exc:
            raise classify_exception(exc) from exc
        self.ctx.progress(size, size)

    def _integrity(self, message: str) -> None:
        size = self.part.size
        self.part.close()
        try:
            self.part.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise classify_exception(exc) from exc
        self.state.clear()
        self.ctx.discarded(size)
        raise failure("E_INTEGRITY", f"{message}; the partial file was deleted and the next attempt "
                                     f"starts from scratch")

    def close(self) -> None:
        """On any exit: make what was written durable and record it, then close."""
        if self.hasher is not None:
            self.hasher.close()
        if self.part.closed:
            return
        if self._segmented is not None:
            try:
                self._segmented.close()
            finally:
                self.part.close()
            return
        try:
            self._sync()
        except OSError as exc:
            log.warning("op %s: could not sync the partial file (%s); keeping offset %s",
                        self.ctx.op_id, exc, self.state.get("offset"))
        finally:
            self.part.close()
