"""Loopback servers for the download benchmarks.

- `static_server`: a fast static file server, so the client is what is measured:
  nginx when installed (foreground, generated config, ``sendfile on``), else a
  Python server in its own process that answers with ``os.sendfile``. Both
  honour ``Range: bytes=N-`` and send ETag and Last-Modified.
- `nginx_locations`: nginx with one location per name, each with its own
  per-connection ``limit_rate`` (or none), and an access log of every
  request's ``Range`` and ``$body_bytes_sent`` (`NginxServer.requests`).
- `fault_server`: ``python -m engine.testing serve`` in its own process, for
  dropped connections and other faults, with its ``GET /_stats`` accounting.

Everything a server creates (config, logs, pid file) lives in a temporary
directory that is removed when the block ends. Run directly for a quick check:
``python benchmarks/_servers.py sendfile DIR`` serves DIR until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["NginxServer", "fault_server", "fetch_stats", "nginx_binary", "nginx_locations", "nginx_server",
           "sendfile_server", "static_server"]

_READY_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} is not listening on port {port}") from None
            time.sleep(0.02)


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- nginx ------------------------------------------------------------------------

_NGINX_CONF = """\
daemon off;
master_process off;          # one process as the invoking user: reads the 0700 temp dir
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 5;
    default_type application/octet-stream;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


def nginx_binary() -> str | None:
    """The nginx executable, or None when it is not installed."""
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


@contextlib.contextmanager
def nginx_server(root: Path) -> Iterator[str]:
    """Serve ``root`` with a foreground nginx on a loopback port; yields the base URL."""
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed")
    work = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    try:
        port = _free_port()
        conf = work / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(work=work, port=port, root=Path(root).resolve()))
        proc = subprocess.Popen([binary, "-p", str(work), "-e", str(work / "error.log"), "-c", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_listening(port, proc, "nginx")
            yield f"http://127.0.0.1:{port}"
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)


_NGINX_LOCATIONS_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format bench '$uri\t$status\t$body_bytes_sent\t$http_range';
    access_log {work}/access.log bench;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 5;
    default_type application/octet-stream;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port};
{locations}
    }}
}}
"""


class NginxServer:
    """A running `nginx_locations` server: its base URL and its access log."""

    def __init__(self, base: str, access_log: Path) -> None:
        self.base = base
        self.access_log = access_log

    def requests(self, uri: str) -> list[tuple[int, int, int | None]]:
        """``(status, body_bytes_sent, range_start)`` of every finished request for ``uri``, in log order.

        nginx writes a line when a request ends, a cut one included: after a
        client is killed, its requests appear once nginx noticed the broken
        connection (at the latest, by the time the next run has finished).
        """
        out = []
        text = self.access_log.read_text() if self.access_log.exists() else ""
        for line in text.splitlines():
            path, status, sent, rng = (line.split("\t") + ["", "", "", ""])[:4]
            if path != uri:
                continue
            match = _RANGE.match(rng)
            out.append((int(status), int(sent), int(match[1]) if match else None))
        return out


@contextlib.contextmanager
def nginx_locations(root: Path, rates: dict[str, int | None]) -> Iterator[NginxServer]:
    """nginx serving ``root`` under ``/<name>/`` for each name of ``rates``.

    ``rates[name]`` is that location's ``limit_rate`` in bytes per second per
    connection (None: unlimited). Runs as the invoking user with a private
    config, logs and pid file in a temporary directory removed afterwards.
    """
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed")
    work = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    try:
        port = _free_port()
        folder = Path(root).resolve()
        locations = "\n".join(
            f"        location /{name}/ {{ alias {folder}/;" + (f" limit_rate {rate};" if rate else "") + " }"
            for name, rate in rates.items())
        conf = work / "nginx.conf"
        conf.write_text(_NGINX_LOCATIONS_CONF.format(work=work, port=port, locations=locations))
        proc = subprocess.Popen([binary, "-p", str(work), "-e", str(work / "error.log"), "-c", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_listening(port, proc, "nginx")
            yield NginxServer(f"http://127.0.0.1:{port}", work / "access.log")
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- Python with os.sendfile ------------------------------------------------------

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class _SendfileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path = Path(".")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        path = (self.root / self.path.split("?", 1)[0].lstrip("/")).resolve()
        if not path.is_file() or not path.is_relative_to(self.root):
            self.send_error(404)
            return
        st = path.stat()
        size = st.st_size
        etag = f'"{st.st_mtime_ns:x}-{size:x}"'
        start, end, status = 0, size, 200
        wanted = _RANGE.match(self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range")
        if wanted and (if_range is None or if_range == etag):
            start = int(wanted[1])
            end = min(size, int(wanted[2]) + 1) if wanted[2] else size
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        self.wfile.flush()
        if not body:
            return
        with open(path, "rb") as f:
            offset, out = start, self.connection.fileno()
            while offset < end:
                sent = os.sendfile(out, f.fileno(), offset, min(end - offset, 1 << 30))
                if sent == 0:
                    break
                offset += sent


def _serve_sendfile(root: Path, port: int) -> None:
    handler = type("Handler", (_SendfileHandler,), {"root": Path(root).resolve()})
    with ThreadingHTTPServer(("127.0.0.1", port), handler) as httpd:
        print(f"http://127.0.0.1:{httpd.server_address[1]}", flush=True)
        httpd.serve_forever()


@contextlib.contextmanager
def sendfile_server(root: Path) -> Iterator[str]:
    """Serve ``root`` from a Python process answering with ``os.sendfile``; yields the base URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "sendfile", str(root), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_listening(port, proc, "the sendfile server")
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


@contextlib.contextmanager
def static_server(root: Path, *, prefer: str = "nginx") -> Iterator[tuple[str, str]]:
    """``(name, base_url)`` of a fast static server for ``root``: nginx if installed, else sendfile."""
    if prefer == "nginx" and nginx_binary():
        with nginx_server(root) as url:
            yield "nginx", url
    else:
        with sendfile_server(root) as url:
            yield "python os.sendfile", url


# --- the fault server --------------------------------------------------------------


@contextlib.contextmanager
def fault_server() -> Iterator[str]:
    """``python -m engine.testing serve --port 0`` in its own process; yields its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "engine.testing", "serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"the fault server did not start: {proc.stderr.read() if proc.stderr else ''}")
        yield url
    finally:
        _stop(proc)


def fetch_stats(base_url: str) -> dict[str, Any]:
    """The fault server's ``GET /_stats`` document."""
    with urllib.request.urlopen(base_url + "/_stats", timeout=10) as response:
        data: dict[str, Any] = json.load(response)
    return data


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("sendfile", help="serve a directory with os.sendfile until killed")
    serve.add_argument("root", type=Path)
    serve.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        _serve_sendfile(args.root, args.port)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
