"""Helpers and fixtures for the safety tests (SPEC 6.1, 7.1, 14): real loopback servers, real files, real processes.

The control channel runs in-process on a real socket (hypercorn and the
autojump clock do not mix, so those tests run in real time and poll with a
deadline); the command line runs as a subprocess against a fault server in
a thread, whose request counts prove what was (not) fetched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import attrs
import httpx
import pytest
import trio

from engine import Engine, Settings, open_engine
from engine._server import serve_control
from engine.testing import FaultServer

#: Wide enough that rich never wraps a message in the middle.
ENV = {**os.environ, "COLUMNS": "250", "PYTHONUNBUFFERED": "1"}
ENV.pop("RECOVERY_STATE_DIR", None)
OTHER = b"the user's only copy of something that matters\n" * 64


def other_file(tmp_path: Path, name: str = "precious.bin") -> Path:
    """A file that is not the engine's, outside every download folder."""
    victim = tmp_path / "elsewhere" / name
    victim.parent.mkdir(exist_ok=True)
    victim.write_bytes(OTHER)
    return victim


@attrs.define
class Served:
    """A running engine (with the real download kind) + its control channel and a client."""

    engine: Engine
    url: str
    token: str
    client: httpx.AsyncClient
    root: Path
    state_dir: Path

    async def op(self, op_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/operations/{op_id}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def wait_status(self, op_id: str, *statuses: str, timeout: float = 10.0) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                op = await self.op(op_id)
                if op["status"] in statuses:
                    return op
                await trio.sleep(0.01)


@asynccontextmanager
async def serving(tmp_path: Path, **changes: Any) -> AsyncIterator[Served]:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    values: dict[str, Any] = dict(initial_delay_s=0.05, max_delay_s=0.5, jitter=0.0, download_root=str(root),
                                  checkpoint_interval_s=0.05, max_retries=2)
    values.update(changes)
    state_dir = tmp_path / "state"
    async with open_engine(state_dir, Settings(**values)) as engine:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_control, engine, port=0))
            token = (engine.state_dir / "token").read_text().strip()
            async with httpx.AsyncClient(base_url=url, timeout=10,
                                         headers={"Authorization": f"Bearer {token}"}) as client:
                yield Served(engine, url, token, client, root, state_dir)
            nursery.cancel_scope.cancel()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(tmp_path) as served:
        yield served


@pytest.fixture
async def faults() -> AsyncIterator[FaultServer]:
    server = FaultServer()
    async with server.running():
        yield server


@pytest.fixture
def threaded_server() -> Iterator[FaultServer]:
    """A fault server in a thread, for tests that run the command line."""
    server = FaultServer()
    with server.run_in_thread():
        yield server


def recovery(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``recovery ARGS`` (``python -m engine``) to the end."""
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=timeout)


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a ``--json`` output (one per line)."""
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
