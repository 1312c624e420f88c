"""Fixtures for the control channel: an engine served on a real loopback socket.

Hypercorn, real sockets and the autojump clock do not mix, so these tests run
in real time with tiny delays (``initial_delay_s=0.05``) and poll with a
deadline instead of sleeping for a guessed time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import attrs
import httpx
import pytest
import trio

from engine import Engine, Settings, open_engine
from engine.testing._scripted import ScriptedKind
from engine._server import serve_control
from engine.testing import FaultServer


@attrs.define
class Served:
    """A running engine + control channel, and an authenticated client for it."""

    engine: Engine
    url: str
    token: str
    client: httpx.AsyncClient
    scripted: ScriptedKind
    root: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

    def anonymous(self, **kwargs: Any) -> httpx.AsyncClient:
        """A client without the token (for the refusal tests)."""
        return httpx.AsyncClient(base_url=self.url, timeout=5, **kwargs)

    async def op(self, op_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/operations/{op_id}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def wait_status(self, op_id: str, *statuses: str, timeout: float = 3.0) -> dict[str, Any]:
        """Poll the API until the operation reaches one of ``statuses``."""
        with trio.fail_after(timeout):
            while True:
                op = await self.op(op_id)
                if op["status"] in statuses:
                    return op
                await trio.sleep(0.01)


def fast_settings(root: Path, **changes: Any) -> Settings:
    values: dict[str, Any] = dict(initial_delay_s=0.05, max_delay_s=0.5, jitter=0.0, download_root=str(root),
                                  checkpoint_interval_s=0.05)
    values.update(changes)
    return Settings(**values)


@asynccontextmanager
async def serving(tmp_path: Path, *, allow_installs: bool = False, allow_hosts: Iterable[str] = (),
                  **setting_changes: Any) -> AsyncIterator[Served]:
    """Serve a fresh engine (fast retry settings, ``download_root`` = ``tmp_path/root``)."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    scripted = ScriptedKind()
    settings = fast_settings(root, **setting_changes)
    async with open_engine(tmp_path / "state", settings, kinds=[scripted]) as engine:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_control, engine, port=0, allow_installs=allow_installs,
                                              allow_hosts=tuple(allow_hosts)))
            token = (engine.state_dir / "token").read_text().strip()
            async with httpx.AsyncClient(base_url=url, timeout=5,
                                         headers={"Authorization": f"Bearer {token}"}) as client:
                yield Served(engine, url, token, client, scripted, root)
            nursery.cancel_scope.cancel()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(tmp_path) as served:
        yield served


@pytest.fixture
def serve(tmp_path: Path) -> Callable[..., Any]:
    """``async with serve(allow_installs=True, initial_delay_s=30) as s:`` for tests that need options."""
    return partial(serving, tmp_path)


@pytest.fixture
def poll() -> Callable[..., Awaitable[None]]:
    """``await poll(check)``: wait until ``check()`` (sync or async) is true, with a deadline."""
    return eventually


@pytest.fixture
async def faults() -> AsyncIterator[FaultServer]:
    server = FaultServer()
    async with server.running():
        yield server


async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 3.0) -> None:
    """Poll ``check`` until it is true (real time; see the module docstring)."""
    with trio.fail_after(timeout):
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await trio.sleep(0.01)


# --- `recovery serve` as a real process --------------------------------------------------------

_START_TIMEOUT_S = 15


@attrs.define
class ServeProcess:
    proc: subprocess.Popen[str]
    state_dir: Path
    root: Path
    url: str
    link: str
    banner: list[str]

    @property
    def token(self) -> str:
        return (self.state_dir / "token").read_text().strip()

    def submit(self, url: str, dest: str) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/api/operations", json={"kind": "download", "url": url, "dest": dest},
                              headers={"Authorization": f"Bearer {self.token}"}, timeout=5)
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    def wait_status(self, op_id: str, *statuses: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            op = httpx.get(f"{self.url}/api/operations/{op_id}",
                           headers={"Authorization": f"Bearer {self.token}"}, timeout=5).json()
            if op.get("status") in statuses or time.monotonic() > deadline:
                assert op.get("status") in statuses, op
                return op  # type: ignore[no-any-return]
            time.sleep(0.02)


def _start_serve(state_dir: Path, root: Path, *extra: str) -> ServeProcess:
    """Start ``python -m engine serve --port 0`` and read the link it prints."""
    root.mkdir(parents=True, exist_ok=True)
    stderr_path = root.parent / f"serve-{time.monotonic_ns()}.stderr"
    with open(stderr_path, "w") as stderr:  # a file, so a chatty server can never block on a full pipe
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--port", "0", "--state-dir", str(state_dir),
             "--set", f"download_root={root}", *extra],
            stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=root,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    watchdog = threading.Timer(_START_TIMEOUT_S, proc.kill)
    watchdog.start()
    banner: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            banner.append(line.rstrip("\n"))
            if line.startswith("Dashboard: "):
                break
        else:
            raise AssertionError(f"serve exited without a link: {banner} {stderr_path.read_text()}")
    finally:
        watchdog.cancel()
    link = banner[-1].removeprefix("Dashboard: ")
    url = link.split("/?token=")[0]
    return ServeProcess(proc, state_dir, root, url, link, banner)


def _stop_serve(server: ServeProcess, signum: int = signal.SIGINT) -> int:
    server.proc.send_signal(signum)
    try:
        return server.proc.wait(timeout=10)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture(scope="session")
def start_serve() -> Callable[..., ServeProcess]:
    """``start_serve(state_dir, root, *extra_args)``: run ``python -m engine serve --port 0``."""
    return _start_serve


@pytest.fixture(scope="session")
def stop_serve() -> Callable[..., int]:
    """``stop_serve(server, signum=SIGINT)``: stop it and return its exit code."""
    return _stop_serve
