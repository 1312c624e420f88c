"""A fault-injecting loopback HTTP/1.1 server for tests, demos and benchmarks.

Raw HTTP over trio sockets: one request per connection (``Connection: close``),
GET and HEAD. Files are virtual (``_faultcontent``). A file is either
registered (``FaultServer.add_file``) or described entirely by its URL: any
path under ``/files/`` takes ``size``, ``seed``, ``etag`` and every
``Faults`` field as query parameters, so another process can pick faults with
nothing but a URL. Control endpoints: ``GET /_stats`` (JSON),
``POST /_stats/reset``, ``POST /_faults/reset``.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import http
import json
import logging
import signal
import socket
import struct
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping

import attrs
import trio

from .._platform import unsent_bytes
from ._faultcontent import (
    Accounting,
    Faults,
    LiveRecord,
    ServerStats,
    VirtualFile,
    file_url,
    iter_content,
    plan_response,
)
from ._thread import serve_in_thread

__all__ = ["FaultServer", "main"]

_logger = logging.getLogger("engine.testing")
_MAX_HEAD = 64 * 1024
_SEND_CHUNK = 256 * 1024
_CONTROL_PREFIX = "/_"
_FILES_PREFIX = "/files/"
_HOP = "_hop"
DEFAULT_SIZE = 1024 * 1024


# --- requests and responses ---------------------------------------------------


class _BadRequest(Exception):
    pass


@attrs.frozen
class _Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: Mapping[str, str]

    def param(self, name: str) -> str | None:
        return next((value for key, value in self.query if key == name), None)


@attrs.define(eq=False)
class _FaultState:
    """How often each counted fault fired for a path, and requests that reached the file."""

    served: int = 0
    drops: int = 0
    stalls: int = 0
    statuses: int = 0
    sending: int = 0  # responses of the path being sent now
    refused: int = 0  # requests refused by ``max_concurrent``


async def _read_request(stream: trio.SocketStream) -> _Request | None:
    buffer = bytearray()
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > _MAX_HEAD:
            raise _BadRequest("request head too large")
        data = await stream.receive_some(16384)
        if not data:
            if buffer:
                raise _BadRequest("connection closed mid-request")
            return None
        buffer += data
    lines = bytes(buffer).split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ")
    except ValueError:
        raise _BadRequest(f"bad request line {lines[0]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    url = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
    return _Request(method, urllib.parse.unquote(url.path), query, headers)


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += ["Server: engine-faultserver", f"Date: {email.utils.formatdate(usegmt=True)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _send_simple(
    stream: trio.SocketStream,
    status: int,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    *,
    method: str = "GET",
    content_type: str = "text/plain; charset=utf-8",
) -> None:
    """A small complete response; HEAD gets the headers only."""
    all_headers = [*(headers or []), ("Content-Length", str(len(body)))]
    if body:
        all_headers.append(("Content-Type", content_type))
    await stream.send_all(_head(status, all_headers) + (b"" if method == "HEAD" else body))


async def _abort(stream: trio.SocketStream) -> None:
    """Make the coming close send a TCP RST instead of a FIN.

    A RST discards what the peer has not acknowledged yet, so first wait
    until the send queue is empty (Linux; given up after 5 s without progress).
    """
    if sys.platform == "linux":
        last, since = -1, trio.current_time()
        while True:
            unacked = unsent_bytes(stream.socket)
            if unacked is None:
                break
            if unacked == 0 or (unacked == last and trio.current_time() - since > 5):
                break
            if unacked != last:
                last, since = unacked, trio.current_time()
            await trio.sleep(0.001)
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _arm(mark: int | None, times: int | None, fired: int, send_len: int) -> bool:
    """Whether a body fault at byte ``mark`` fires: it must fall inside the body and have times left."""
    return mark is not None and mark < send_len and (times is None or fired < times)


# --- the server ---------------------------------------------------------------


@attrs.define(eq=False)
class FaultServer:
    """Loopback HTTP server whose files misbehave on request.

    ``host`` must be a numeric address (any of 127.0.0.0/8 works on Linux);
    ``port=0`` picks a free port. Start it with ``await nursery.start(server.serve)``,
    ``async with server.running()`` or, outside trio, ``with server.run_in_thread()``.
    """

    host: str = "127.0.0.1"
    port: int = 0
    #: ``SO_SNDBUF`` of every connection (None: the kernel's autotuned default). A small one
    #: makes the bytes booked as sent follow what the client really took (rate measurements).
    send_buffer: int | None = None
    _base_url: str | None = attrs.field(default=None, init=False)
    _files: dict[str, tuple[VirtualFile, Faults]] = attrs.field(factory=dict, init=False)
    _faults: dict[str, _FaultState] = attrs.field(factory=dict, init=False)
    _stats: Accounting = attrs.field(factory=Accounting, init=False)
    #: ``(path, Authorization header or None)`` of every file request, in order:
    #: tests prove which credentials reached this host.
    authorization_seen: list[tuple[str, str | None]] = attrs.field(factory=list, init=False)
    #: ``(path, {lowercase name: value})`` of every file request, in order: every header that
    #: reached this host (credential headers other than Authorization included).
    headers_seen: list[tuple[str, dict[str, str]]] = attrs.field(factory=list, init=False)

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` once started."""
        if self._base_url is None:
            raise RuntimeError("FaultServer is not started")
        return self._base_url

    @property
    def stats(self) -> ServerStats:
        """A snapshot of the accounting (safe from any thread)."""
        return self._stats.snapshot()

    def wait_until_booked(self, path: str, limit_s: float = 20.0) -> None:
        """From outside the server's thread: wait (bounded) until no request of ``path`` is still
        sending, so its byte counts are final (a killed client's last connection is noticed)."""
        deadline = time.monotonic() + limit_s
        while True:
            paths = self.stats.paths.get(path)
            if not any(r.outcome in ("sending", "stalled") for r in (paths.records if paths else ())):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the server still sends {path} after {limit_s} s (a killed client unnoticed)")
            time.sleep(0.01)

    def reset_stats(self) -> None:
        """Forget all accounting."""
        self._stats.reset()

    def reset_faults(self) -> None:
        """Forget how often faults fired, so every counted fault starts over."""
        self._faults.clear()

    def add_file(
        self,
        path: str,
        *,
        size: int,
        faults: Faults | None = None,
        seed: str | None = None,
        etag: str | None = None,
    ) -> VirtualFile:
        """Serve a virtual file at ``path`` (query ignored); the seed defaults to the path."""
        if not path.startswith("/") or path.startswith(_CONTROL_PREFIX):
            raise ValueError(f"bad path {path!r}")
        file = VirtualFile(seed=path if seed is None else seed, size=size, etag_override=etag)
        self._files[path] = (file, faults or Faults())
        self._faults.pop(path, None)
        return file

    def url(
        self,
        path: str,
        *,
        size: int | None = None,
        seed: str | None = None,
        etag: str | None = None,
        faults: Faults | None = None,
    ) -> str:
        """``file_url(self.base_url, ...)``: the URL of a query-described file on this server."""
        return file_url(self.base_url, path, size=size, seed=seed, etag=etag, faults=faults)

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; reports the base URL through ``task_status``."""
        listeners = await self._listen()
        task_status.started(self.base_url)
        await trio.serve_listeners(self._handle, listeners)

    async def _listen(self) -> list[trio.SocketListener]:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        port = listeners[0].socket.getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._base_url = f"http://{host}:{port}"
        return listeners

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """Serve for the duration of the block; yields the base URL."""
        async with trio.open_nursery() as nursery:
            url: str = await nursery.start(self.serve)
            try:
                yield url
            finally:
                nursery.cancel_scope.cancel()

    def run_in_thread(self) -> contextlib.AbstractContextManager[str]:
        """Serve from a daemon thread running its own ``trio.run``; ``with`` yields the base URL.

        Leaving the block cancels the server and joins the thread; an error
        that stopped the server is raised there.
        """
        return serve_in_thread(self._listen, self._handle, lambda: self.base_url,
                               name=f"FaultServer-{self.host}:{self.port}")

    async def _handle(self, stream: trio.SocketStream) -> None:
        if self.send_buffer is not None:
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        try:
            async with stream:
                try:
                    request = await _read_request(stream)
                except _BadRequest as exc:
                    await _send_simple(stream, 400, f"{exc}\n".encode())
                    return
                if request is None:
                    return
                if request.path.startswith(_CONTROL_PREFIX):
                    await self._control(stream, request)
                    return
                host = request.headers.get("host", "")
                self.authorization_seen.append((request.path, request.headers.get("authorization")))
                self.headers_seen.append((request.path, dict(request.headers)))
                self._stats.open(host)
                try:
                    await self._respond(stream, request)
                finally:
                    self._stats.close(host)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            # Keep serving other clients; the traceback is the bug report.
            _logger.exception("fault server handler failed")

    async def _control(self, stream: trio.SocketStream, request: _Request) -> None:
        route = (request.method, request.path)
        if route == ("GET", "/_stats"):
            body = json.dumps(self.stats.to_json()).encode()
            await _send_simple(stream, 200, body, content_type="application/json")
        elif route == ("POST", "/_stats/reset"):
            self.reset_stats()
            await _send_simple(stream, 204)
        elif route == ("POST", "/_faults/reset"):
            self.reset_faults()
            await _send_simple(stream, 204)
        else:
            await _send_simple(stream, 404, b"no such control endpoint\n")

    def _lookup(self, request: _Request) -> tuple[VirtualFile, Faults]:
        """The file and faults a request names; raises ``_BadRequest`` or ``LookupError``."""
        if request.path in self._files:
            return self._files[request.path]
        if not request.path.startswith(_FILES_PREFIX):
            raise LookupError(request.path)
        params = {k: v for k, v in request.query if k != _HOP}
        try:
            file = VirtualFile(
                seed=params.pop("seed", request.path),
                size=int(params.pop("size", DEFAULT_SIZE)),
                etag_override=params.pop("etag", None),
            )
            return file, Faults.from_query(params)
        except ValueError as exc:
            raise _BadRequest(str(exc)) from exc

    async def _respond(self, stream: trio.SocketStream, request: _Request) -> None:
        path, method = request.path, request.method
        if method not in ("GET", "HEAD"):
            self._stats.record(path, method, 405)
            await _send_simple(stream, 405, b"GET or HEAD only\n", [("Allow", "GET, HEAD")], method=method)
            return
        try:
            file, faults = self._lookup(request)
            hop = int(request.param(_HOP) or 0)
        except (_BadRequest, ValueError) as exc:
            self._stats.record(path, method, 400)
            await _send_simple(stream, 400, f"{exc}\n".encode(), method=method)
            return
        except LookupError:
            self._stats.record(path, method, 404)
            await _send_simple(stream, 404, b"not found\n", method=method)
            return
        state = self._faults.setdefault(path, _FaultState())

        if faults.redirect_to is not None:
            await self._redirect(stream, path, method, faults.redirect_to)
            return
        if hop < faults.redirects:
            query = [(k, v) for k, v in request.query if k != _HOP] + [(_HOP, str(hop + 1))]
            await self._redirect(stream, path, method, f"{path}?{urllib.parse.urlencode(query)}")
            return
        if faults.status is not None and (faults.status_times is None or state.statuses < faults.status_times):
            state.statuses += 1
            self._stats.record(path, method, faults.status)
            headers = [] if faults.retry_after is None else [("Retry-After", faults.retry_after)]
            body = f"injected {faults.status}\n".encode()
            await _send_simple(stream, faults.status, body, headers, method=method)
            return

        if faults.max_concurrent is not None and state.sending >= faults.max_concurrent:
            state.refused += 1
            self._stats.record(path, method, 503)
            await _send_simple(stream, 503, b"too many connections\n", method=method)
            return
        state.served += 1
        if faults.change_after is not None and state.served > faults.change_after:
            file = file.changed(faults.changed_size)
        state.sending += 1
        try:
            await self._send_file(stream, request, file, faults, state)
        finally:
            state.sending -= 1

    async def _redirect(self, stream: trio.SocketStream, path: str, method: str, location: str) -> None:
        self._stats.record(path, method, 302)
        await _send_simple(stream, 302, b"", [("Location", location)], method=method)

    async def _send_file(
        self, stream: trio.SocketStream, request: _Request, file: VirtualFile, faults: Faults, state: _FaultState
    ) -> None:
        plan = plan_response(file, faults, request.headers.get("range"), request.headers.get("if-range"))
        record = self._stats.record(request.path, request.method, plan.status)
        await stream.send_all(_head(plan.status, list(plan.headers)))
        if request.method == "HEAD" or plan.status == 416:
            return
        record.range_start = plan.start
        record.outcome = "sending"
        try:
            await self._send_body(stream, request.path, record, file, faults, state, plan.start, plan.end)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            record.outcome = "client_closed"
            raise
        except trio.Cancelled:
            record.outcome = "aborted"
            raise

    async def _send_body(
        self,
        stream: trio.SocketStream,
        path: str,
        record: LiveRecord,
        file: VirtualFile,
        faults: Faults,
        state: _FaultState,
        start: int,
        end: int,
    ) -> None:
        send_len = max(0, end - start - faults.short_by)
        drop_at = faults.drop_after if _arm(faults.drop_after, faults.drop_times, state.drops, send_len) else None
        if drop_at is not None:
            state.drops += 1
        stall_at = faults.stall_after if _arm(faults.stall_after, faults.stall_times, state.stalls, send_len) else None
        if stall_at is not None:
            state.stalls += 1
        chunk_cap = _SEND_CHUNK
        if faults.rate_bps is not None:
            chunk_cap = max(1, min(_SEND_CHUNK, int(faults.rate_bps / 10)))
        began = trio.current_time()

        pos = 0
        while True:
            if drop_at is not None and pos >= drop_at:
                record.outcome = "dropped"
                await _abort(stream)
                return
            if stall_at is not None and pos >= stall_at:
                stall_at = None
                record.outcome = "stalled"
                await trio.sleep(faults.stall_s)
                record.outcome = "sending"
            if pos >= send_len:
                break
            limit = min(send_len, pos + chunk_cap)
            for mark in (drop_at, stall_at):
                if mark is not None:
                    limit = min(limit, mark)
            for piece in iter_content(file.seed, file.size, start + pos, start + limit):
                await stream.send_all(piece)
                self._stats.sent(path, record, len(piece))
            pos = limit
            if faults.rate_bps is not None and pos < send_len:
                # pace the next chunk; after the last one, hang up at once so the
                # connection count matches what the client sees
                await trio.sleep_until(began + pos / faults.rate_bps)
        record.outcome = "short" if send_len < end - start else "complete"


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.testing serve [--host H] [--port P]``: print the base URL, serve until killed."""
    parser = argparse.ArgumentParser(prog="python -m engine.testing", description="Fault-injecting HTTP server.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve until killed; the first stdout line is the base URL")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = FaultServer(host=args.host, port=args.port)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve)
            print(url, flush=True)

    # Ctrl-C (SIGINT) stops it even when it was started from a background job, whose shell
    # set SIGINT to "ignore" (Python, and so trio, then leave it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        trio.run(run)
    except KeyboardInterrupt:
        return 130
    return 0
