"""The engine's transport makes its TLS context on the first https request, and it still verifies.

Plain http skips the CA bundle (start-up cost, issue 15); these prove that the
https side, made later, is the same verifying context as before: a redirect
from http to a self-signed https server fails as E_TLS, and a certificate
trusted through ``SSL_CERT_FILE`` (read when that context is made) works.
Real loopback sockets and TLS handshakes, on the real clock; no sleeps.
"""

from __future__ import annotations

import functools
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import trio

from engine import DownloadSpec, Settings, Status, open_engine

BODY = bytes(range(256)) * 64


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh self-signed certificate for 127.0.0.1: (cert, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


async def _read_request(stream: trio.abc.Stream) -> bytes:
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = await stream.receive_some()
        if not chunk:
            break
        request += chunk
    return request


async def serve_https(nursery: trio.Nursery, certificate: tuple[Path, Path]) -> int:
    """An https server answering every request with `BODY`; returns its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)

    async def handler(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True)
        try:
            await tls.do_handshake()
            if await _read_request(tls):
                await tls.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                   b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY) + BODY)
            await tls.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client refused the certificate

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def serve_redirect(nursery: trio.Nursery, location: str) -> int:
    """A plain-http server answering every request with a 302 to ``location``; returns its port."""
    async def handler(stream: trio.SocketStream) -> None:
        if await _read_request(stream):
            await stream.send_all(f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n"
                                  "Connection: close\r\n\r\n".encode())
        await stream.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def download(tmp_path: Path, url: str) -> object:
    settings = Settings(download_root=str(tmp_path / "downloads"), max_retries=0)
    async with open_engine(state_dir=tmp_path / "state", settings=settings) as eng:
        op = await eng.submit(DownloadSpec(url=url, dest="m.bin"))
        with trio.fail_after(30):  # a guard, not a wait: both outcomes come within milliseconds
            return await eng.wait(op.id)


async def test_redirect_to_an_untrusted_https_server_fails_verification(
    nursery: trio.Nursery, certificate: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """http -> https made on demand still verifies: a self-signed certificate is E_TLS, nothing written."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    tls_port = await serve_https(nursery, certificate)
    port = await serve_redirect(nursery, f"https://127.0.0.1:{tls_port}/m.bin")
    final = await download(tmp_path, f"http://127.0.0.1:{port}/m.bin")
    assert final.status is Status.FAILED, final  # type: ignore[attr-defined]
    assert final.error.code == "E_TLS", final.error  # type: ignore[attr-defined]
    assert not (tmp_path / "downloads" / "m.bin").exists()


async def test_https_trusted_through_ssl_cert_file_downloads(
    nursery: trio.Nursery, certificate: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The https pool made on demand trusts what httpx trusts (here ``SSL_CERT_FILE``): the file arrives."""
    tls_port = await serve_https(nursery, certificate)
    port = await serve_redirect(nursery, f"https://127.0.0.1:{tls_port}/m.bin")
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    final = await download(tmp_path, f"http://127.0.0.1:{port}/m.bin")
    assert final.status is Status.SUCCESS, final  # type: ignore[attr-defined]
    assert (tmp_path / "downloads" / "m.bin").read_bytes() == BODY
