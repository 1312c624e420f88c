"""The error table and the boundary mapping real failures into it (SPEC section 4)."""

from __future__ import annotations

import email.utils
import errno
import functools
import os
import pickle
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from engine._errors import (
    ERRORS,
    AttemptFailed,
    ErrorInfo,
    ErrorKind,
    RecoveryError,
    RefusedError,
    StateDirLocked,
    classify_exception,
    classify_install,
    classify_status,
    error,
    failure,
    parse_retry_after,
)

SECRET = "s3cr3t-T0KEN"
Handler = Callable[[trio.SocketStream], Awaitable[None]]

# code -> (category, retryable), transcribed from SPEC sections 2.2 and 4.
SPEC_TABLE = {
    "E_NET_TIMEOUT": ("network", True),
    "E_NET_UNREACHABLE": ("network", True),
    "E_NET_INTERRUPTED": ("network", True),
    "E_SERVER_OVERLOAD": ("server", True),
    "E_HTTP_CLIENT": ("request", False),
    "E_AUTH": ("request", False),
    "E_DISK_FULL": ("disk", False),
    "E_PERMISSION": ("permission", False),
    "E_INTEGRITY": ("integrity", True),
    "E_TLS": ("security", False),
    "E_INSTALL_FAILED": ("install", False),
    "E_CIRCUIT_OPEN": ("breaker", True),
    "E_INVALID_INPUT": ("input", False),
    "E_EXISTS": ("input", False),
    "E_IN_USE": ("input", False),
    "E_INTERNAL": ("internal", False),
    "E_INVALID_STATE": ("control", False),
    "E_NOT_RETRYABLE": ("control", False),
    "E_NOT_FOUND": ("request", False),
    "E_FORBIDDEN": ("request", False),
}


def classified(exc: BaseException) -> ErrorInfo:
    """Classify and check the invariants every record must hold."""
    record = classify_exception(exc).error
    assert record.message and record.suggestion
    assert SECRET not in record.message
    return record


# --- the table --------------------------------------------------------------


def test_table_has_exactly_the_spec_codes() -> None:
    """ERRORS holds every SPEC code, refusal codes included, and nothing else."""
    assert set(ERRORS) == set(SPEC_TABLE)
    assert all(kind.code == code for code, kind in ERRORS.items())


@pytest.mark.parametrize(("code", "expected"), SPEC_TABLE.items())
def test_table_category_and_retryable_match_spec(code: str, expected: tuple[str, bool]) -> None:
    """Each row's category and retryable flag are what SPEC section 4 says."""
    kind = ERRORS[code]
    assert (kind.category, kind.retryable) == expected


def test_every_code_has_an_actionable_suggestion() -> None:
    """Every row suggests something to do, as a sentence."""
    for kind in ERRORS.values():
        assert len(kind.suggestion) > 30, kind.code
        assert kind.suggestion.endswith("."), kind.code


def test_table_is_read_only() -> None:
    """Nobody can add or replace a row at runtime."""
    with pytest.raises(TypeError):
        ERRORS["E_NEW"] = ErrorKind("E_NEW", "x", False, "x")  # type: ignore[index]


def test_error_builds_the_record_from_the_table() -> None:
    """error() copies category, retryable and suggestion from the row."""
    record = error("E_DISK_FULL", "Disk full: 3 GB missing")
    kind = ERRORS["E_DISK_FULL"]
    assert record == ErrorInfo("E_DISK_FULL", "disk", False, "Disk full: 3 GB missing", kind.suggestion)
    assert record.to_dict() == {
        "code": "E_DISK_FULL", "category": "disk", "retryable": False,
        "message": "Disk full: 3 GB missing", "suggestion": kind.suggestion,
    }
    assert error("E_AUTH", "m", suggestion="Log in.").suggestion == "Log in."


def test_error_refuses_an_unknown_code() -> None:
    """A code outside the table is a programming error, not a new code."""
    with pytest.raises(ValueError, match="E_NOPE"):
        error("E_NOPE", "m")


def test_exception_tree_has_one_root() -> None:
    """Every engine exception is a RecoveryError."""
    for cls in (RefusedError, StateDirLocked, AttemptFailed):
        assert issubclass(cls, RecoveryError)


def test_refused_error_serialises_code_message_and_optional_field() -> None:
    """RefusedError.to_dict is the control channel's error body, field only when set."""
    plain = RefusedError("E_INVALID_STATE", "cannot pause: operation is success")
    assert str(plain) == "cannot pause: operation is success"
    assert plain.to_dict() == {"code": "E_INVALID_STATE", "message": "cannot pause: operation is success"}
    with_field = RefusedError("E_INVALID_INPUT", "bad url", field="url")
    assert with_field.to_dict() == {"code": "E_INVALID_INPUT", "message": "bad url", "field": "url"}


def test_failure_wraps_the_record_and_retry_hint() -> None:
    """failure() builds an AttemptFailed carrying its record and Retry-After."""
    exc = failure("E_SERVER_OVERLOAD", "HTTP 429", retry_after_s=12.0)
    assert exc.error.code == "E_SERVER_OVERLOAD" and exc.retry_after_s == 12.0
    assert "E_SERVER_OVERLOAD" in str(exc)


def test_engine_exceptions_survive_pickling() -> None:
    """Keyword-only constructors still round-trip through pickle."""
    refused = pickle.loads(pickle.dumps(RefusedError("E_NOT_FOUND", "no such id", field="id")))
    assert refused.to_dict() == {"code": "E_NOT_FOUND", "message": "no such id", "field": "id"}
    failed = pickle.loads(pickle.dumps(failure("E_NET_TIMEOUT", "slow", retry_after_s=3.0)))
    assert failed.error == error("E_NET_TIMEOUT", "slow") and failed.retry_after_s == 3.0


# --- HTTP statuses and Retry-After ------------------------------------------


def spec_code_for_status(status: int) -> str:
    if status in (401, 403):
        return "E_AUTH"
    if status in (408, 429) or status >= 500:
        return "E_SERVER_OVERLOAD"
    return "E_HTTP_CLIENT"


def test_every_status_400_to_599_maps_where_spec_says() -> None:
    """Each 4xx/5xx status lands on its SPEC code and names itself in the message."""
    for status in range(400, 600):
        record = classify_status(status).error
        assert record.code == spec_code_for_status(status), status
        assert f"HTTP {status}" in record.message


@pytest.mark.parametrize(("status", "message"), [
    (503, "HTTP 503 Service Unavailable from the server"),
    (404, "HTTP 404 Not Found from the server"),
    (416, "HTTP 416 Requested Range Not Satisfiable from the server"),
    (522, "HTTP 522 Connection Timed Out from the server"),
])
def test_status_message_names_status_and_reason(status: int, message: str) -> None:
    """The message reads like 'HTTP 503 Service Unavailable from the server'."""
    assert classify_status(status).error.message == message


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_read_on_429_and_503(status: int) -> None:
    """Retry-After (any header case) becomes retry_after_s on 429 and 503."""
    exc = classify_status(status, {"retry-after": "120"})
    assert exc.retry_after_s == 120.0
    assert "Retry-After 120 s" in exc.error.message


def test_retry_after_is_ignored_on_other_statuses() -> None:
    """SPEC only honours Retry-After on 429/503."""
    assert classify_status(500, {"Retry-After": "120"}).retry_after_s is None
    assert classify_status(503).retry_after_s is None


def test_parse_retry_after_seconds() -> None:
    """Delay-seconds are returned as they are."""
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("1.5") == 1.5


def test_parse_retry_after_http_date() -> None:
    """An HTTP date becomes seconds from now; a past date means no wait."""
    now = 1_700_000_000.0
    future = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after(future, now=now) == pytest.approx(90.0)
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "nan", "inf", "Mon, 99 Foo 2024"])
def test_parse_retry_after_garbage_is_none(value: str | None) -> None:
    """Absent, negative or unparseable values give None, never an exception."""
    assert parse_retry_after(value) is None


# --- httpx through MockTransport --------------------------------------------


def mock_client(handler: Callable[[httpx.Request], httpx.Response], **kw: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler), **kw)  # type: ignore[arg-type]


async def test_http_status_error_is_classified_by_status() -> None:
    """raise_for_status() on a real 503 response keeps its Retry-After and hides the URL query."""
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": "7"})

    async with mock_client(handler) as client:
        response = await client.get(f"https://example.org/f?token={SECRET}")
        with pytest.raises(httpx.HTTPStatusError) as info:
            response.raise_for_status()
    assert SECRET in str(info.value)  # httpx's own message leaks it; ours must not
    exc = classify_exception(info.value)
    assert (exc.error.code, exc.retry_after_s) == ("E_SERVER_OVERLOAD", 7.0)
    assert classified(info.value).message == "HTTP 503 Service Unavailable from the server (Retry-After 7 s)"


@pytest.mark.parametrize(("raised", "code"), [
    (httpx.ConnectTimeout, "E_NET_TIMEOUT"),
    (httpx.ReadTimeout, "E_NET_TIMEOUT"),
    (httpx.WriteTimeout, "E_NET_TIMEOUT"),
    (httpx.PoolTimeout, "E_NET_TIMEOUT"),
    (httpx.ConnectError, "E_NET_UNREACHABLE"),
    (httpx.ReadError, "E_NET_INTERRUPTED"),
    (httpx.WriteError, "E_NET_INTERRUPTED"),
    (httpx.RemoteProtocolError, "E_NET_INTERRUPTED"),
    (httpx.ProxyError, "E_NET_UNREACHABLE"),
    (httpx.LocalProtocolError, "E_INVALID_INPUT"),
])
async def test_transport_errors_from_mock_transport(raised: type[httpx.RequestError], code: str) -> None:
    """httpx transport errors raised under a real client map to their codes."""
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised("simulated", request=request)

    async with mock_client(handler) as client:
        with pytest.raises(raised) as info:
            await client.get("https://example.org/")
    assert classified(info.value).code == code


async def test_redirect_loop_is_invalid_input() -> None:
    """A redirect loop (TooManyRedirects) is a bad URL, not a network failure."""
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "/again"})

    async with mock_client(handler, follow_redirects=True, max_redirects=3) as client:
        with pytest.raises(httpx.TooManyRedirects) as info:
            await client.get("https://example.org/start")
    assert classified(info.value).code == "E_INVALID_INPUT"


@pytest.mark.parametrize("url", [f"ftp://example.org/f?token={SECRET}", "http://[::1"])
async def test_bad_url_is_invalid_input(url: str) -> None:
    """Unsupported schemes and malformed URLs are E_INVALID_INPUT."""
    async with httpx.AsyncClient() as client:
        with pytest.raises((httpx.UnsupportedProtocol, httpx.InvalidURL)) as info:
            await client.get(url)
    assert classified(info.value).code == "E_INVALID_INPUT"


def test_every_httpx_transport_error_is_mapped() -> None:
    """No httpx transport error class falls through to E_INTERNAL."""
    def subclasses(cls: type[Exception]) -> set[type[Exception]]:
        found = {cls}
        for sub in cls.__subclasses__():
            found |= subclasses(sub)
        return found

    for cls in subclasses(httpx.TransportError) | {httpx.TooManyRedirects, httpx.InvalidURL}:
        if cls.__module__.startswith("httpx"):
            assert classified(cls("x")).code != "E_INTERNAL", cls


# --- httpx against a real loopback socket -----------------------------------


async def serve(nursery: trio.Nursery, handler: Handler) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def fetch_error(url: str, **client_kw: object) -> httpx.HTTPError:
    async with httpx.AsyncClient(**client_kw) as client:  # type: ignore[arg-type]
        with pytest.raises(httpx.HTTPError) as info:
            await client.get(url)
    return info.value


def reset(stream: trio.SocketStream) -> None:
    """Make the next close send RST instead of FIN."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def test_connection_refused_is_unreachable() -> None:
    """A bound but not listening port refuses; httpx nests the errno in an ExceptionGroup."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        exc = await fetch_error(f"http://127.0.0.1:{port}/?token={SECRET}")
    assert isinstance(exc, httpx.ConnectError)
    record = classified(exc)
    assert record.code == "E_NET_UNREACHABLE"
    assert "ECONNREFUSED" in record.message and "Connection refused" in record.message
    # the suggestion fits the cause: a server not running, not a misspelt host name
    assert "server is running" in record.suggestion and "spelled" not in record.suggestion


async def test_unresolvable_host_is_unreachable() -> None:
    """A DNS failure (socket.gaierror under httpx.ConnectError) is E_NET_UNREACHABLE."""
    exc = await fetch_error(f"http://nonexistent.invalid/?token={SECRET}")
    record = classified(exc)
    assert record.code == "E_NET_UNREACHABLE"
    assert "DNS lookup failed" in record.message
    assert "spelled correctly" in record.suggestion and "server is running" not in record.suggestion


@pytest.mark.parametrize("rst", [True, False], ids=["rst", "fin"])
async def test_server_closing_on_accept_is_interrupted(nursery: trio.Nursery, rst: bool) -> None:
    """A server that accepts then resets or closes gives E_NET_INTERRUPTED."""
    async def handler(stream: trio.SocketStream) -> None:
        if rst:
            reset(stream)
        await stream.aclose()

    port = await serve(nursery, handler)
    exc = await fetch_error(f"http://127.0.0.1:{port}/?token={SECRET}")
    assert isinstance(exc, httpx.RemoteProtocolError)
    assert classified(exc).code == "E_NET_INTERRUPTED"


async def test_reset_after_request_is_interrupted_with_errno(nursery: trio.Nursery) -> None:
    """A reset while reading the response is ReadError over ECONNRESET."""
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        reset(stream)
        await stream.aclose()

    port = await serve(nursery, handler)
    exc = await fetch_error(f"http://127.0.0.1:{port}/")
    assert isinstance(exc, httpx.ReadError)
    record = classified(exc)
    assert record.code == "E_NET_INTERRUPTED" and "ECONNRESET" in record.message


async def test_short_body_is_interrupted(nursery: trio.Nursery) -> None:
    """Content-Length 1000 with 10 bytes then close is a premature close, not success."""
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
        await stream.aclose()

    port = await serve(nursery, handler)
    exc = await fetch_error(f"http://127.0.0.1:{port}/")
    assert isinstance(exc, httpx.RemoteProtocolError)
    record = classified(exc)
    assert record.code == "E_NET_INTERRUPTED"
    assert "received 10 bytes, expected 1000" in record.message


async def test_silent_server_is_read_timeout(nursery: trio.Nursery) -> None:
    """A server that never answers trips httpx's read timeout (a real 0.2 s wait)."""
    async def handler(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    port = await serve(nursery, handler)
    exc = await fetch_error(f"http://127.0.0.1:{port}/", timeout=0.2)
    assert isinstance(exc, httpx.ReadTimeout)
    record = classified(exc)
    assert record.code == "E_NET_TIMEOUT" and "spelled" not in record.suggestion


# --- TLS on loopback --------------------------------------------------------


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_untrusted_certificate_is_tls(nursery: trio.Nursery, server_tls: ssl.SSLContext) -> None:
    """A self-signed certificate fails verification: E_TLS, not retryable."""
    async def handler(stream: trio.SocketStream) -> None:
        with trio.move_on_after(5):
            await trio.SSLStream(stream, server_tls, server_side=True).do_handshake()

    port = await serve(nursery, handler)
    exc = await fetch_error(f"https://127.0.0.1:{port}/")
    assert isinstance(exc, httpx.ConnectError)
    record = classified(exc)
    assert (record.code, record.retryable) == ("E_TLS", False)
    assert "self-signed certificate" in record.message


async def test_handshake_cut_short_is_interrupted(nursery: trio.Nursery) -> None:
    """A server that closes during the TLS handshake (SSLEOFError) is E_NET_INTERRUPTED."""
    async def handler(stream: trio.SocketStream) -> None:
        await stream.aclose()

    port = await serve(nursery, handler)
    record = classified(await fetch_error(f"https://127.0.0.1:{port}/"))
    assert record.code == "E_NET_INTERRUPTED" and "cut short" in record.message


async def test_https_to_plain_http_port_is_tls(nursery: trio.Nursery) -> None:
    """A TLS protocol refusal (WRONG_VERSION_NUMBER) is not a network blip: E_TLS."""
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()

    port = await serve(nursery, handler)
    record = classified(await fetch_error(f"https://127.0.0.1:{port}/"))
    assert record.code == "E_TLS" and "WRONG_VERSION_NUMBER" in record.message


# --- OS errors --------------------------------------------------------------


def test_real_enospc_from_dev_full() -> None:
    """Writing to /dev/full raises a real ENOSPC: E_DISK_FULL naming errno and file."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with pytest.raises(OSError) as info, open("/dev/full", "wb", buffering=0) as sink:
        sink.write(b"x")
    record = classified(info.value)
    assert record.code == "E_DISK_FULL"
    assert "[ENOSPC] No space left on device" in record.message


def test_real_eacces_even_as_root(tmp_path: Path) -> None:
    """Executing a file without an execute bit fails with EACCES even for root."""
    script = tmp_path / "setup.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(PermissionError) as info:
        subprocess.run([str(script)])
    record = classified(info.value)
    assert record.code == "E_PERMISSION"
    assert "[EACCES]" in record.message and str(script) in record.message


def test_real_epipe_from_socketpair() -> None:
    """Sending to a socket whose peer is gone raises EPIPE: E_NET_INTERRUPTED."""
    left, right = socket.socketpair()
    right.close()
    with left, pytest.raises(BrokenPipeError) as info:
        for _ in range(3):
            left.send(b"x")
    assert classified(info.value).code == "E_NET_INTERRUPTED"


@pytest.mark.parametrize(("number", "code"), [
    (errno.ENOSPC, "E_DISK_FULL"), (errno.EDQUOT, "E_DISK_FULL"),
    (errno.EACCES, "E_PERMISSION"), (errno.EPERM, "E_PERMISSION"), (errno.EROFS, "E_PERMISSION"),
    (errno.ECONNRESET, "E_NET_INTERRUPTED"), (errno.EPIPE, "E_NET_INTERRUPTED"),
    (errno.ECONNABORTED, "E_NET_INTERRUPTED"), (errno.ECONNREFUSED, "E_NET_UNREACHABLE"),
    (errno.ENETUNREACH, "E_NET_UNREACHABLE"), (errno.EHOSTUNREACH, "E_NET_UNREACHABLE"),
    (errno.ETIMEDOUT, "E_NET_TIMEOUT"),
])
def test_errno_table(number: int, code: str) -> None:
    """Each errno SPEC names maps to its code, and the message names errno and file."""
    record = classified(OSError(number, os.strerror(number), "/x"))
    assert record.code == code
    assert f"[{errno.errorcode[number]}] {os.strerror(number)}: '/x'" in record.message


def test_unlisted_errno_is_internal_and_named(tmp_path: Path) -> None:
    """A real ENOENT is not guessed at: E_INTERNAL, naming errno and file."""
    with pytest.raises(FileNotFoundError) as info:
        open(tmp_path / "missing" / "f.part", "rb")
    record = classified(info.value)
    assert record.code == "E_INTERNAL"
    assert "[ENOENT]" in record.message and "missing" in record.message


# --- trio and Python errors -------------------------------------------------


async def test_trio_too_slow_is_timeout() -> None:
    """trio.fail_after expiring (TooSlowError) is E_NET_TIMEOUT."""
    with pytest.raises(trio.TooSlowError) as info:
        with trio.fail_after(0):
            await trio.sleep(1)
    assert classified(info.value).code == "E_NET_TIMEOUT"


def test_builtin_timeout_is_timeout() -> None:
    """A bare TimeoutError (no errno) is E_NET_TIMEOUT."""
    assert classified(TimeoutError("read took too long")).code == "E_NET_TIMEOUT"


async def test_broken_resource_is_classified_by_its_cause() -> None:
    """trio.BrokenResourceError from a real EPIPE is classified through __cause__."""
    left, right = trio.socket.socketpair()
    right.close()
    stream = trio.SocketStream(left)
    with pytest.raises(trio.BrokenResourceError) as info:
        for _ in range(3):
            await stream.send_all(b"x")
    await stream.aclose()
    assert isinstance(info.value.__cause__, BrokenPipeError)
    record = classified(info.value)
    assert record.code == "E_NET_INTERRUPTED" and "[EPIPE]" in record.message


async def test_broken_or_closed_resource_without_cause_is_interrupted() -> None:
    """trio stream errors with no cause default to E_NET_INTERRUPTED."""
    send, receive = trio.testing.lockstep_stream_pair()
    await receive.aclose()
    with pytest.raises(trio.BrokenResourceError) as broken:
        await send.send_all(b"x")
    await send.aclose()
    with pytest.raises(trio.ClosedResourceError) as closed:
        await send.send_all(b"x")
    assert classified(broken.value).code == "E_NET_INTERRUPTED"
    assert classified(closed.value).code == "E_NET_INTERRUPTED"


def test_attempt_failed_passes_through() -> None:
    """An already classified failure is returned as it is."""
    exc = failure("E_INTEGRITY", "sha256 mismatch")
    assert classify_exception(exc) is exc


def test_unknown_exception_is_internal_with_type_and_text() -> None:
    """Anything unrecognised is E_INTERNAL, naming the type and its text."""
    record = classified(KeyError("offset"))
    assert (record.code, record.retryable) == ("E_INTERNAL", False)
    assert "KeyError" in record.message and "offset" in record.message


def test_bug_while_handling_a_network_error_stays_internal() -> None:
    """__context__ is only followed through wrappers: a bug in an except block is a bug."""
    try:
        try:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        except OSError:
            {"present": 1}["missing"]
    except KeyError as exc:
        assert classified(exc).code == "E_INTERNAL"


def test_exception_group_is_classified_by_its_members() -> None:
    """A nursery's ExceptionGroup of a network error classifies as that error."""
    group = ExceptionGroup("attempt", [ConnectionResetError(errno.ECONNRESET, "reset")])
    assert classified(group).code == "E_NET_INTERRUPTED"


# --- credentials never reach messages ---------------------------------------


@pytest.mark.parametrize("text", [
    f"GET https://user:{SECRET}@example.org/model.bin failed",
    f"GET https://example.org/model.bin?token={SECRET}&x=1 failed",
    f"GET https://u:p@ss{SECRET}@example.org/m#frag failed",
    f"sent Authorization: Bearer {SECRET}",
    f"cookie={SECRET}",
])
def test_credentials_are_stripped_from_messages(text: str) -> None:
    """Userinfo, query strings and credential values never appear in a message."""
    record = classified(RuntimeError(text))
    assert SECRET not in record.message
    assert SECRET not in error("E_NET_TIMEOUT", text).message
    if "://" in text:
        assert "example.org/m" in record.message


# --- install output ---------------------------------------------------------


@pytest.mark.parametrize(("line", "code"), [
    ("curl: (6) Could not resolve host: example.org", "E_NET_UNREACHABLE"),
    ("socket.gaierror: [Errno -3] Temporary failure in name resolution", "E_NET_UNREACHABLE"),
    ("[Errno -2] Name or service not known", "E_NET_UNREACHABLE"),
    ("getaddrinfo failed", "E_NET_UNREACHABLE"),
    ("Failed to establish a new connection: [Errno 111] Connection refused", "E_NET_UNREACHABLE"),
    ("OSError: [Errno 101] Network is unreachable", "E_NET_UNREACHABLE"),
    ("ConnectionResetError: [Errno 104] Connection reset by peer", "E_NET_INTERRUPTED"),
    ("fatal: early EOF", "E_NET_INTERRUPTED"),
    ("error: RPC failed; curl 18 transfer closed: unexpected EOF", "E_NET_INTERRUPTED"),
    ("http.client.RemoteDisconnected: Remote end closed connection", "E_NET_INTERRUPTED"),
    ("http.client.IncompleteRead: IncompleteRead(1024 bytes read, 9 more expected)", "E_NET_INTERRUPTED"),
    ("net/http: TLS handshake timeout", "E_NET_INTERRUPTED"),
    ("[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol", "E_NET_INTERRUPTED"),
    ("The handshake operation was cut short by the server", "E_NET_INTERRUPTED"),
    ("ReadTimeoutError: HTTPSConnectionPool: Read timed out. (read timeout=15)", "E_NET_TIMEOUT"),
    ("curl: (28) Operation timed out after 30000 milliseconds", "E_NET_TIMEOUT"),
    ("ERROR: HTTP error 503 while getting https://pypi.org/simple/x/", "E_SERVER_OVERLOAD"),
    ("The requested URL returned error: 502 Bad Gateway", "E_SERVER_OVERLOAD"),
    ("500 Internal Server Error", "E_SERVER_OVERLOAD"),
    ("OSError: [Errno 28] No space left on device", "E_DISK_FULL"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", "E_TLS"),
])
def test_install_output_with_a_known_cause(line: str, code: str) -> None:
    """A known phrase anywhere in the tail, any case, classifies the install."""
    for variant in (line, line.upper()):
        record = classify_install(1, ["Collecting torch", variant, "Done."], "pip")
        assert record.code == code, variant
        assert "'pip' exited with code 1" in record.message


def test_install_plain_failure_names_command_and_exit_code() -> None:
    """No network cause: E_INSTALL_FAILED naming argv0, exit code and the last line."""
    tail = ["Collecting foo", "ERROR: No matching distribution found for foo==9", ""]
    record = classify_install(1, tail, "python")
    assert (record.code, record.retryable) == ("E_INSTALL_FAILED", False)
    assert record.message == "'python' exited with code 1; last output: ERROR: No matching distribution found for foo==9"
    assert "output" in record.suggestion


def test_install_exit_without_code_or_by_signal() -> None:
    """A killed or never-finished command is described as such."""
    assert "was killed by SIGKILL" in classify_install(-9, [], "git").message
    assert classify_install(None, [], "nope").message == "'nope' did not run to completion"


def test_install_last_matching_line_wins() -> None:
    """When several causes appear, the last one is the classification."""
    tail = ["WARNING: Connection reset by peer, retrying", "OSError: No space left on device"]
    assert classify_install(1, tail, "pip").code == "E_DISK_FULL"


def test_install_message_hides_index_credentials() -> None:
    """A private index URL with a token in the output is stripped from the message."""
    tail = [f"HTTP error 503 while getting https://user:{SECRET}@idx.example/simple/?t={SECRET}"]
    record = classify_install(1, tail, "pip")
    assert record.code == "E_SERVER_OVERLOAD" and SECRET not in record.message
    assert "https://idx.example/simple/" in record.message
