"""Fixtures for the control channel: an engine served on a real loopback socket.

Hypercorn, real sockets and the autojump clock do not mix, so these tests run
in real time with tiny delays (``initial_delay_s=0.05``) and poll with a
deadline instead of sleeping for a guessed time.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import attrs
import httpx
import pytest
import trio

from engine import Engine, Settings, open_engine
from engine._scripted import ScriptedKind
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
