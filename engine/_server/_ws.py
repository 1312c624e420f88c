"""``WS /api/events``: a snapshot, then every event of SPEC section 9 as JSON.

The subscription is taken before the snapshot is built, so nothing falls in
between (an event may repeat what the snapshot shows; clients apply both).
A slow client never slows the engine: the subscription queues per client and
coalesces progress; only this connection's task waits on the socket. Client
messages are read only to notice a close and to refuse oversized ones
(close 1009); the subscription is always released.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import trio
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .._engine import Engine
from ._security import MAX_WS_MESSAGE_BYTES

__all__ = ["events_endpoint", "dumps"]

log = logging.getLogger("engine.server")

CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009


def dumps(data: Any) -> str:
    """JSON for the wire; anything unexpected is shown as its string."""
    return json.dumps(data, default=str, separators=(",", ":"))


def snapshot_message(engine: Engine) -> dict[str, Any]:
    return {
        "type": "snapshot",
        "ts": time.time(),
        "operations": [op.to_dict() for op in engine.list()],
        "stats": engine.statistics().to_dict(),
    }


def events_endpoint(engine: Engine, closing: trio.Event | None = None) -> Any:
    """The endpoint; ``closing`` set means the server is shutting down: close with 1001 at once."""

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        sub = engine.subscribe_nowait()
        close_code = CLOSE_GOING_AWAY
        try:
            await websocket.send_text(dumps(snapshot_message(engine)))
            for problem in engine.load_problems:  # found at start, before anyone could listen
                await websocket.send_text(dumps({"type": "snapshot_corrupt", "ts": time.time(),
                                                 "path": problem.path, "reason": problem.reason}))
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    nonlocal close_code
                    while True:
                        message = await websocket.receive()
                        if message["type"] == "websocket.disconnect":
                            close_code = 0
                            break
                        data = message.get("text")
                        size = len(data.encode("utf-8")) if data is not None else len(message.get("bytes") or b"")
                        if size > MAX_WS_MESSAGE_BYTES:
                            close_code = CLOSE_TOO_BIG
                            break
                    nursery.cancel_scope.cancel()

                async def close_on_shutdown() -> None:
                    assert closing is not None
                    await closing.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(read)
                if closing is not None:
                    nursery.start_soon(close_on_shutdown)
                async for event in sub:
                    await websocket.send_text(dumps(event.to_dict()))
                nursery.cancel_scope.cancel()  # the engine shut down
        except* (WebSocketDisconnect, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            close_code = 0
        finally:
            engine.unsubscribe(sub)
        if close_code and websocket.application_state is WebSocketState.CONNECTED:
            try:
                with trio.move_on_after(1):
                    await websocket.close(close_code)
            except Exception as exc:  # noqa: BLE001 - the peer may already be gone
                log.debug("websocket close failed: %s", exc)

    return endpoint
