"""The control channel's gate: token, cookie, Host, Origin and body limits (SPEC 14).

`Gate` is a pure ASGI middleware in front of the whole application, so no
route can forget a check. In order, for every HTTP request and WebSocket
handshake:

1. ``Host`` must be a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``)
   or an ``--allow-host`` name, with the server's port: otherwise 403
   (DNS rebinding).
2. On a WebSocket handshake and on every method other than GET/HEAD/OPTIONS,
   an ``Origin`` header, when present, must be the server's own
   (``http://`` + the Host): otherwise 403, ``null`` included (CSRF,
   cross-site WebSocket hijacking). Clients that are not browsers send none.
3. Every path but ``/`` needs the token: ``Authorization: Bearer`` or the
   HttpOnly, SameSite=Strict cookie that ``GET /?token=`` sets: otherwise 401
   (a WebSocket handshake is refused with 401 too).
4. A request body is read here, counted as it arrives (chunked or not), and
   handed on only when it is at most 1 MiB: otherwise 413.

The token lives in ``<state_dir>/token`` (0600), made once and kept, and is
compared with `hmac.compare_digest`.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, MutableMapping

import trio

from .. import _platform

__all__ = [
    "COOKIE_PREFIX",
    "MAX_BODY_BYTES",
    "MAX_WS_MESSAGE_BYTES",
    "Gate",
    "cookie_name",
    "error_body",
    "load_or_create_token",
    "token_matches",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 1024 * 1024
MAX_WS_MESSAGE_BYTES = 64 * 1024
COOKIE_PREFIX = "recovery_token_"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
# An oversized body is still read (and thrown away) up to this much, so the
# client gets its 413 instead of a connection reset mid-upload.
_DRAIN_LIMIT_BYTES = 8 * MAX_BODY_BYTES
_BODY_TIMEOUT_S = 10.0
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_TOKEN_FILE = "token"


def load_or_create_token(state_dir: Path) -> str:
    """The control token in ``<state_dir>/token`` (0600); created on first use, then kept."""
    path = Path(state_dir) / _TOKEN_FILE
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        token = ""
    if token:
        if (path.stat().st_mode & 0o777) != 0o600:
            os.chmod(path, 0o600)
        return token
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{_TOKEN_FILE}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (token + "\n").encode("ascii"))
        _platform.fsync_file(fd)  # F_FULLFSYNC on macOS
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return token


def token_matches(candidate: str | None, token: str) -> bool:
    """Constant-time comparison; an absent candidate never matches."""
    if not candidate:
        return False
    return hmac.compare_digest(candidate.encode("utf-8", "replace"), token.encode("utf-8"))


def cookie_name(port: int) -> str:
    """Cookies ignore ports, so each server's cookie carries its port in its name."""
    return f"{COOKIE_PREFIX}{port}"


def error_body(code: str, message: str, field: str | None = None) -> bytes:
    """The JSON error body every refusal uses: ``{"error": {"code", "message", "field"?}}``."""
    err: dict[str, str] = {"code": code, "message": message}
    if field is not None:
        err["field"] = field
    return json.dumps({"error": err}).encode("utf-8")


def _headers(scope: Scope) -> dict[str, str]:
    """Request headers by lowercase name (first occurrence wins)."""
    out: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        out.setdefault(name, raw_value.decode("latin-1"))
    return out


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``(name, port or None)`` of a Host header value, None when malformed."""
    value = value.strip().lower()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[: end + 1], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, sep, port_text = value.partition(":")  # type: ignore[assignment]
        if not sep:
            port_text = None
    if port_text is None:
        return name, None
    if not port_text.isdigit() or len(port_text) > 5:
        return None
    return name, int(port_text)


def _cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


class _TooSlow(Exception):
    pass


class Gate:
    """The security middleware (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, token: str, allow_hosts: Iterable[str] = (),
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.allow_hosts = frozenset(h.strip().lower().rstrip(".") for h in allow_hosts if h.strip())

    # -- checks --------------------------------------------------------------------

    def host_allowed(self, host: str | None, port: int | None) -> bool:
        """Is ``host`` (a Host header) a name this server answers to, on its own port?"""
        if host is None:
            return False
        parsed = _split_host(host)
        if parsed is None:
            return False
        name, given_port = parsed
        name = name.rstrip(".")
        if given_port is not None and f"{name}:{given_port}" in self.allow_hosts:
            return True  # an --allow-host given with its port
        if name not in LOOPBACK_NAMES and name not in self.allow_hosts:
            return False
        if given_port is None:
            return port == 80
        return port is None or given_port == port

    def authenticated(self, headers: dict[str, str], port: int | None) -> bool:
        auth = headers.get("authorization", "")
        scheme, _, credentials = auth.partition(" ")
        if scheme.lower() == "bearer" and token_matches(credentials.strip(), self.token):
            return True
        if port is not None and token_matches(_cookie(headers.get("cookie"), cookie_name(port)), self.token):
            return True
        return False

    # -- ASGI ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        server = scope.get("server") or (None, None)
        port = server[1] if server and len(server) > 1 else None
        host = headers.get("host")
        if not self.host_allowed(host, port):
            await self._refuse(scope, send, 403, "E_FORBIDDEN",
                               f"the Host {host!r} is not allowed; use http://127.0.0.1 or start the "
                               "server with --allow-host NAME")
            return
        method = scope.get("method", "GET").upper() if kind == "http" else "GET"
        if kind == "websocket" or method not in _SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and origin.strip().lower() != f"http://{host}".lower():
                await self._refuse(scope, send, 403, "E_FORBIDDEN",
                                   f"cross-origin request refused (Origin {origin!r})")
                return
        authed = self.authenticated(headers, port)
        scope.setdefault("state", {})["authenticated"] = authed
        if not authed and scope.get("path") != "/":
            await self._refuse(scope, send, 401, "E_AUTH",
                               "missing or wrong token: send 'Authorization: Bearer <token>' "
                               "(the token is in <state_dir>/token) or open the link `recovery serve` printed")
            return
        if kind == "http" and method not in _SAFE_METHODS:
            try:
                receive = await self._buffered(headers, receive)
            except _TooLarge:
                await self._refuse(scope, send, 413, "E_INVALID_INPUT",
                                   f"the request body is over {self.max_body_bytes} bytes")
                return
            except _TooSlow:
                await self._refuse(scope, send, 408, "E_INVALID_INPUT",
                                   f"the request body did not arrive within {_BODY_TIMEOUT_S:g} s")
                return
            except _Disconnected:
                return
        await self.app(scope, receive, send)

    async def _buffered(self, headers: dict[str, str], receive: Receive) -> Receive:
        """Read the whole body, counting bytes as they arrive; replay it to the app."""
        declared = headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > _DRAIN_LIMIT_BYTES:
            raise _TooLarge
        chunks: list[bytes] = []
        total = 0
        too_large = False
        with trio.move_on_after(_BODY_TIMEOUT_S) as timeout:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                body = message.get("body", b"")
                total += len(body)
                if total > self.max_body_bytes:
                    too_large = True
                    chunks.clear()
                    if total > _DRAIN_LIMIT_BYTES:
                        break
                else:
                    chunks.append(body)
                if not message.get("more_body", False):
                    break
        if too_large:
            raise _TooLarge
        if timeout.cancelled_caught:
            raise _TooSlow
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    async def _refuse(self, scope: Scope, send: Send, status: int, code: str, message: str) -> None:
        body = error_body(code, message)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store")]
        if scope["type"] == "http":
            if status in (408, 413):
                headers.append((b"connection", b"close"))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
