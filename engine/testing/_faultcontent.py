"""The fault server's pure parts: content, faults, response plans, accounting.

Everything here is free of I/O; ``_faultserver`` does the networking.

A virtual file is a function of ``(seed, size)``: any slice can be produced in
time proportional to the slice, so a 1 GiB file needs no 1 GiB buffer. The file
is cut into 64 KiB blocks; block ``i`` is ``sha256(seed, size, i)`` (32 bytes,
unique per block) followed by a 64 KiB random pattern of the seed rotated by an
offset taken from that digest. Misplaced blocks and shifted offsets therefore
both change the bytes, while producing a block is a single memory copy.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable

import attrs

__all__ = [
    "Faults",
    "HostStats",
    "PathStats",
    "RequestRecord",
    "ServerStats",
    "VirtualFile",
    "content_bytes",
    "content_sha256",
    "file_url",
    "refetched",
]

BLOCK_SIZE = 64 * 1024
_DIGEST = 32
# Base of the deterministic Last-Modified dates: 2023-11-14T22:13:20Z.
_EPOCH = 1_700_000_000


@functools.lru_cache(maxsize=64)
def _pattern(seed: str, size: int) -> bytes:
    """Two copies' worth of the seed's random pattern, so any rotation is one slice."""
    return hashlib.shake_256(f"pattern\0{seed}\0{size}".encode()).digest(2 * BLOCK_SIZE)


@functools.lru_cache(maxsize=512)
def _block(seed: str, size: int, index: int) -> bytes:
    digest = hashlib.sha256(f"block\0{seed}\0{size}\0{index}".encode()).digest()
    rotation = int.from_bytes(digest[:4], "big") % BLOCK_SIZE
    length = min(BLOCK_SIZE, size - index * BLOCK_SIZE)
    block = digest + _pattern(seed, size)[rotation : rotation + BLOCK_SIZE - _DIGEST]
    return block[:length]


def _check_range(size: int, start: int, end: int | None) -> int:
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    end = size if end is None else end
    if not 0 <= start <= end <= size:
        raise ValueError(f"bad slice [{start}:{end}] of a {size}-byte file")
    return end


def iter_content(seed: str, size: int, start: int = 0, end: int | None = None) -> Iterator[memoryview]:
    """Yield the bytes ``[start:end)`` of the file as zero-copy views of cached blocks."""
    end = _check_range(size, start, end)
    pos = start
    while pos < end:
        index, offset = divmod(pos, BLOCK_SIZE)
        block = _block(seed, size, index)
        piece = memoryview(block)[offset : min(len(block), offset + end - pos)]
        pos += len(piece)
        yield piece


def content_bytes(seed: str, size: int, start: int = 0, end: int | None = None) -> bytes:
    """Return bytes ``[start:end)`` of the virtual file ``(seed, size)``."""
    return b"".join(iter_content(seed, size, start, end))


@functools.lru_cache(maxsize=256)
def content_sha256(seed: str, size: int) -> str:
    """Return the hex sha256 of the whole virtual file ``(seed, size)`` (cached)."""
    digest = hashlib.sha256()
    for piece in iter_content(seed, size):
        digest.update(piece)
    return digest.hexdigest()


@attrs.frozen(kw_only=True)
class VirtualFile:
    """One version of a served file: its content, validators and checksum.

    ``etag_override`` replaces the derived strong ETag (give it quoted, e.g.
    ``'"v1"'``, or weak, ``'W/"v1"'``, which If-Range never matches).
    """

    seed: str
    size: int = attrs.field(validator=attrs.validators.ge(0))
    etag_override: str | None = None
    version: int = 0

    @property
    def etag(self) -> str:
        """Strong quoted ETag derived from seed and size (unless overridden)."""
        if self.etag_override is not None:
            return self.etag_override
        digest = hashlib.sha256(f"etag\0{self.seed}\0{self.size}".encode()).hexdigest()
        return f'"{digest[:20]}"'

    @property
    def last_modified_s(self) -> int:
        """Unix time of Last-Modified; the changed version is one day newer."""
        digest = hashlib.sha256(f"mtime\0{self.seed}".encode()).digest()
        base = _EPOCH + int.from_bytes(digest[:3], "big")
        return base + 86_400 * self.version

    @property
    def last_modified(self) -> str:
        """Last-Modified as an HTTP date."""
        return email.utils.formatdate(self.last_modified_s, usegmt=True)

    @property
    def sha256(self) -> str:
        """Hex sha256 of the whole content."""
        return content_sha256(self.seed, self.size)

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start:end)`` of the content."""
        return content_bytes(self.seed, self.size, start, end)

    def changed(self, size: int | None = None) -> VirtualFile:
        """The version served once ``Faults.change_after`` has passed.

        Its seed is ``seed + "#changed"``; the size is kept unless given.
        """
        return VirtualFile(
            seed=f"{self.seed}#changed",
            size=self.size if size is None else size,
            version=self.version + 1,
        )


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("", "1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _opt(parse: Callable[[str], Any], default: Any = None, *, minimum: float | None = 0) -> Any:
    validators = []
    if minimum is not None:
        validators.append(attrs.validators.optional(attrs.validators.ge(minimum)))
    return attrs.field(default=default, validator=validators, metadata={"parse": parse})


@attrs.frozen(kw_only=True)
class Faults:
    """What goes wrong when a file is requested. The default is a well-behaved server.

    "The first N requests" counts the requests for which that fault fired (a
    drop fires only when the body is longer than ``drop_after``), so faults
    combine predictably; ``None`` for a ``*_times`` field means every time.
    Faults apply in this order: ``redirect_to``, ``redirects``, ``status``,
    then the body faults.

    Attributes:
        drop_after: abort the connection (TCP RST) after this many body bytes
            of the response; counted per response, so a resumed request drops
            ``drop_after`` bytes past its own start.
        drop_times: drop only the first N responses that reach ``drop_after``.
        stall_after: stop sending after this many body bytes of the response,
            for ``stall_s`` seconds (``trio.sleep``: a MockClock skips it),
            then carry on.
        stall_s: length of a stall.
        stall_times: stall only the first N responses that reach ``stall_after``.
        status: answer with this status (503, 429, 500, 404, 403...) and no file.
        status_times: answer ``status`` only the first N times.
        retry_after: ``Retry-After`` header value sent with ``status``
            (seconds or an HTTP date).
        ignore_range: answer 200 with the full body even when a range was asked
            (and do not send ``Accept-Ranges``).
        change_after: after this many requests (GET or HEAD) reached the file,
            its content, ETag and Last-Modified change (``VirtualFile.changed``).
        changed_size: size of the changed file (default: the same size).
        bad_content_range: answer a range request with a 206 for a different
            range than asked: from 0 when the request started later, else from 1.
        short_by: send this many bytes fewer than Content-Length, then close
            cleanly.
        rate_bps: throttle the body to this many bytes per second.
        no_etag: send no ETag.
        no_length: send no Content-Length (the body ends when the connection
            closes).
        no_last_modified: send no Last-Modified.
        redirect_to: answer 302 to this location (path or absolute URL).
        redirects: pass through a chain of this many 302s (same path, a
            ``_hop=k`` query parameter) before the file.
        filename: send ``Content-Disposition: attachment; filename="..."``.
        content_disposition: send this raw ``Content-Disposition`` value
            (wins over ``filename``).
        max_concurrent: answer 503 to a request for the path while this many
            of its responses are still being sent (a server that refuses a
            download's extra connections).
    """

    drop_after: int | None = _opt(int)
    drop_times: int | None = _opt(int)
    stall_after: int | None = _opt(int)
    stall_s: float = _opt(float, 3600.0)
    stall_times: int | None = _opt(int)
    status: int | None = _opt(int, minimum=100)
    status_times: int | None = _opt(int)
    retry_after: str | None = _opt(str, minimum=None)
    ignore_range: bool = _opt(_parse_bool, False, minimum=None)
    change_after: int | None = _opt(int)
    changed_size: int | None = _opt(int)
    bad_content_range: bool = _opt(_parse_bool, False, minimum=None)
    short_by: int = _opt(int, 0)
    rate_bps: float | None = _opt(float, minimum=1e-9)
    no_etag: bool = _opt(_parse_bool, False, minimum=None)
    no_length: bool = _opt(_parse_bool, False, minimum=None)
    no_last_modified: bool = _opt(_parse_bool, False, minimum=None)
    redirect_to: str | None = _opt(str, minimum=None)
    redirects: int = _opt(int, 0)
    filename: str | None = _opt(str, minimum=None)
    content_disposition: str | None = _opt(str, minimum=None)
    max_concurrent: int | None = _opt(int, minimum=1)

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> Faults:
        """Build from query parameters named like the fields; unknown names raise ValueError."""
        fields = attrs.fields_dict(cls)
        kwargs: dict[str, Any] = {}
        for name, text in params.items():
            field = fields.get(name)
            if field is None:
                raise ValueError(f"unknown fault parameter {name!r}")
            try:
                kwargs[name] = field.metadata["parse"](text)
            except ValueError as exc:
                raise ValueError(f"bad value for {name}: {text!r}") from exc
        return cls(**kwargs)

    def to_query(self) -> dict[str, str]:
        """Query parameters for the fields that differ from the defaults."""
        out: dict[str, str] = {}
        for field in attrs.fields(Faults):
            value = getattr(self, field.name)
            if value == field.default:
                continue
            out[field.name] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out


def file_url(
    base_url: str,
    path: str,
    *,
    size: int | None = None,
    seed: str | None = None,
    etag: str | None = None,
    faults: Faults | None = None,
) -> str:
    """URL of a query-described file: ``file_url(base, "/files/m.bin", size=10, faults=Faults(drop_after=5))``."""
    params = {name: str(value) for name, value in (("size", size), ("seed", seed), ("etag", etag)) if value is not None}
    if faults is not None:
        params.update(faults.to_query())
    query = urllib.parse.urlencode(params)
    return f"{base_url.rstrip('/')}{path}" + (f"?{query}" if query else "")


# --- what to answer -------------------------------------------------------------


@attrs.frozen
class ResponsePlan:
    """Status and headers of a file response, and the body as the slice ``[start:end)``."""

    status: int
    headers: tuple[tuple[str, str], ...]
    start: int = 0
    end: int = 0


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end_exclusive)`` of a single ``bytes=`` range; None if absent or unusable.

    An unsatisfiable range has ``start >= size``.
    """
    if not value or not value.startswith("bytes=") or "," in value:
        return None
    first, sep, last = value.removeprefix("bytes=").strip().partition("-")
    try:
        if not sep:
            return None
        if not first:
            suffix = int(last)
            return (max(0, size - suffix), size) if suffix > 0 else (size, size)
        start = int(first)
        if last and int(last) < start:
            return None
        return start, max(start, min(size, int(last) + 1) if last else size)
    except ValueError:
        return None


def _if_range_matches(value: str, file: VirtualFile, faults: Faults) -> bool:
    """RFC 9110 If-Range: a strong ETag compared strongly, or the exact Last-Modified date."""
    if value.startswith(('"', "W/")):
        etag = file.etag
        return not faults.no_etag and value == etag and not etag.startswith("W/")
    if faults.no_last_modified:
        return False
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp()) == file.last_modified_s
    except (TypeError, ValueError):
        return False


def _content_disposition(faults: Faults) -> str | None:
    if faults.content_disposition is not None:
        return faults.content_disposition
    if faults.filename is not None:
        escaped = faults.filename.replace("\\", "\\\\").replace('"', '\\"')
        return f'attachment; filename="{escaped}"'
    return None


def plan_response(file: VirtualFile, faults: Faults, range_header: str | None, if_range: str | None) -> ResponsePlan:
    """Answer a GET for ``file`` as a server with ``faults`` would (body faults aside)."""
    size = file.size
    headers = [("Content-Type", "application/octet-stream")]
    if not faults.ignore_range:
        headers.append(("Accept-Ranges", "bytes"))
    if not faults.no_etag:
        headers.append(("ETag", file.etag))
    if not faults.no_last_modified:
        headers.append(("Last-Modified", file.last_modified))
    disposition = _content_disposition(faults)
    if disposition is not None:
        headers.append(("Content-Disposition", disposition))

    wanted = None if faults.ignore_range else parse_range(range_header, size)
    if wanted is not None and if_range is not None and not _if_range_matches(if_range, file, faults):
        wanted = None
    if wanted is not None and wanted[0] >= size:
        headers += [("Content-Range", f"bytes */{size}"), ("Content-Length", "0")]
        return ResponsePlan(416, tuple(headers))
    start, end, status = 0, size, 200
    if wanted is not None:
        start, end, status = *wanted, 206
        if faults.bad_content_range:
            start = 0 if start > 0 else min(1, end)
        headers.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))
    if not faults.no_length:
        headers.append(("Content-Length", str(end - start)))
    return ResponsePlan(status, tuple(headers), start, end)


# --- accounting -----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RequestRecord:
    """One request for a path.

    ``range_start`` is the file offset of the first body byte sent (None when
    no body was due); ``outcome`` is one of ``sending``, ``stalled``,
    ``complete``, ``short``, ``dropped``, ``client_closed``, ``aborted``
    (server shut down mid-body).
    """

    method: str
    status: int
    range_start: int | None
    bytes_sent: int
    outcome: str


@attrs.frozen(kw_only=True)
class PathStats:
    """Accounting for one path (query string excluded)."""

    requests: int
    body_bytes_sent: int
    records: tuple[RequestRecord, ...]

    @property
    def ranges(self) -> list[tuple[int | None, int]]:
        """``(range_start, bytes_sent)`` per request, in arrival order."""
        return [(r.range_start, r.bytes_sent) for r in self.records]

    @property
    def refetched(self) -> list[int]:
        """Per request, the bytes it sent that an earlier request had already sent."""
        return refetched(self.ranges)


def refetched(ranges: Iterable[tuple[int | None, int]]) -> list[int]:
    """For each ``(range_start, bytes_sent)`` in order: bytes earlier ones already covered.

    The measure of "fetched twice": a resume that starts before the end of
    what was already served repeats the overlap.
    """
    covered: list[tuple[int, int]] = []  # disjoint, sorted [start, end) intervals
    out: list[int] = []
    for start, sent in ranges:
        if start is None or not sent:
            out.append(0)
            continue
        end = start + sent
        out.append(sum(max(0, min(end, e) - max(start, s)) for s, e in covered))
        merged: list[tuple[int, int]] = []
        for s, e in sorted([*covered, (start, end)]):
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        covered = merged
    return out


@attrs.frozen(kw_only=True)
class HostStats:
    """Connections and requests per ``Host`` header."""

    requests: int
    connections: int
    peak_connections: int


@attrs.frozen(kw_only=True)
class ServerStats:
    """Snapshot of the server's accounting (control endpoints excluded).

    ``connections`` counts connections serving a non-control request; ``hosts``
    is keyed by the ``Host`` header, ``paths`` by the path without its query.
    Body bytes are booked once the kernel took them, so right after a client
    read a body its last chunk may not be counted yet (in trio, await
    ``trio.testing.wait_all_tasks_blocked()`` first). ``GET /_stats`` serves
    ``to_json()``::

        {"requests": 3, "body_bytes_sent": 300000, "connections": 0, "peak_connections": 1,
         "paths": {"/a.bin": {"requests": 3, "body_bytes_sent": 300000, "records": [
             {"method": "GET", "status": 200, "range_start": 0, "bytes_sent": 1000, "outcome": "dropped"}, ...]}},
         "hosts": {"127.0.0.1:8000": {"requests": 3, "connections": 0, "peak_connections": 1}}}
    """

    requests: int
    body_bytes_sent: int
    connections: int
    peak_connections: int
    paths: Mapping[str, PathStats]
    hosts: Mapping[str, HostStats]

    def to_json(self) -> dict[str, Any]:
        """The JSON document served at ``GET /_stats``."""
        return attrs.asdict(self)


@attrs.define(eq=False)
class LiveRecord:
    """A ``RequestRecord`` while its response is being sent."""

    method: str
    status: int
    range_start: int | None = None
    bytes_sent: int = 0
    outcome: str = "complete"


@attrs.define(eq=False)
class _Counter:
    """Counts for the whole server, one path or one host."""

    requests: int = 0
    connections: int = 0
    peak_connections: int = 0
    body_bytes_sent: int = 0
    records: list[LiveRecord] = attrs.Factory(list)


@attrs.define(eq=False)
class Accounting:
    """The server's live counts.

    Only the server's trio thread writes; the lock keeps a snapshot taken from
    another thread (``run_in_thread``) consistent with structural changes.
    """

    lock: threading.Lock = attrs.Factory(threading.Lock)
    total: _Counter = attrs.Factory(_Counter)
    paths: dict[str, _Counter] = attrs.Factory(dict)
    hosts: dict[str, _Counter] = attrs.Factory(dict)

    def open(self, host: str) -> None:
        with self.lock:
            for counter in (self.total, self.hosts.setdefault(host, _Counter())):
                counter.requests += 1
                counter.connections += 1
                counter.peak_connections = max(counter.peak_connections, counter.connections)

    def close(self, host: str) -> None:
        with self.lock:
            self.total.connections -= 1
            self.hosts[host].connections -= 1

    def record(self, path: str, method: str, status: int) -> LiveRecord:
        record = LiveRecord(method, status)
        with self.lock:
            counter = self.paths.setdefault(path, _Counter())
            counter.requests += 1
            counter.records.append(record)
        return record

    def sent(self, path: str, record: LiveRecord, count: int) -> None:
        """Count body bytes; after a reset they count towards the fresh totals."""
        counter = self.paths.get(path)
        if counter is None:
            with self.lock:
                counter = self.paths.setdefault(path, _Counter())
        record.bytes_sent += count
        counter.body_bytes_sent += count
        self.total.body_bytes_sent += count

    def snapshot(self) -> ServerStats:
        with self.lock:
            return ServerStats(
                requests=self.total.requests,
                body_bytes_sent=self.total.body_bytes_sent,
                connections=self.total.connections,
                peak_connections=self.total.peak_connections,
                paths={
                    path: PathStats(
                        requests=c.requests,
                        body_bytes_sent=c.body_bytes_sent,
                        records=tuple(RequestRecord(**attrs.asdict(r)) for r in c.records),
                    )
                    for path, c in self.paths.items()
                },
                hosts={
                    host: HostStats(
                        requests=c.requests, connections=c.connections, peak_connections=c.peak_connections
                    )
                    for host, c in self.hosts.items()
                },
            )

    def reset(self) -> None:
        """Forget history; connections still open keep being counted."""
        with self.lock:
            self.total = _Counter(connections=self.total.connections, peak_connections=self.total.connections)
            self.paths = {}
            self.hosts = {
                host: _Counter(connections=c.connections, peak_connections=c.connections)
                for host, c in self.hosts.items()
                if c.connections
            }
