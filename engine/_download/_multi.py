"""One download over several connections, crash-safe per segment (SPEC 6.2).

`SegmentedTransfer` runs inside one attempt of the download kind, once the
server has shown it serves ranges of a file large enough to split. The
``.part`` is sized up front (`_platform.preallocate`) and every connection
writes its segment in place (``pwrite``), one task per connection:

- **Work stealing**: a connection that finishes its segment takes an
  unowned one, else half of the largest remaining one (never leaving a piece
  under ``min_segment_bytes``); one far slower than the thief (a quarter of
  its rate) hands all it has left over at once.
- **Adaptive count**: the first connection runs alone for a probe window
  (a resume starts with one per unfinished segment, up to the cap);
  then connections are doubled while each doubling raises the total rate by
  `_GAIN` at least, up to the cap (``max_connections``, the spec's
  ``connections``, a host's remembered limit, and ``max_connections_per_host``
  across downloads through `HostConnections`). Extras that did not help
  at all are retired again, so a fast local link stays at one connection.
- **Durability**: every ``checkpoint_interval_s`` one ``fsync`` of the
  ``.part`` covers all segments; only when it has returned do the segments'
  durable ends move and the snapshot get written (data before metadata).
- **Hash**: `PrefixHasher` reads the contiguous prefix back as it grows.
- **Failures**: a retry-worthy error on one connection retries its segment
  while the download still moves data; otherwise it ends the attempt
  (the operation's retry policy takes over and the next attempt resumes the
  table). A 200, a ``Content-Range`` other than asked, or other validators
  raise `Restart`: the whole download starts over. A 403, 429 or 503 to an
  extra connection lowers the cap and is remembered for the host.
- **Rate limits**: every chunk goes through the scope's `TokenBucket`\\ s.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Sequence
from typing import Awaitable, Callable

import attrs
import httpx
import trio

from .. import _platform
from .._disk import Background
from .._errors import AttemptFailed, classify_exception, classify_status, failure
from .._kinds import AttemptContext
from ._hosts import HostConnections
from ._ranges import content_range, same_version
from ._ratelimit import TokenBucket, read_size, receive_buffer, take_all
from ._segments import Segment, SegmentTable
from ._wire import READ_BYTES, PrefixHasher, ReadBatcher, limit_buffer, widen_reads

__all__ = ["Restart", "SegmentedTransfer"]

log = logging.getLogger("engine.download")

_PROBE_S = 1.0  # how long the rate is measured before and after adding connections
_SETTLE_S = 2.0  # at most this long for new connections' first bytes before measuring
_GAIN = 0.5  # a doubling must raise the total rate by half to keep going (noise on a fast link does not)
_USELESS = 0.1  # extras that raised it by less than this are retired
_SLOW_FACTOR = 4.0  # a connection this many times slower than a thief hands its segment over
_HANDOFF_MIN = 256 * 1024  # nothing smaller is worth a new request
_MAX_SEGMENT_RETRIES = 3
_RECENT_S = 2.0  # data arrived this recently: the download is moving
_RETRY_DELAY_S = 0.5
_CLOSE_GRACE_S = 1.0
_REFUSALS = (403, 429, 503)


class Restart(Exception):
    """The file changed or the server broke the range contract: start the whole download over."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


#: ``open_range(start, end)``: send ``GET`` with ``Range: bytes=start-(end-1)`` and ``If-Range``.
RangeOpener = Callable[[int, int], Awaitable[httpx.Response]]


@attrs.define(eq=False)
class _Conn:
    """One connection's task and its figures."""

    number: int
    extra: bool
    segment: Segment | None = None
    open: bool = False
    retire: bool = False
    failures: int = 0
    started: float = 0.0
    got: int = 0
    last_byte_at: float = -math.inf

    def rate(self, now: float) -> float:
        return self.got / max(now - self.started, 0.05) if self.got else 0.0


@attrs.define(eq=False)
class SegmentedTransfer:
    """Fetch the unfinished segments of ``table`` into the open ``.part`` ``fd`` (module docstring)."""

    ctx: AttemptContext
    fd: int
    table: SegmentTable
    open_range: RangeOpener
    hosts: HostConnections
    host: str
    cap: int
    buckets: tuple[TokenBucket, ...] = ()
    hasher: PrefixHasher | None = None
    _conns: list[_Conn] = attrs.Factory(list)
    _numbered: int = 0
    _fatal: BaseException | None = None
    _nursery: trio.Nursery | None = None
    _written: int = 0
    _prefix: int = 0
    _bg: Background | None = None
    _growing: bool = True
    _stopping: bool = False
    _waits: list[int] = attrs.Factory(list)

    # -- the run ---------------------------------------------------------------

    async def run(self, first: httpx.Response | None = None) -> None:
        """Fetch everything; ``first`` is an open response for the table's first unfinished bytes.

        Returns when every segment is written and durable, raises `Restart`,
        `AttemptFailed` or the cancellation that stopped it; in every case
        `close` records what is durable.
        """
        self.table.reset_to_durable()
        self._written = self.table.written
        self._prefix = self.table.prefix()
        if self.hasher is not None:
            self.hasher.advance(self._prefix)
        self._record()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._checkpoints)
            conn = self._new_conn(extra=False)
            nursery.start_soon(self._worker, conn, first)
            if first is None:
                # a resume: as many connections as segments were left open (the
                # count the last run had found), then growth goes on from there
                conn.segment = self._assign(conn)
                left = sum(1 for seg in self.table if not seg.done and seg.owner is None)
                for _ in range(left):
                    if self._spawn() is None:
                        break
            nursery.start_soon(self._grow)
        if self._fatal is not None:
            raise self._fatal
        if not self.table.done:  # pragma: no cover - every worker exits only when nothing is left
            raise failure("E_NET_INTERRUPTED", "the download stopped with parts of the file missing")
        await self._make_durable()

    def _new_conn(self, *, extra: bool) -> _Conn:
        self._numbered += 1
        conn = _Conn(self._numbered, extra)
        self._conns.append(conn)
        return conn

    def _fail(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @property
    def connections(self) -> int:
        """Connections with a response open now."""
        return sum(1 for c in self._conns if c.open)

    def _report(self) -> None:
        self.ctx.progress(self._written, self.table.total, connections=max(1, self.connections))

    # -- segments ----------------------------------------------------------------

    def _assign(self, conn: _Conn) -> Segment | None:
        """An unowned segment, else half of the largest one (or all of a far slower one's)."""
        seg = self.table.unowned()
        if seg is not None:
            seg.owner = conn
            return seg
        victim = self.table.largest_owned()
        if victim is None:
            return None
        owner = victim.owner
        now = trio.current_time()
        mine = conn.rate(now)
        theirs = owner.rate(now) if isinstance(owner, _Conn) else 0.0
        left = victim.remaining
        if mine > 0 and isinstance(owner, _Conn) and owner.got and theirs * _SLOW_FACTOR < mine \
                and left >= _HANDOFF_MIN:
            # hand over all that is left: the slow one stops at its next chunk
            if victim.pos == victim.start:
                victim.owner = conn
                return victim
            tail = self.table.split(victim, victim.pos)
            tail.owner = conn
            log.info("op %s: connection %d is far slower; connection %d takes its %d bytes left",
                     self.ctx.op_id, owner.number, conn.number, left)
            return tail
        min_segment = self.ctx.settings.min_segment_bytes
        if left < 2 * min_segment:
            return None
        tail = self.table.split(victim, victim.pos + left // 2)
        tail.owner = conn
        return tail

    def _release(self, conn: _Conn) -> None:
        seg, conn.segment = conn.segment, None
        if seg is not None and seg.owner is conn:
            seg.owner = None

    def _live_workers(self) -> int:
        return sum(1 for c in self._conns if c.segment is not None or c.open)

    # -- connections -------------------------------------------------------------

    async def _worker(self, conn: _Conn, first: httpx.Response | None = None) -> None:
        try:
            await self._work(conn, first)
        except Restart as exc:
            self._fail(exc)
        except AttemptFailed as exc:
            self._fail(exc)
        except (httpx.HTTPError, OSError) as exc:
            self._fail(classify_exception(exc))
        except trio.Cancelled:
            self._stopping = True  # paused, or the engine stops: nobody takes over a segment now
            raise
        finally:
            self._release(conn)
            self._conns.remove(conn)
            if conn.extra:
                self.hosts.close_extra(self.host)
            self._adopt_orphans()
            if not self._conns and self._nursery is not None:
                self._nursery.cancel_scope.cancel()  # the last one out: checkpoints and growth end
            self._report()

    def _adopt_orphans(self) -> None:
        """A segment was given up and no staying connection will pass by: start one for it."""
        nursery = self._nursery
        if self._fatal is not None or nursery is None or self._stopping or nursery.cancel_scope.cancel_called:
            return  # ending anyway (a failure, a pause, the engine stopping)
        if self.table.unowned() is None:
            return
        if any(not c.retire for c in self._conns):
            return  # it takes the segment when its own is done
        conn = self._new_conn(extra=False)
        nursery.start_soon(self._worker, conn, None)

    async def _work(self, conn: _Conn, first: httpx.Response | None) -> None:
        while self._fatal is None and not conn.retire:
            seg = conn.segment if conn.segment is not None and conn.segment.owner is conn else self._assign(conn)
            if seg is None:
                if first is not None:
                    await _close(first)
                return
            conn.segment = seg
            response, first = first, None
            try:
                if response is None:
                    response = await self._open(conn, seg)
                    if response is None:
                        return  # refused: the host gets fewer connections
                conn.open, conn.started, conn.got = True, trio.current_time(), 0
                self._report()
                await self._pump(conn, seg, response)
                conn.failures = 0
            except AttemptFailed as exc:
                if not self._may_retry(conn, exc):
                    raise
                conn.failures += 1
                log.info("op %s: connection %d: %s; retrying bytes %d-%d", self.ctx.op_id, conn.number,
                         exc.error.code, seg.pos, seg.end - 1)
                await trio.sleep(_RETRY_DELAY_S * 2 ** (conn.failures - 1))
            finally:
                conn.open = False
                if response is not None:
                    await _close(response)
            if seg.done or seg.owner is not conn:
                self._release(conn)
        self._release(conn)

    def _may_retry(self, conn: _Conn, exc: AttemptFailed) -> bool:
        """A retry-worthy error while the download still moves data, within a few tries.

        Data moves when another connection received bytes lately, or this one
        did just before it failed (a drop mid-body, a busy answer right after
        it finished a segment): the segment is asked for again at once.
        Otherwise the attempt ends and the operation's retry policy decides.
        """
        if not exc.error.retryable or conn.failures >= _MAX_SEGMENT_RETRIES:
            return False
        now = trio.current_time()
        recent = min(self.ctx.settings.stall_timeout_s, _RECENT_S)
        return any(now - c.last_byte_at < recent for c in self._conns)

    async def _open(self, conn: _Conn, seg: Segment) -> httpx.Response | None:
        """The checked 206 for ``[pos, end)``; None when the host refused an extra connection."""
        start, end = seg.pos, seg.end
        response = await self.open_range(start, end)
        try:
            status, headers = response.status_code, response.headers
            if status == 206:
                got = content_range(headers.get("content-range"))
                if got is None or got[0] != start or got[1] > end - 1 or got[1] < start \
                        or (got[2] is not None and got[2] != self.table.total):
                    raise Restart(f"the server sent bytes {headers.get('content-range')!r} "
                                  f"when bytes {start}-{end - 1} were asked")
                if not same_version(self.ctx.state, headers):
                    raise Restart("a partial response for another version of the file")
                state = self.ctx.state
                if not state.get("etag") and not state.get("last_modified"):
                    # a mirror took over (sha256 given): its validators guard the rest
                    for key, header in (("etag", "etag"), ("last_modified", "last-modified")):
                        if headers.get(header):
                            state[key] = headers[header]
                reads = read_size(self.buckets, READ_BYTES)
                widen_reads(response, reads)
                buffer = receive_buffer(self.buckets)
                if buffer is not None:
                    limit_buffer(response, buffer)
                return response
            if status == 200:
                raise Restart("the server ignored a range request or the file changed")
            if status == 416:
                raise Restart(f"the server cannot serve bytes {start}-{end - 1}")
            others = sum(1 for c in self._conns if c is not conn and c.open)
            if status in _REFUSALS and conn.extra and others:
                self.hosts.refused(self.host, others)
                self.cap = min(self.cap, others)
                self._growing = False
                seg.owner = None
                conn.segment = None
                await _close(response)
                return None
            raise classify_status(status, headers)
        except BaseException:
            await _close(response)
            raise

    async def _pump(self, conn: _Conn, seg: Segment, response: httpx.Response) -> None:
        """Write the body into ``seg`` until it is done, taken away, or the body ends."""
        stall_s = self.ctx.settings.stall_timeout_s
        chunks: AsyncIterator[bytes] = response.aiter_raw()
        batcher = ReadBatcher(response)
        try:
            with trio.CancelScope(deadline=trio.current_time() + stall_s) as waiting:
                while True:
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                    now = trio.current_time()
                    if seg.owner is not conn or conn.retire:
                        return
                    room = seg.end - seg.pos
                    if len(chunk) > room:
                        chunk = chunk[:room]
                    self._write_at(chunk, seg.pos)
                    n = len(chunk)
                    seg.pos += n
                    conn.got += n
                    conn.last_byte_at = now
                    self._written += n
                    self.ctx.received(n)
                    batcher.received(n, seg.end - seg.pos)
                    if self.hasher is not None and seg.start <= self._prefix <= seg.pos:
                        self._prefix = self.table.prefix()
                        self.hasher.advance(self._prefix)
                    self._report()
                    if seg.pos >= seg.end:
                        return
                    if self.buckets:
                        waiting.deadline = math.inf  # waiting for tokens is not a stall
                        await take_all(self.buckets, n)
                    waiting.deadline = trio.current_time() + stall_s
            if waiting.cancelled_caught:
                raise failure("E_NET_TIMEOUT", f"the transfer stalled: no data for {stall_s:g} s "
                                               f"at byte {seg.pos}")
            if seg.owner is conn and seg.pos < seg.end:
                raise failure("E_NET_INTERRUPTED", f"the server closed the connection at byte {seg.pos}, "
                                                   f"before byte {seg.end}")
        except (httpx.HTTPError, OSError) as exc:
            raise classify_exception(exc) from exc
        finally:
            batcher.close()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with trio.move_on_after(_CLOSE_GRACE_S, shield=True):
                    try:
                        await aclose()
                    except httpx.HTTPError:
                        pass

    def _write_at(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = _platform.pwrite(self.fd, view, offset)
            if n <= 0:  # pragma: no cover - pwrite raises rather than writing nothing
                raise OSError("the partial file accepted no bytes")
            offset += n
            view = view[n:]

    # -- more connections ----------------------------------------------------------

    def _cap(self) -> int:
        return max(1, min(self.cap, self.ctx.settings.max_connections,
                          self.hosts.limit(self.host) or self.cap))

    def _spawn(self) -> _Conn | None:
        """Start one extra connection with a segment of its own; None when none fits."""
        if self._nursery is None or self._fatal is not None:
            return None
        if len(self._conns) >= self._cap():
            return None
        if not self.hosts.open_extra(self.host, self.ctx.settings.max_connections_per_host):
            return None
        conn = self._new_conn(extra=True)
        seg = self._assign(conn)
        if seg is None:
            self._conns.remove(conn)
            self.hosts.close_extra(self.host)
            return None
        conn.segment = seg
        self._nursery.start_soon(self._worker, conn, None)
        return conn

    async def _measure(self, new: Sequence[_Conn] = ()) -> float:
        """Bytes per second over `_PROBE_S`, once the ``new`` connections have their first bytes.

        A window that began before a new connection's request was answered
        would count its setup as no gain; a window of a second holds enough of
        every connection's bursts that the doubling it judges is not noise.
        """
        settle = trio.current_time() + _SETTLE_S
        while any(c.got == 0 and c in self._conns for c in new) and trio.current_time() < settle:
            await trio.sleep(0.02)
        self._waits = [b.waits for b in self.buckets]
        before, began = self._written, trio.current_time()
        await trio.sleep(_PROBE_S)
        return (self._written - before) / max(trio.current_time() - began, 1e-9)

    def _at_limit(self) -> bool:
        """Whether a rate limit, not the connections, held the rate down in the last window."""
        return any(b.limited and (b.waits > seen or b.waiting) for b, seen in zip(self.buckets, self._waits))

    async def _grow(self) -> None:
        """Double the connections while each doubling pays (see the module docstring).

        While a rate limit holds the download back, more connections cannot
        help: growth waits (and resumes if the limit is raised or lifted).
        """
        rate = await self._measure()
        while self._growing and self._fatal is None:
            current = len(self._conns)
            if self._at_limit() or current >= self._cap():
                rate = await self._measure()
                continue
            spawned = [self._spawn() for _ in range(min(current, self._cap() - current))]
            new_conns = [c for c in spawned if c is not None]
            if not new_conns:
                return
            after = await self._measure(new_conns)
            if not self._growing:
                return
            if after < rate * (1 + _USELESS) and not self._at_limit():
                for conn in new_conns:  # they did not help at all: back to what was
                    conn.retire = True
                log.info("op %s: more connections did not raise the rate (%.0f -> %.0f B/s): %d kept",
                         self.ctx.op_id, rate, after, len(self._conns) - len(new_conns))
                return
            if after < rate * (1 + _GAIN) and not self._at_limit():
                return
            rate = after

    # -- durability ------------------------------------------------------------------

    async def _checkpoints(self) -> None:
        while True:
            await trio.sleep(self.ctx.settings.checkpoint_interval_s)
            try:
                await self._make_durable()
            except OSError as exc:
                self._fail(classify_exception(exc))
                return

    async def _make_durable(self) -> None:
        """One fsync for every segment, then move their durable ends and write the snapshot."""
        marks = [(seg, seg.pos) for seg in self.table if seg.pos > seg.durable]
        if not marks:
            return
        fd = self.fd
        bg = self._bg = self.ctx.disk.start(lambda: _platform.fsync_file(fd), name="engine-fsync")
        if not bg.done.is_set():
            await trio.to_thread.run_sync(bg.done.wait, abandon_on_cancel=True)
        self._bg = None
        bg.join()
        if bg.error is not None:
            raise bg.error
        gained = 0
        for seg, mark in marks:
            mark = min(mark, seg.end)
            if mark > seg.durable:
                gained += mark - seg.durable
                seg.durable = mark
        self.ctx.made_durable(gained)
        self._record()
        await self.ctx.checkpoint()

    def _record(self) -> None:
        self.ctx.state["segments"] = self.table.to_state()
        self.ctx.state["offset"] = self.table.prefix("durable")

    def close(self) -> None:
        """On any way out: fsync, record every segment's end as durable, stop hashing."""
        bg, self._bg = self._bg, None
        if bg is not None:
            bg.join()
        if self.hasher is not None:
            self.hasher.close()
        try:
            _platform.fsync_file(self.fd)
        except OSError as exc:
            log.warning("op %s: could not sync the partial file (%s); keeping the recorded segments",
                        self.ctx.op_id, exc)
            return
        gained = 0
        for seg in self.table:
            if seg.pos > seg.durable:
                gained += seg.pos - seg.durable
                seg.durable = seg.pos
        self.ctx.made_durable(gained)
        self._record()


async def _close(response: httpx.Response) -> None:
    with trio.move_on_after(_CLOSE_GRACE_S, shield=True):
        try:
            await response.aclose()
        except httpx.HTTPError:
            pass

