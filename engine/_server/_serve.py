"""`serve_control`: the control channel on hypercorn's trio worker, and ``server.json``.

While it serves, ``<state_dir>/server.json`` (0600) says where (``{"url",
"pid"}``) so ``recovery list`` and friends find it; the file is removed on
the way out. The token is ``<state_dir>/token`` (see `._security`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from functools import partial
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from .._engine import Engine
from .._store import atomic_write
from ._app import build_app
from ._security import MAX_WS_MESSAGE_BYTES, Gate, load_or_create_token

__all__ = ["SERVER_INFO", "is_loopback", "read_server_info", "serve_control"]

log = logging.getLogger("engine.server")

SERVER_INFO = "server.json"
_GRACEFUL_TIMEOUT_S = 1.0
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (the safe default binds)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _public_url(bound: str, host: str) -> str:
    """A URL a local browser can open for the bound address (wildcards become loopback)."""
    scheme, _, address = bound.partition("://")
    name, _, port = address.rpartition(":")
    name = _WILDCARDS.get(name.strip("[]"), name)
    if host == "localhost":
        name = "localhost"
    return f"{scheme}://{name}:{port}"


def read_server_info(state_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``server.json`` of a running ``recovery serve``, or None."""
    try:
        data = json.loads((Path(state_dir) / SERVER_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("url"), str) else None


def _write_info(path: Path, url: str) -> None:
    payload = json.dumps({"url": url, "pid": os.getpid()}, indent=2) + "\n"
    atomic_write(path, payload.encode("utf-8"), mode=0o600)


def _remove_info(path: Path, url: str) -> None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("url") == url and data.get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


async def serve_control(
    engine: Engine,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    allow_hosts: Iterable[str] = (),
    allow_installs: bool = False,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the HTTP + WebSocket control channel and the dashboard until cancelled.

    Reports the bound base URL (``http://127.0.0.1:PORT``; ``port=0`` picks
    a free port) through ``task_status``. Returns after a graceful shutdown
    when ``shutdown_trigger`` returns. Binding anything but loopback is logged
    as a warning; the literal ``host`` (unless a wildcard) is accepted as a
    Host name beside the loopback names and ``allow_hosts``.
    """
    token = load_or_create_token(engine.state_dir)
    names = list(allow_hosts)
    if not is_loopback(host):
        log.warning("the control channel listens on %s, not only on this computer; anyone who can "
                    "reach it and has the token controls the engine", host)
        if host.strip("[]") not in ("0.0.0.0", "::", ""):
            names.append(_bind(host, port).rpartition(":")[0])
    closing = trio.Event()

    async def shutdown() -> None:
        await (shutdown_trigger or trio.sleep_forever)()
        closing.set()

    app: Any = Gate(build_app(engine, token=token, allow_installs=allow_installs, closing=closing),
               token=token, allow_hosts=names)
    config = Config()
    config.bind = [_bind(host, port)]
    config.accesslog = None
    config.errorlog = logging.getLogger("engine.server.http")
    config.graceful_timeout = _GRACEFUL_TIMEOUT_S
    config.websocket_max_message_size = MAX_WS_MESSAGE_BYTES
    config.include_server_header = False
    info = engine.state_dir / SERVER_INFO
    url: str | None = None
    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                partial(hypercorn_serve, app, config, shutdown_trigger=shutdown))
            url = _public_url(binds[0], host)
            _write_info(info, url)
            log.info("control channel listening on %s", url)
            task_status.started(url)
    finally:
        if url is not None:
            _remove_info(info, url)
