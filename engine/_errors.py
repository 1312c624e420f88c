"""The one table of error codes (SPEC section 4) and the one boundary into it.

Every failure the engine reports is an :class:`ErrorInfo` built from
:data:`ERRORS`; third-party exceptions (httpx, ssl, OS, trio) are mapped only
here, by :func:`classify_exception`, so the rest of the engine never inspects
foreign exception types.  The exceptions the engine raises form one tree::

    RecoveryError            root of everything the engine raises
    ├── RefusedError         a control, submission or setting was refused
    │                        (.code, .message, .field; E_INVALID_STATE, ...)
    ├── StateDirError        the state directory cannot be used
    │   └── StateDirLocked   another engine owns this state directory
    └── AttemptFailed        one attempt failed; .error is the classified
                             ErrorInfo, .retry_after_s the server's hint

Messages never carry credentials: every message passes through
:func:`error`, which strips userinfo, query and fragment from URLs and masks
``Authorization: ...``/``token=...`` style values.
"""

from __future__ import annotations

import datetime
import email.utils
import errno
import http
import math
import re
import signal
import socket
import ssl
import time
import types
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import httpx
import trio

__all__ = [
    "ERRORS", "AttemptFailed", "ErrorInfo", "ErrorKind", "RecoveryError", "RefusedError",
    "StateDirError", "StateDirLocked", "classify_exception", "classify_install", "classify_status", "error",
    "failure", "parse_retry_after",
]


@attrs.frozen
class ErrorKind:
    """One row of the table: what a code means, independent of any instance."""

    code: str
    category: str
    retryable: bool
    suggestion: str


@attrs.frozen
class ErrorInfo:
    """The classified record of one failure, as shown to users (SPEC section 4)."""

    code: str
    category: str
    retryable: bool
    message: str
    suggestion: str

    def to_dict(self) -> dict[str, object]:
        return attrs.asdict(self)


def _kinds(*rows: tuple[str, str, bool, str]) -> Mapping[str, ErrorKind]:
    return types.MappingProxyType({row[0]: ErrorKind(*row) for row in rows})


ERRORS: Mapping[str, ErrorKind] = _kinds(
    ("E_NET_TIMEOUT", "network", True,
     "Check your internet connection; progress is kept and the next attempt resumes. "
     "If it keeps timing out, reduce concurrent operations."),
    ("E_NET_UNREACHABLE", "network", True,
     "Check your internet connection and proxy settings, and that the server in the URL "
     "is up; the engine retries by itself."),
    ("E_NET_INTERRUPTED", "network", True,
     "Check your internet connection; progress is kept and the transfer resumes "
     "where it stopped on the next attempt."),
    ("E_SERVER_OVERLOAD", "server", True,
     "The server is busy or failing; wait for the automatic retry, or reduce "
     "concurrent operations."),
    ("E_HTTP_CLIENT", "request", False,
     "Check that the URL is correct and the file still exists; retrying will not help."),
    ("E_AUTH", "request", False,
     "Supply an access token via headers (for example 'Authorization: Bearer <token>') "
     "and check that it grants access to this file."),
    ("E_DISK_FULL", "disk", False,
     "Free disk space on the destination drive (or choose another destination), "
     "then retry; progress is kept."),
    ("E_PERMISSION", "permission", False,
     "Check permissions: the destination folder must be writable by this user and "
     "not on a read-only file system."),
    ("E_INTEGRITY", "integrity", True,
     "The file did not match its expected size or sha256; one fresh download is tried "
     "automatically. If it fails again, check the expected checksum."),
    ("E_TLS", "security", False,
     "Check the system clock and the server's certificate; behind an HTTPS-inspecting "
     "proxy, install its CA certificate."),
    ("E_INSTALL_FAILED", "install", False,
     "Read the end of the command's output (output_tail) for the cause, fix it, "
     "then retry."),
    ("E_CIRCUIT_OPEN", "breaker", True,
     "Too many recent failures on this host (or scope); the engine waits without spending "
     "retries and tries again when the breaker half-opens. Use force retry to try once now."),
    ("E_INVALID_INPUT", "input", False,
     "Correct the request: only http and https URLs, destinations inside the "
     "download root and known spec fields are accepted."),
    ("E_EXISTS", "input", False,
     "The destination already holds a file this engine did not write; it was left untouched. "
     "Choose another destination, or ask for overwrite (--overwrite, \"overwrite\": true)."),
    ("E_IN_USE", "input", False,
     "Another engine (another state directory or process) is writing this destination; "
     "wait for it to finish, or choose another destination."),
    ("E_INTERNAL", "internal", False,
     "This is a bug in the engine: report it with the log. Use force retry to try again."),
    ("E_INVALID_STATE", "control", False,
     "Check the operation's current status; this control does not apply to it."),
    ("E_NOT_RETRYABLE", "control", False,
     "Automatic retry cannot fix this error; fix its cause, then use force retry."),
    ("E_NOT_FOUND", "request", False,
     "Check the operation id; list the operations to see the known ids."),
    ("E_FORBIDDEN", "request", False,
     "Start the server with --allow-installs to accept install and project operations."),
)


class RecoveryError(Exception):
    """Root of every exception the engine raises."""


class RefusedError(RecoveryError):
    """A control, submission or setting was refused."""

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.message), self.__dict__)

    def to_dict(self) -> dict[str, str]:
        out = {"code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


class StateDirError(RecoveryError):
    """The state directory cannot be used (missing parent, no permission, read-only...)."""


class StateDirLocked(StateDirError):
    """Another engine owns this state directory."""


class AttemptFailed(RecoveryError):
    """One attempt of an operation failed; carries the classified record."""

    def __init__(self, error: ErrorInfo, *, retry_after_s: float | None = None) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.error,), self.__dict__)


# --- building records -------------------------------------------------------

# Greedy userinfo (up to the last '@' before the path) so a raw '@' in a
# password cannot leak its tail.
_URL = re.compile(
    r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?:[^/?#\s'\"<>]*@)?"
    r"(?P<rest>[^?#\s'\"<>]*)(?:[?#][^\s'\"<>]*)?",
    re.IGNORECASE,
)
_SECRET = re.compile(
    r"\b(?P<key>(?:proxy-)?authorization|(?:set-)?cookie|x-api-key|api[-_]?key|"
    r"access[-_]?token|token|password|passwd|secret)(?P<sep>\s*[:=]\s*)"
    r"(?:(?:bearer|basic|token)\s+)?[^\s,;&'\"]+",
    re.IGNORECASE,
)


def _redact(text: str) -> str:
    text = _URL.sub(lambda m: m["scheme"] + m["rest"], text)
    return _SECRET.sub(lambda m: m["key"] + m["sep"] + "<redacted>", text)


def error(code: str, message: str, *, suggestion: str | None = None) -> ErrorInfo:
    """Build the record for ``code`` from the table; the message is redacted."""
    try:
        kind = ERRORS[code]
    except KeyError:
        raise ValueError(f"unknown error code {code!r}") from None
    return ErrorInfo(code, kind.category, kind.retryable, _redact(message),
                     kind.suggestion if suggestion is None else suggestion)


def failure(code: str, message: str, *, retry_after_s: float | None = None) -> AttemptFailed:
    """The exception an attempt raises to report a classified failure."""
    return AttemptFailed(error(code, message), retry_after_s=retry_after_s)


# --- HTTP statuses ----------------------------------------------------------

_OVERLOAD = frozenset({408, 429, 500, 502, 503, 504, *range(520, 525)})
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_CLOUDFLARE = {
    520: "Web Server Returned an Unknown Error", 521: "Web Server Is Down",
    522: "Connection Timed Out", 523: "Origin Is Unreachable", 524: "A Timeout Occurred",
}


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP date).

    Returns None when absent or unparseable, never a negative delay.
    """
    if value is None or not (value := value.strip()):
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are always GMT
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if headers is None:
        return None
    if (value := headers.get(name)) is not None:
        return value
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def classify_status(status: int, headers: Mapping[str, str] | None = None) -> AttemptFailed:
    """Map an unwanted HTTP status to its code; 429/503 carry Retry-After."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = _CLOUDFLARE.get(status, "")
    message = f"HTTP {status} {phrase}".rstrip() + " from the server"
    retry_after_s = None
    if status in _RETRY_AFTER_STATUSES:
        retry_after_s = parse_retry_after(_header(headers, "Retry-After"))
        if retry_after_s is not None:
            message += f" (Retry-After {retry_after_s:g} s)"
    if status in (401, 403):
        code = "E_AUTH"
    elif status in _OVERLOAD or status >= 500:
        code = "E_SERVER_OVERLOAD"
    else:  # other 4xx, and any status the caller did not expect
        code = "E_HTTP_CLIENT"
    return failure(code, message, retry_after_s=retry_after_s)


# --- exceptions -------------------------------------------------------------

_ERRNO_CODES: Mapping[int, str] = {
    errno.ENOSPC: "E_DISK_FULL", errno.EDQUOT: "E_DISK_FULL",
    errno.EACCES: "E_PERMISSION", errno.EPERM: "E_PERMISSION", errno.EROFS: "E_PERMISSION",
    errno.ECONNRESET: "E_NET_INTERRUPTED", errno.EPIPE: "E_NET_INTERRUPTED",
    errno.ECONNABORTED: "E_NET_INTERRUPTED",
    errno.ECONNREFUSED: "E_NET_UNREACHABLE", errno.ENETUNREACH: "E_NET_UNREACHABLE",
    errno.EHOSTUNREACH: "E_NET_UNREACHABLE", errno.ETIMEDOUT: "E_NET_TIMEOUT",
}
_PREFIX = {
    "E_NET_TIMEOUT": "Timed out", "E_NET_UNREACHABLE": "Could not reach the server",
    "E_NET_INTERRUPTED": "Connection interrupted", "E_DISK_FULL": "Disk full",
    "E_PERMISSION": "Permission denied", "E_TLS": "TLS handshake failed",
    "E_INVALID_INPUT": "Invalid request", "E_INTERNAL": "Internal error",
}
_HTTPX_TIMEOUTS = {
    httpx.ConnectTimeout: "connecting to the server",
    httpx.ReadTimeout: "waiting for data from the server",
    httpx.WriteTimeout: "sending to the server",
    httpx.PoolTimeout: "waiting for a free connection",
    httpx.TimeoutException: "waiting for the server",
}
_INVALID_INPUT = (httpx.TooManyRedirects, httpx.UnsupportedProtocol, httpx.InvalidURL,
                  httpx.LocalProtocolError)
# A handshake cut short by the network, as opposed to a TLS-level refusal.
_SSL_CUT_SHORT = (ssl.SSLEOFError, ssl.SSLSyscallError, ssl.SSLZeroReturnError)
# Wrappers are looked through to their cause; the code is the fallback when
# the cause is not recognised.
_WRAPPERS: tuple[tuple[type[BaseException], str | None], ...] = (
    (httpx.ConnectError, "E_NET_UNREACHABLE"),
    (httpx.ProxyError, "E_NET_UNREACHABLE"),
    (httpx.TransportError, "E_NET_INTERRUPTED"),
    (trio.BrokenResourceError, "E_NET_INTERRUPTED"),
    (trio.ClosedResourceError, "E_NET_INTERRUPTED"),
    (BaseExceptionGroup, None),
)
_MAX_DEPTH = 12
_EAI_NAMES = {getattr(socket, n): n for n in dir(socket) if n.startswith("EAI_")}


def _describe(exc: BaseException) -> str:
    """Name an exception for a message: errno name, strerror and file, or type and text."""
    if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, ssl.SSLError):
        name = errno.errorcode.get(exc.errno) or _EAI_NAMES.get(exc.errno, str(exc.errno))
        text = f"[{name}] {exc.strerror or exc}"
        if exc.filename is not None:
            text += f": {str(exc.filename)!r}"
        if exc.filename2 is not None:
            text += f" -> {str(exc.filename2)!r}"
        return text
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# Suggestions that fit the cause better than the code's general one (SPEC 4).
_DNS_SUGGESTION = ("The host name could not be looked up: check that it is spelled correctly in the URL, "
                   "and your internet connection and DNS settings.")
_ERRNO_SUGGESTIONS: Mapping[int, str] = {
    errno.ECONNREFUSED: "Nothing accepted the connection at that address and port: check that the server "
                        "is running and the port in the URL is right; the engine retries by itself.",
    errno.ENETUNREACH: "No network route to the server: check your internet connection, VPN and proxy.",
    errno.EHOSTUNREACH: "The server's host cannot be reached: check your connection and that the host is up.",
}


def _made(code: str, exc: BaseException, detail: str | None = None, *,
          suggestion: str | None = None) -> AttemptFailed:
    if suggestion is None and isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError):
        suggestion = _ERRNO_SUGGESTIONS.get(exc.errno or 0)
    return AttemptFailed(error(code, f"{_PREFIX[code]}: {detail or _describe(exc)}", suggestion=suggestion))


def _specific(exc: BaseException) -> AttemptFailed | None:
    """Classify an exception that names its own cause, or None."""
    if isinstance(exc, AttemptFailed):
        return exc
    if isinstance(exc, httpx.HTTPStatusError):
        return classify_status(exc.response.status_code, exc.response.headers)
    for cls, doing in _HTTPX_TIMEOUTS.items():
        if isinstance(exc, cls):
            return _made("E_NET_TIMEOUT", exc, f"{doing} ({_describe(exc)})")
    if isinstance(exc, _INVALID_INPUT):
        return _made("E_INVALID_INPUT", exc)
    if isinstance(exc, httpx.RemoteProtocolError):
        return _made("E_NET_INTERRUPTED", exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or str(exc)
        return failure("E_TLS", f"TLS certificate verification failed: {why}")
    if isinstance(exc, _SSL_CUT_SHORT):
        return _made("E_NET_INTERRUPTED", exc, f"TLS handshake cut short ({_describe(exc)})")
    if isinstance(exc, ssl.SSLError):
        return _made("E_TLS", exc)
    if isinstance(exc, (socket.gaierror, socket.herror)):
        return _made("E_NET_UNREACHABLE", exc, f"DNS lookup failed ({_describe(exc)})",
                     suggestion=_DNS_SUGGESTION)
    if isinstance(exc, (TimeoutError, trio.TooSlowError)):
        return _made("E_NET_TIMEOUT", exc)
    if isinstance(exc, OSError) and (code := _ERRNO_CODES.get(exc.errno or 0)):
        return _made(code, exc)
    return None


def _is_library_internal(exc: BaseException) -> bool:
    # httpcore/h11 exceptions only appear wrapped by httpx: look through them.
    return type(exc).__module__.split(".")[0] in ("httpcore", "h11")


def _classify(exc: BaseException, depth: int) -> AttemptFailed | None:
    if (found := _specific(exc)) is not None:
        return found
    fallback: str | None = None
    for cls, code in _WRAPPERS:
        if isinstance(exc, cls):
            fallback = code
            break
    else:
        bare_oserror = isinstance(exc, OSError) and exc.errno is None
        if not (bare_oserror or _is_library_internal(exc)):
            return None  # a foreign exception: its own type is the cause
    if depth < _MAX_DEPTH:
        children: list[BaseException] = []
        if isinstance(exc, BaseExceptionGroup):
            children.extend(exc.exceptions)
        # Ignore __suppress_context__: httpcore's pool re-raises with ``from None``.
        cause = exc.__cause__ or exc.__context__
        if cause is not None:
            children.append(cause)
        for child in children:
            if (found := _classify(child, depth + 1)) is not None:
                return found
    return None if fallback is None else _made(fallback, exc)


def classify_exception(exc: BaseException) -> AttemptFailed:
    """Map any exception from an attempt into the table: the one boundary.

    httpx wraps the real cause (an errno, an ssl error, a trio error) one to
    four levels deep, so wrappers are looked through; any other exception is
    classified by its own type, and an unknown one is ``E_INTERNAL``.
    """
    found = _classify(exc, 0)
    return found if found is not None else _made("E_INTERNAL", exc)


# --- install output ---------------------------------------------------------

_INSTALL_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), code) for pattern, code in (
        (r"certificate verify failed|CERTIFICATE_VERIFY_FAILED", "E_TLS"),
        (r"no space left on device|disk quota exceeded", "E_DISK_FULL"),
        (r"could not resolve (host|proxy)|temporary failure in name resolution|"
         r"name or service not known|getaddrinfo failed|nodename nor servname|"
         r"connection refused|network is unreachable|no route to host", "E_NET_UNREACHABLE"),
        (r"connection reset by peer|early eof|unexpected eof|remotedisconnected|"
         r"incompleteread|connection broken|connection aborted|tls handshake|"
         r"ssl: unexpected_eof|handshake.*cut short|eof occurred in violation of protocol",
         "E_NET_INTERRUPTED"),
        (r"timed out|timeouterror", "E_NET_TIMEOUT"),
        (r"http error 5\d\d|returned error: 5\d\d|\b50[0-4] (internal server error|"
         r"bad gateway|service unavailable|gateway time-?out)|too many requests",
         "E_SERVER_OVERLOAD"),
    )
)


def _exit_text(returncode: int | None) -> str:
    if returncode is None:
        return "did not run to completion"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def classify_install(returncode: int | None, output_tail: Sequence[str], argv0: str) -> ErrorInfo:
    """Classify a failed install command from its exit and its output tail.

    A network cause in the output (the last matching line wins) makes the
    failure retry-worthy; otherwise it is ``E_INSTALL_FAILED``.
    """
    exit_text = f"{argv0!r} {_exit_text(returncode)}"
    match: tuple[str, str] | None = None
    for raw in output_tail:
        line = raw.strip()
        for pattern, code in _INSTALL_PATTERNS:
            if pattern.search(line):
                match = (code, line)
                break
    if match is not None:
        code, line = match
        return error(code, f"{exit_text}; its output shows: {line[:300]}")
    last = next((s for raw in reversed(output_tail) if (s := raw.strip())), None)
    message = exit_text + (f"; last output: {last[:300]}" if last else "")
    return error("E_INSTALL_FAILED", message)
