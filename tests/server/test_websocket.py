"""``WS /api/events``: a snapshot first, then the engine's events in order (SPEC 9, 14)."""

from __future__ import annotations

import json
from typing import Any

import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from engine.testing._scripted import ScriptedSpec
from engine.testing import Faults

EVENT_TYPES = {"submitted", "status", "progress", "retry_scheduled", "breaker", "stats", "snapshot_corrupt",
               "settings", "forgotten"}


def ws_url(api: Any) -> str:
    return api.url.replace("http://", "ws://") + "/api/events"


def bearer(api: Any) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {api.token}".encode())]


async def next_event(ws: Any, timeout: float = 3.0) -> dict[str, Any]:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())  # type: ignore[no-any-return]


async def test_recovered_download_events_in_order(api, faults):
    """One download that drops once: snapshot, submitted, in_progress, recovering + retry_scheduled, success."""
    faults.add_file("/drop.bin", size=300_000, faults=Faults(drop_after=100_000, drop_times=1))
    async with open_websocket_url(ws_url(api), extra_headers=bearer(api)) as ws:
        snapshot = await next_event(ws)
        assert snapshot["type"] == "snapshot"
        assert snapshot["operations"] == []
        assert snapshot["stats"]["total_operations"] == 0
        response = await api.client.post("/api/operations", json={
            "kind": "download", "url": f"{faults.base_url}/drop.bin", "dest": "drop.bin"})
        op_id = response.json()["id"]
        seen: list[tuple[str, str | None]] = []
        events: list[dict[str, Any]] = []
        while True:
            ev = await next_event(ws)
            assert ev["type"] in EVENT_TYPES and isinstance(ev["ts"], float)
            if ev.get("op_id") != op_id:
                continue
            events.append(ev)
            seen.append((ev["type"], ev.get("status")))
            if ev.get("status") == "success":
                break
    wanted = [("submitted", None), ("status", "in_progress"), ("status", "recovering"),
              ("retry_scheduled", None), ("status", "success")]
    it = iter(seen)
    assert all(step in it for step in wanted), seen  # in this order, other events in between
    assert seen[0] == ("submitted", None)
    assert events[0]["kind"] == "download" and events[0]["spec"]["dest"].endswith("drop.bin")
    retry = next(e for e in events if e["type"] == "retry_scheduled")
    assert (retry["attempt"], retry["max_retries"]) == (1, 5)
    assert retry["error"]["code"] == "E_NET_INTERRUPTED" and retry["next_retry_at"] > retry["ts"]
    recovering = next(e for e in events if e.get("status") == "recovering")
    assert recovering["previous"] == "in_progress" and recovering["error"]["retryable"] is True


async def test_snapshot_shows_existing_operations(api):
    """A client connecting later gets the operations and statistics as they are now."""
    op = await api.engine.submit(ScriptedSpec(name="waiting", script=["hang"]))
    async with open_websocket_url(ws_url(api), extra_headers=bearer(api)) as ws:
        snapshot = await next_event(ws)
    assert snapshot["type"] == "snapshot"
    assert [o["id"] for o in snapshot["operations"]] == [op.id]
    assert snapshot["operations"][0]["spec"]["name"] == "waiting"
    assert snapshot["stats"]["total_operations"] == 1


async def test_cookie_authenticates_the_websocket(api):
    """The dashboard's cookie is enough for the WebSocket (no Authorization header)."""
    cookie = f"recovery_token_{api.port}={api.token}".encode()
    async with open_websocket_url(ws_url(api), extra_headers=[(b"cookie", cookie)]) as ws:
        assert (await next_event(ws))["type"] == "snapshot"


async def test_websocket_without_token_is_refused(api):
    """A handshake without the token is refused (401) before any event is sent."""
    try:
        async with open_websocket_url(ws_url(api)):
            raise AssertionError("the handshake should have been refused")
    except ConnectionRejected as exc:
        assert exc.status_code == 401


async def test_subscription_released_when_the_client_leaves(api, poll):
    """Closing the socket releases the engine subscription (nothing keeps queueing for it)."""
    bus = api.engine._events
    before = bus.subscriber_count
    async with open_websocket_url(ws_url(api), extra_headers=bearer(api)) as ws:
        await next_event(ws)
        assert bus.subscriber_count == before + 1
    await poll(lambda: bus.subscriber_count == before)


async def test_slow_client_never_slows_the_engine(api, poll):
    """A client that reads nothing does not hold operations back; later it still gets every status event."""
    async with open_websocket_url(ws_url(api), extra_headers=bearer(api), message_queue_size=0) as ws:
        ops = [await api.engine.submit(ScriptedSpec(name=f"op{i}", script=["progress:100+progress:100+ok"]))
               for i in range(10)]
        for op in ops:
            await api.wait_status(op.id, "success")
        successes: set[str] = set()
        while len(successes) < len(ops):
            ev = await next_event(ws)
            if ev["type"] == "status" and ev["status"] == "success":
                successes.add(ev["op_id"])
    assert successes == {op.id for op in ops}


async def test_oversized_client_message_closes_the_socket(api):
    """A client message over 64 KiB closes the WebSocket (1009, message too big)."""
    async with open_websocket_url(ws_url(api), extra_headers=bearer(api)) as ws:
        await next_event(ws)
        await ws.send_message("x" * (64 * 1024 + 1))
        with trio.fail_after(3):
            try:
                while True:
                    await ws.get_message()
            except ConnectionClosed as exc:
                assert exc.reason.code == 1009


async def test_small_client_messages_are_ignored(api):
    """Ordinary client messages (e.g. a keep-alive) do not disturb the stream."""
    async with open_websocket_url(ws_url(api), extra_headers=bearer(api)) as ws:
        await next_event(ws)
        await ws.send_message('{"type": "ping"}')
        op = await api.engine.submit(ScriptedSpec(name="after-ping"))
        while True:
            ev = await next_event(ws)
            if ev.get("op_id") == op.id and ev["type"] == "submitted":
                break


async def test_graceful_shutdown_closes_streams_at_once(tmp_path):
    """When the shutdown trigger fires, event streams close with 1001 and serve_control returns promptly."""
    from functools import partial

    from engine import Settings, open_engine
    from engine._server import serve_control

    stop = trio.Event()
    async with open_engine(tmp_path / "state", Settings(download_root=str(tmp_path))) as engine:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_control, engine, port=0, shutdown_trigger=stop.wait))
            token = (engine.state_dir / "token").read_text().strip()
            async with open_websocket_url(url.replace("http://", "ws://") + "/api/events",
                                          extra_headers=[(b"authorization", f"Bearer {token}".encode())]) as ws:
                assert json.loads(await ws.get_message())["type"] == "snapshot"
                stopped_at = trio.current_time()
                stop.set()
                with trio.fail_after(0.5):
                    try:
                        await ws.get_message()
                    except ConnectionClosed as exc:
                        assert exc.reason.code == 1001
                    else:
                        raise AssertionError("the stream should have closed")
        # serve_control returned well before hypercorn's 1 s graceful timeout: nothing was left hanging.
        assert trio.current_time() - stopped_at < 0.9
        assert not (engine.state_dir / "server.json").exists()


async def test_forgetting_an_operation_is_an_event(api):
    """DELETE of a finished operation reaches other clients as a `forgotten` event."""
    op = await api.engine.submit(ScriptedSpec(name="done", script=["ok"]))
    await api.wait_status(op.id, "success")
    async with open_websocket_url(ws_url(api), extra_headers=bearer(api)) as ws:
        assert (await next_event(ws))["type"] == "snapshot"
        assert (await api.client.delete(f"/api/operations/{op.id}")).status_code == 204
        while True:
            ev = await next_event(ws)
            if ev["type"] == "forgotten":
                break
    assert ev["op_id"] == op.id


async def test_snapshot_problems_found_at_start_reach_each_client(tmp_path):
    """A corrupt snapshot found at start is reported to every WebSocket client after its snapshot."""
    from functools import partial

    from engine import Settings, open_engine
    from engine._server import serve_control

    ops = tmp_path / "state" / "operations"
    ops.mkdir(parents=True)
    (ops / "broken.msgpack").write_bytes(b"\xc1 not msgpack")
    async with open_engine(tmp_path / "state", Settings(download_root=str(tmp_path))) as engine:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_control, engine, port=0))
            token = (engine.state_dir / "token").read_text().strip()
            headers = [(b"authorization", f"Bearer {token}".encode())]
            async with open_websocket_url(url.replace("http://", "ws://") + "/api/events",
                                          extra_headers=headers) as ws:
                assert (await next_event(ws))["type"] == "snapshot"
                problem = await next_event(ws)
            nursery.cancel_scope.cancel()
    assert problem["type"] == "snapshot_corrupt" and problem["path"].endswith("broken.msgpack")
    assert "decoded" in problem["reason"]
