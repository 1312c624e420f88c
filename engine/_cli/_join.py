"""Joining the engine that owns the state directory (SPEC 13).

One engine owns a state directory. When a ``recovery serve`` (or another
``download``, ``run`` or ``import``, which serve a loopback control channel
while they run) holds it, these commands hand their operations to it over
the control channel and follow them live from its WebSocket events, with the
same display, exit codes and Ctrl-C (which pauses them there). The server's
rules apply as to any client: a destination outside its ``download_root`` is
refused with its message, which names the root.

`find_server` reads ``server.json`` and the token; `follow_on_server` runs a
batch there and raises `ServerGone` when the server stops under it (the
caller then decides again: open its own engine, or join the next owner).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import attrs
import httpx
import trio

from ._answers import Refused, answer, op_path
from ._display import JsonLines, make_display

__all__ = ["Remote", "Server", "ServerGone", "find_server", "follow_on_server", "spec_body"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_SETTLED = frozenset({"success", "failed", "exhausted", "cancelled"})
_RUNNING = frozenset({"pending", "in_progress", "recovering"})
_TIMEOUT_S = 15.0
_TICK_S = 0.1
#: No progress event for this long while in progress: nothing arrives (the engine's rate window).
_STALLED_S = 3.0


@attrs.frozen
class Server:
    """A control channel that answered: its base URL and the token of the state directory."""

    url: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class ServerGone(Exception):
    """The server stopped (or stopped answering) while the command followed its operations."""


def _read(state_dir: Path) -> Server | None:
    # The file of `engine._server.SERVER_INFO`, read here without loading the server's
    # modules (hypercorn, starlette): a command that joins nobody never pays for them.
    try:
        info = json.loads((state_dir / "server.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(info, dict) and isinstance(info.get("url"), str)):
        return None
    try:
        token = (state_dir / "token").read_text(encoding="ascii").strip()
    except OSError:
        return None
    return Server(info["url"], token)


async def find_server(state_dir: Path) -> Server | None:
    """The server of ``state_dir`` when ``server.json`` names one that answers, else None."""
    server = _read(state_dir)
    if server is None:
        return None
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, trust_env=False,
                                     timeout=_TIMEOUT_S) as client:
            response = await client.get("/api/settings")
    except httpx.HTTPError:
        return None  # a stale server.json (the server was killed): nobody to join
    return server if response.status_code == 200 else None


def spec_body(spec: Any) -> dict[str, Any]:
    """The ``POST /api/operations`` body for a spec the command line built."""
    from .._convert import converter
    from .._specs import DownloadSpec, InstallSpec, ProjectSpec

    def one(step: Any) -> dict[str, Any]:
        data = converter.unstructure(step)
        kind = "download" if isinstance(step, DownloadSpec) else "install" if isinstance(step, InstallSpec) else None
        if kind is None:
            raise TypeError(f"cannot hand a {type(step).__name__} to a server")
        return {"kind": kind, **{k: v for k, v in data.items() if v is not None}}

    if isinstance(spec, ProjectSpec):
        return {"kind": "project", "name": spec.name, "steps": [one(s) for s in spec.steps]}
    return one(spec)


async def _call(client: httpx.AsyncClient, method: str, path: str, body: Any = None) -> Any:
    try:
        response = await client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise ServerGone(f"{type(exc).__name__}: {exc}") from None
    try:
        return answer(response)
    except Refused as exc:
        if exc.code in ("HTTP_502", "HTTP_503"):  # a proxy's answer, not the server's: it went away
            raise ServerGone(f"HTTP {exc.status}") from None
        raise


class Remote:
    """What a command's ``prepare`` step may ask the joined server (its view of recorded runs)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def operations(self) -> list[dict[str, Any]]:
        return await _call(self._client, "GET", "/api/operations")  # type: ignore[no-any-return]

    async def cancel(self, op_id: str) -> dict[str, Any]:
        return await _call(self._client, "POST", op_path(op_id, "cancel"))  # type: ignore[no-any-return]


#: ``prepare`` for a joined server: specs to submit, or recorded operation views to follow as they are.
JoinPrepare = Callable[[Remote, list[Any]], Awaitable[list[Any]]]


async def _take_over(client: httpx.AsyncClient, op: dict[str, Any]) -> dict[str, Any]:
    """As with the command's own engine: a paused operation resumes, a failed one is tried again."""
    action = {"paused": "resume", "failed": "force-retry", "exhausted": "force-retry"}.get(op["status"])
    if action is None:
        return op
    try:
        return await _call(client, "POST", op_path(op["id"], action))  # type: ignore[no-any-return]
    except Refused:
        return op  # it moved meanwhile (another client): follow it as it is


async def _fetch(client: httpx.AsyncClient, view: dict[str, Any]) -> dict[str, Any]:
    """The operation's whole record now; one that was cancelled and forgotten elsewhere stays cancelled."""
    try:
        return await _call(client, "GET", op_path(view["id"]))  # type: ignore[no-any-return]
    except Refused as exc:
        if exc.status == 404:
            return {**view, "status": "cancelled"}
        raise


def _say(message: str) -> None:
    print(f"recovery: {message}", file=sys.stderr, flush=True)


async def follow_on_server(server: Server, specs: Sequence[Any], *, json_mode: bool = False,
                           prepare: JoinPrepare | None = None) -> int:
    """Submit ``specs`` to ``server``, show them until settled; the exit code of SPEC 13.

    ``prepare`` sees the server first and says what to run instead (as
    `run_specs`'s does with the command's own engine); a `RefusedError` from
    it is a usage error. Raises `ServerGone` when the server goes away before
    the operations settle.
    """
    from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

    ws_url = "ws" + server.url.removeprefix("http") + "/api/events"
    headers = [(b"authorization", f"Bearer {server.token}".encode("ascii"))]
    # An answer the follow-up cannot use (a 500, a token that changed) counts as the server going
    # away too: the caller decides again, and gives up with a message if it keeps happening.
    gone = (ServerGone, ConnectionClosed, HandshakeError, OSError, httpx.HTTPError, Refused)
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, trust_env=False,
                                     timeout=_TIMEOUT_S) as client:
            async with open_websocket_url(ws_url, extra_headers=headers) as ws:
                await ws.get_message()  # the snapshot: the subscription is live from here on
                return await _run(server, client, ws, specs, json_mode, prepare)
    except BaseException as exc:  # noqa: BLE001 - nurseries wrap the one error that matters
        cause = _single(exc)
        if isinstance(cause, gone):
            raise ServerGone(f"{type(cause).__name__}: {cause}") from None
        raise


def _single(exc: BaseException) -> BaseException:
    """The one error inside nested single-member exception groups (or ``exc`` itself)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _run(server: Server, client: httpx.AsyncClient, ws: Any, specs: Sequence[Any], json_mode: bool,
               prepare: JoinPrepare | None) -> int:
    from .._errors import RefusedError
    from .._platform import interrupt_signals

    with trio.open_signal_receiver(*interrupt_signals()) as sigint:
        views: dict[str, dict[str, Any]] = {}
        try:
            todo = list(specs) if prepare is None else await prepare(Remote(client), list(specs))
        except RefusedError as exc:
            field = f" (field: {exc.field})" if exc.field else ""
            _say(f"{exc.code}: {exc.message}{field}")
            return EXIT_USAGE
        try:
            for spec in todo:
                op = spec if isinstance(spec, dict) else await _call(client, "POST", "/api/operations",
                                                                      spec_body(spec))
                op = await _take_over(client, op)
                views[op["id"]] = op
        except Refused as exc:
            field = f" (field: {exc.field})" if exc.field else ""
            _say(f"the engine serving this state directory ({server.url}) refused: {exc.code}: "
                 f"{exc.message}{field}")
            return EXIT_USAGE if exc.status == 422 else EXIT_FAILED
        if not json_mode and views:
            _say(f"joined the engine that holds this state directory ({server.url}); "
                 "Ctrl-C pauses these operations there")
        interrupted = False
        stale: set[str] = set()
        heard = {op_id: trio.current_time() for op_id in views}  # last news of each one's bytes

        def shown() -> list[dict[str, Any]]:
            """The views, with rate and ETA gone once nothing arrived for a while (never an old figure)."""
            now = trio.current_time()
            return [{**v, "rate_bps": 0.0, "eta_s": None}
                    if v["status"] == "in_progress" and now - heard[op_id] > _STALLED_S else v
                    for op_id, v in views.items()]

        out = JsonLines() if json_mode else None
        if out is not None:
            for op_id, view in views.items():  # where things stand, as with the command's own engine
                out.event({"type": "status", "op_id": op_id, "status": view["status"], "previous": None,
                           "ts": time.time()})

        async with trio.open_nursery() as nursery:

            async def read_events() -> None:
                while True:
                    event = json.loads(await ws.get_message())
                    op_id = event.get("op_id")
                    mine = op_id in views
                    if out is not None and (mine or event.get("type") == "breaker"):
                        out.event(event)
                    if not mine:
                        continue
                    if event.get("type") == "progress":
                        heard[op_id] = trio.current_time()
                        views[op_id].update({k: v for k, v in event.items() if k not in ("type", "op_id", "ts")})
                    elif event.get("type") in ("status", "retry_scheduled"):
                        if "status" in event:
                            views[op_id]["status"] = event["status"]
                        stale.add(op_id)

            async def refresh() -> None:
                while True:
                    await trio.sleep(_TICK_S)
                    for op_id in list(stale):
                        stale.discard(op_id)
                        views[op_id] = await _fetch(client, views[op_id])
                        heard[op_id] = trio.current_time()  # the server's own recent rate

            async def watch_signal() -> None:
                nonlocal interrupted
                async for _ in sigint:
                    interrupted = True
                    nursery.cancel_scope.cancel()
                    return

            async def show() -> None:
                display = None if json_mode else make_display()
                if display is None:
                    while not all(v["status"] in _SETTLED for v in views.values()):
                        await trio.sleep(_TICK_S)
                else:
                    with display:
                        while True:
                            display.update(shown())
                            if all(v["status"] in _SETTLED for v in views.values()):
                                break
                            await trio.sleep(_TICK_S)
                nursery.cancel_scope.cancel()

            nursery.start_soon(read_events)
            nursery.start_soon(refresh)
            nursery.start_soon(watch_signal)
            nursery.start_soon(show)

        if interrupted:
            for op_id, view in views.items():
                if view["status"] in _SETTLED:
                    continue
                try:
                    views[op_id] = await _call(client, "POST", op_path(op_id, "pause"))
                except Refused:
                    pass  # settled meanwhile
            if not json_mode:
                make_display().summary(views.values(), interrupted=True)
            print("interrupted: paused; run the same command again to resume", file=sys.stderr)
            return EXIT_INTERRUPTED
        for op_id in views:
            views[op_id] = await _fetch(client, views[op_id])
        if not json_mode:
            make_display().summary(views.values())
        return EXIT_OK if all(v["status"] == "success" for v in views.values()) else EXIT_FAILED
