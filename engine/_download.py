"""The built-in ``download`` kind: resumable, verified HTTP downloads (SPEC section 6).

One attempt streams ``spec.url`` into ``<dest>.part`` and, once the size (and
sha256 when given) is verified, renames it to ``<dest>`` atomically.

Resumable state (``ctx.state``, written into the snapshot):

``offset``        bytes of ``.part`` that are fsynced: the resume point
``etag``, ``last_modified``   validators of the version being fetched (If-Range)
``total``         the file's size when the server said it
``cd_name``       safe file name from Content-Disposition, if any
``complete``      the verified ``.part`` is about to be (or was) renamed
``final_dest``    where it is renamed to, when that is not ``spec.dest``

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

import contextlib
import email.message
import hashlib
import logging
import os
import queue
import re
import socket
import threading
import unicodedata
import urllib.parse
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Any, Callable, Literal

import attrs
import httpx
import trio

from ._units import human_bytes
from ._errors import AttemptFailed, RefusedError, classify_exception, classify_status, failure
from ._fileio import PartFile, Writer, free_bytes, replace_durably
from ._kinds import AttemptContext
from ._settings import Settings
from ._specs import DownloadSpec, redact_headers

__all__ = [
    "FALLBACK_NAME",
    "DownloadKind",
    "dest_within_root",
    "download_paths",
    "redact_url",
    "safe_basename",
]

log = logging.getLogger("engine.download")

#: The file name used when neither the URL nor the user gives one.
FALLBACK_NAME = "download"
PART_SUFFIX = ".part"
_MAX_NAME_BYTES = 200  # leaves room for ".part" under the usual 255-byte limit
_CLOSE_GRACE_S = 1.0
_SCHEMES = {"http": 80, "https": 443}
# Headers the download manages itself; a spec may not set them.
_MANAGED_HEADERS = frozenset({"range", "if-range"})
# Query keys whose values are credentials in signed URLs (S3, GCS, Azure SAS,
# CloudFront, Hugging Face, generic tokens).
_SECRET_QUERY_KEYS = frozenset({
    "token", "access_token", "auth", "authorization", "sig", "signature", "key", "api_key",
    "apikey", "api-key", "password", "passwd", "secret", "client_secret", "credential",
    "policy", "key-pair-id", "session", "sessionid", "code",
})
_SECRET_QUERY_WORDS = ("token", "secret", "signature", "password", "credential")
_SECRET_QUERY_PREFIXES = ("x-amz-", "x-goog-")
_WINDOWS_RESERVED = re.compile(r'[<>:"|?*]')
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Bytes asked of the socket per read. httpcore asks for 64 KiB, and on a fast link every
# read is a trip through h11, httpcore, trio and the write loop: about half the CPU of a
# loopback download. The kernel returns what it has, so a larger request never delays
# data on a slow link.
_READ_BYTES = 1024 * 1024
_LOWAT_MAX = 256 * 1024  # wake for at most this many bytes at once (SO_RCVLOWAT)
_LOWAT_WARMUP = 1024 * 1024  # measure the rate over this much before batching
_STREAM_LINKS = ("_stream", "_httpcore_stream", "_connection")


# --- names, paths and redaction ------------------------------------------------


def safe_basename(name: str) -> str | None:
    """Reduce a server-supplied file name to a safe base name, or None if nothing is left.

    Keeps only the last path component (``/`` and ``\\`` both separate),
    drops control and format characters (bidi overrides too), replaces
    characters Windows refuses, strips leading dots (no ``..``, no hidden
    files) and trailing dots and spaces, and caps the length.
    """
    name = unicodedata.normalize("NFC", name)
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))
    name = _WINDOWS_RESERVED.sub("_", name)
    name = name.strip().lstrip(".").strip().rstrip(". ")
    if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
        stem, dot, suffix = name.rpartition(".")
        if not dot or len(suffix.encode("utf-8")) > 20:
            stem, suffix = name, ""
        keep = _MAX_NAME_BYTES - len(suffix.encode("utf-8")) - (1 if suffix else 0)
        stem = stem.encode("utf-8")[:keep].decode("utf-8", "ignore").rstrip(". ")
        name = f"{stem}.{suffix}" if suffix else stem
    return name or None


def name_from_url(url: str) -> str | None:
    """The safe base name of the URL path's last segment, or None."""
    path = urllib.parse.urlsplit(url).path
    return safe_basename(urllib.parse.unquote(path.rsplit("/", 1)[-1]))


def name_from_content_disposition(value: str | None) -> str | None:
    """The safe base name a ``Content-Disposition`` header suggests (``filename*`` wins)."""
    if not value:
        return None
    msg = email.message.Message()
    msg["content-disposition"] = value
    try:
        raw = msg.get_filename()
    except (ValueError, LookupError):
        return None
    return safe_basename(raw) if raw else None


def download_paths(spec: DownloadSpec) -> tuple[Path, Path]:
    """``(dest, dest.part)`` of a validated spec."""
    if spec.dest is None:
        raise ValueError("the spec has no destination; validate it first")
    dest = Path(spec.dest)
    return dest, dest.with_name(dest.name + PART_SUFFIX)


def dest_within_root(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """True when ``path`` (symlinks resolved; relative to ``root``) lies strictly inside ``root``."""
    root_path = Path(root).resolve()
    target = Path(path)
    if not target.is_absolute():
        target = root_path / target
    target = target.resolve()
    return target != root_path and target.is_relative_to(root_path)


def _secret_query_key(key: str) -> bool:
    low = urllib.parse.unquote_plus(key).lower()
    return (low in _SECRET_QUERY_KEYS or low.startswith(_SECRET_QUERY_PREFIXES)
            or any(word in low for word in _SECRET_QUERY_WORDS))


def redact_url(url: str) -> str:
    """``url`` safe to show: userinfo dropped, credential-like query values replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    netloc = parts.netloc.rpartition("@")[2]
    pairs = []
    for pair in parts.query.split("&") if parts.query else []:
        key, sep, _value = pair.partition("=")
        pairs.append(f"{key}=***" if sep and _secret_query_key(key) else pair)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "&".join(pairs), parts.fragment))


def _refuse(field: str, message: str) -> RefusedError:
    return RefusedError("E_INVALID_INPUT", message, field=field)


def _validate_url(url: Any) -> str:
    if not isinstance(url, str) or not url:
        raise _refuse("url", "the URL must be a non-empty string")
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in url):
        raise _refuse("url", "the URL contains whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        raise _refuse("url", f"not a valid URL: {redact_url(url)}") from None
    if parts.scheme.lower() not in _SCHEMES:
        scheme = parts.scheme or "(none)"
        raise _refuse("url", f"only http and https URLs are accepted, not {scheme}")
    if not parts.hostname:
        raise _refuse("url", "the URL has no host")
    return url


def _validate_sha256(sha: Any) -> str | None:
    if sha is None:
        return None
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha.strip().lower()):
        raise _refuse("sha256", "sha256 must be 64 hexadecimal characters")
    return sha.strip().lower()


def _validate_headers(headers: Any) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise _refuse("headers", "headers must be a mapping of names to values")
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise _refuse("headers", "header names and values must be strings")
        if not name or any(ch in name for ch in ":\r\n") or any(ch in value for ch in "\r\n\x00"):
            raise _refuse("headers", f"header {name!r} has an invalid name or value")
        if name.lower() in _MANAGED_HEADERS:
            raise _refuse("headers", f"the {name} header is managed by the download itself")
    return dict(headers)


def _resolve_dest(dest: Any, url: str, root: Path) -> Path:
    name = name_from_url(url) or FALLBACK_NAME
    if dest is None:
        return root / name
    if not isinstance(dest, (str, os.PathLike)):
        raise _refuse("dest", "the destination must be a path")
    raw = os.fspath(dest)
    if not isinstance(raw, str) or not raw.strip() or "\x00" in raw:
        raise _refuse("dest", "the destination must be a non-empty path")
    path = Path(raw)
    if not path.is_absolute():
        path = root / path
    if raw.endswith(("/", os.sep)) or (os.altsep and raw.endswith(os.altsep)) or path.is_dir():
        path = path / name
    path = Path(os.path.abspath(path))
    if path.name in ("", ".", "..") or path.is_dir():
        raise _refuse("dest", f"the destination {path} is not a file path")
    for parent in path.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise _refuse("dest", f"{parent} is not a directory")
            break
    return path


def _derived_name(spec: DownloadSpec) -> bool:
    """Whether the destination's name is the fallback for a URL without a usable name."""
    return spec.dest is not None and Path(spec.dest).name == FALLBACK_NAME and name_from_url(spec.url) is None


# --- HTTP helpers -----------------------------------------------------------------

_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", re.IGNORECASE)
_UNSATISFIED = re.compile(r"\s*bytes\s+\*/(\d+)\s*", re.IGNORECASE)


def _content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``(start, end_inclusive, total or None)`` of a 206's Content-Range, None if unusable."""
    m = _CONTENT_RANGE.fullmatch(value or "")
    if m is None:
        return None
    start, end = int(m[1]), int(m[2])
    total = None if m[3] == "*" else int(m[3])
    if end < start or (total is not None and end >= total):
        return None
    return start, end, total


def _unsatisfied_total(value: str | None) -> int | None:
    m = _UNSATISFIED.fullmatch(value or "")
    return int(m[1]) if m else None


def _content_length(headers: httpx.Headers) -> int | None:
    try:
        value = int(headers.get("content-length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None




# --- the kind -----------------------------------------------------------------------


@attrs.define(eq=False)
class DownloadKind:
    """Resumable, verified HTTP(S) downloads into ``<dest>.part``, renamed when verified.

    ``write`` and ``statvfs`` are seams for tests (disk full, permission
    denied, too little free space); the engine uses the defaults.
    """

    name: str = attrs.field(default="download", init=False)
    spec_type: type = attrs.field(default=DownloadSpec, init=False)
    _write: Writer = os.write
    _statvfs: Callable[[str], os.statvfs_result] = os.statvfs

    def validate(self, spec: Any, settings: Settings) -> DownloadSpec:
        """Check the spec and return it with an absolute ``dest`` (see the module docstring)."""
        if not isinstance(spec, DownloadSpec):
            raise _refuse("kind", f"a download needs a DownloadSpec, not {type(spec).__name__}")
        url = _validate_url(spec.url)
        sha = _validate_sha256(spec.sha256)
        headers = _validate_headers(spec.headers)
        dest = _resolve_dest(spec.dest, url, settings.download_root_path)
        return attrs.evolve(spec, url=url, dest=str(dest), sha256=sha, headers=headers)

    def resource_key(self, spec: DownloadSpec) -> str | None:
        return spec.dest

    def scope(self, spec: DownloadSpec, state: dict[str, Any]) -> str | None:
        """The URL's host, lowercase, with the port when it is not the scheme's default."""
        parts = urllib.parse.urlsplit(spec.url)
        host = (parts.hostname or "").lower()
        if ":" in host:
            host = f"[{host}]"
        try:
            port = parts.port
        except ValueError:
            port = None
        if port is None or port == _SCHEMES.get(parts.scheme.lower()):
            return host
        return f"{host}:{port}"

    def describe(self, spec: DownloadSpec) -> dict[str, Any]:
        """The spec as shown in events and the API: no credentials."""
        return {
            "url": redact_url(spec.url),
            "dest": spec.dest,
            "sha256": spec.sha256,
            "headers": redact_headers(spec.headers or {}),
        }

    def discard(self, spec: DownloadSpec, state: dict[str, Any]) -> None:
        """Delete the ``.part`` file; a finished destination is never touched."""
        _dest, part = download_paths(spec)
        try:
            part.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not delete partial file %s: %s", part, exc)

    async def attempt(self, ctx: AttemptContext) -> None:
        """Run one attempt: return when ``dest`` is complete and verified, else raise."""
        spec: DownloadSpec = ctx.spec
        dest, part = download_paths(spec)
        if _finish_recorded_completion(dest, part, ctx.state):
            await trio.lowlevel.checkpoint()
            return
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            part_file = PartFile.open(part, _recorded_offset(ctx.state), write=self._write)
        except OSError as exc:
            raise classify_exception(exc) from exc
        transfer = _Transfer(ctx, spec, dest, part_file, self._statvfs)
        try:
            await transfer.run()
        except AttemptFailed as exc:
            # The server refused the request (404, 401/403, a bad URL, TLS): leave no
            # empty .part behind. Anything with data in it is kept for the resume,
            # and so is the .part of a disk or permission failure, which the user fixes.
            if (exc.error.code in _REFUSED_BY_SERVER and part_file.size == 0
                    and not ctx.state.get("complete")):
                transfer.close()
                with contextlib.suppress(OSError):
                    if part.stat().st_size == 0:
                        part.unlink()
            raise
        finally:
            transfer.close()


def _recorded_offset(state: dict[str, Any]) -> int:
    offset = state.get("offset")
    return offset if isinstance(offset, int) and offset > 0 else 0


def _finish_recorded_completion(dest: Path, part: Path, state: dict[str, Any]) -> bool:
    """Finish a download that crashed between its last checkpoint and its rename."""
    if not state.get("complete"):
        return False
    target = Path(state.get("final_dest") or dest)
    size = state.get("offset")
    try:
        if part.is_file() and part.stat().st_size == size:
            replace_durably(part, target)
            return True
        if not part.exists() and target.is_file() and target.stat().st_size == size:
            return True
    except OSError as exc:
        raise classify_exception(exc) from exc
    state.clear()  # neither file is what was recorded: start over
    return False


def _widen_reads(response: httpx.Response) -> None:
    """Let the HTTP/1.1 connection carrying ``response`` read up to `_READ_BYTES` at a time.

    httpcore has no setting for it, so this follows the response's stream down
    to the connection and sets its ``READ_NUM_BYTES`` on that one instance
    (never the class: an embedding application's own clients are untouched).
    Best effort: any other transport (``MockTransport``, HTTP/2) is left alone.
    """
    obj: Any = response.stream
    for _ in range(8):
        if isinstance(getattr(type(obj), "READ_NUM_BYTES", None), int):
            obj.READ_NUM_BYTES = _READ_BYTES
            return
        obj = next((getattr(obj, name) for name in _STREAM_LINKS if hasattr(obj, name)), None)
        if obj is None:
            return



class _ReadBatcher:
    """Let the kernel wake the download only once a batch of bytes is waiting.

    Each wake-up costs far more (h11, httpcore, trio, this loop) than copying
    the bytes, and a reader that is woken for every 64 KiB that trickles in
    spends three times the CPU of one that takes them 1 MiB at a time. So
    the socket's ``SO_RCVLOWAT`` is set to about 50 ms worth of data at the
    rate seen so far (at most `_LOWAT_MAX`) and never above the bytes still
    expected, so the last ones, and a slow link, still wake it at once. It is
    put back to 1 before the connection returns to the pool. Best effort:
    without a plain socket underneath (TLS stays supported; only the kernel
    socket is tuned), or on another OS, nothing changes.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._sock: Any = None
        self._lowat = 1
        self._started = trio.current_time()
        self._bytes = 0
        stream = response.extensions.get("network_stream")
        try:
            sock = stream.get_extra_info("socket") if stream is not None else None
        except Exception:  # noqa: BLE001 - an unexpected transport: leave it alone
            sock = None
        if sock is not None and hasattr(socket, "SO_RCVLOWAT"):
            self._sock = sock

    def received(self, nbytes: int, remaining: int | None) -> None:
        if self._sock is None:
            return
        self._bytes += nbytes
        elapsed = trio.current_time() - self._started
        if remaining is None or self._bytes < _LOWAT_WARMUP or elapsed <= 0:
            target = 1
        else:
            target = max(1, min(_LOWAT_MAX, remaining, int(self._bytes / elapsed * 0.05)))
        self._set(target)

    def _set(self, value: int) -> None:
        if value == self._lowat:
            return
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, value)
            self._lowat = value
        except OSError:
            self._sock = None  # not supported here: stop trying

    def close(self) -> None:
        if self._sock is not None:
            self._set(1)


class _HashWorker:
    """sha256 of the body, computed in a helper thread while the next chunk is read.

    hashlib releases the GIL on large buffers, so on a fast link hashing
    overlaps the network instead of adding its ~1 s per GiB to the wall time.
    Chunks (immutable ``bytes``) go through a bounded queue: a hash that falls
    behind slows the loop down rather than buffering without limit.
    `hexdigest` waits for what is queued; `close` ends the thread and is
    called on every way out of an attempt, so no thread outlives it.
    """

    _QUEUED_CHUNKS = 16

    def __init__(self, hasher: Any = None) -> None:
        self._hasher = hasher if hasher is not None else hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=self._QUEUED_CHUNKS)
        self._thread = threading.Thread(target=self._run, name="engine-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hasher.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(bytes(chunk))  # no copy for bytes; a buffer that may change is copied

    def hexdigest(self) -> str:
        self.close()
        return str(self._hasher.hexdigest())

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


_Outcome = Literal["done", "more", "restart"]
_REFUSED_BY_SERVER = frozenset({"E_HTTP_CLIENT", "E_AUTH", "E_INVALID_INPUT", "E_TLS"})
_VALIDATORS = ("etag", "last_modified", "total", "cd_name")


@attrs.define(eq=False)
class _Transfer:
    """One attempt's moving parts: the open ``.part``, the hash, the totals."""

    ctx: AttemptContext
    spec: DownloadSpec
    dest: Path
    part: PartFile
    statvfs: Callable[[str], os.statvfs_result]
    hasher: _HashWorker | None = None
    hashed: int = 0
    total: int | None = None
    _batcher: Any = None

    @property
    def state(self) -> dict[str, Any]:
        return self.ctx.state

    async def run(self) -> None:
        state = self.state
        if self.part.size < _recorded_offset(state):
            state["offset"] = self.part.size  # .part lost or cut behind our back: keep what is there
        known_total = state.get("total")
        self.total = known_total if isinstance(known_total, int) else None
        if self.total is not None and self.part.size > self.total:
            await self._restart(f"the partial file ({self.part.size} bytes) is larger than the file")
        if self.spec.sha256:
            self.hasher = _HashWorker()
        restarts = 0
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

    def _headers(self, offset: int) -> httpx.Headers:
        headers = httpx.Headers(self.spec.headers)
        headers["Accept-Encoding"] = "identity"  # byte offsets must be file offsets
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            etag = self.state.get("etag")
            validator = etag if etag and not etag.startswith("W/") else self.state.get("last_modified")
            if validator:
                headers["If-Range"] = validator
        return headers

    async def _request(self) -> _Outcome:
        ctx, offset = self.ctx, self.part.size
        settings = ctx.settings
        if self.hasher is not None and self.hashed != offset:
            await self._rehash(offset)
        timeout = httpx.Timeout(connect=settings.connect_timeout_s, read=settings.stall_timeout_s,
                                write=settings.stall_timeout_s, pool=None)
        request = ctx.http.build_request("GET", self.spec.url, headers=self._headers(offset),
                                         timeout=timeout)
        response: httpx.Response | None = None
        wait_s = settings.connect_timeout_s + settings.stall_timeout_s
        try:
            with trio.move_on_after(wait_s):
                response = await ctx.http.send(request, stream=True, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise classify_exception(exc) from exc
        if response is None:
            raise failure("E_NET_TIMEOUT", f"no response from the server within {wait_s:g} s")
        _widen_reads(response)
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

    def _same_version(self, headers: httpx.Headers) -> bool:
        """False when the response's validators contradict the recorded ones."""
        etag, got_etag = self.state.get("etag"), headers.get("etag")
        if etag and got_etag:
            return bool(etag == got_etag)
        modified, got_modified = self.state.get("last_modified"), headers.get("last-modified")
        return not (modified and got_modified and modified != got_modified)

    async def _handle(self, response: httpx.Response, offset: int) -> _Outcome:
        status, headers = response.status_code, response.headers
        if status == 416 and offset > 0:
            total = _unsatisfied_total(headers.get("content-range"))
            if total == offset and self._same_version(headers):
                self._set_total(total)
                return "done"
            why = (f"the server's file has {total} bytes, the partial file {offset}" if total is not None
                   else f"the server cannot resume at byte {offset}")
            await self._restart(why)
            return "restart"
        if status not in (200, 206):
            raise classify_status(status, headers)

        if status == 206:
            content_range = _content_range(headers.get("content-range"))
            problem = None
            if content_range is None:
                problem = "a partial response without a usable Content-Range"
            elif content_range[0] != offset:
                problem = f"a partial response from byte {content_range[0]} when byte {offset} was asked"
            elif not self._same_version(headers) or (
                    content_range[2] is not None and self.total is not None and content_range[2] != self.total):
                problem = "a partial response for another version of the file"
            if problem is not None or content_range is None:
                await self._restart(f"the server sent {problem}")
                return "restart"
            end: int | None = content_range[1] + 1
            self._set_total(content_range[2] if content_range[2] is not None else self.total)
            self._adopt_validators(headers, fresh=False)
        else:
            if offset > 0:
                await self._restart("the server ignored the range request or the file changed")
            end = _content_length(headers)
            self._set_total(end)
            self._adopt_validators(headers, fresh=True)

        self._check_space(end if end is not None else self.total)
        self.ctx.progress(self.part.size, self.total)
        await self._stream(response, end)
        if end is not None and self.part.size < end:
            raise failure("E_NET_INTERRUPTED",
                          f"the server closed the connection after {self.part.size} of {end} bytes")
        if self.total is not None and self.part.size < self.total:
            return "more"  # a 206 for less than the rest: ask for what is missing
        return "done"

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
        self._batcher = _ReadBatcher(response)
        try:
            await self._consume(chunks, end, stall_s)
        finally:
            self._batcher.close()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with trio.move_on_after(_CLOSE_GRACE_S, shield=True):
                    await aclose()

    async def _consume(self, chunks: AsyncIterator[bytes], end: int | None, stall_s: float) -> None:
        ctx, part = self.ctx, self.part
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
            if self.hasher is not None:
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
        self.hasher = _HashWorker(hasher)

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
            self.part.close()
            replace_durably(self.part.path, target)
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
        try:
            self._sync()
        except OSError as exc:
            log.warning("op %s: could not sync the partial file (%s); keeping offset %s",
                        self.ctx.op_id, exc, self.state.get("offset"))
        finally:
            self.part.close()
