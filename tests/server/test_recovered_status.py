"""SPEC 2.1 over the control channel: a retry that transfers is in_progress again, in the API and the events."""

from __future__ import annotations

import json
from typing import Any

import trio
from trio_websocket import open_websocket_url

from engine.testing import Faults

SIZE = 2_000_000


async def test_api_and_websocket_show_a_flowing_retry_as_in_progress(api: Any, faults: Any) -> None:
    """After a drop and an automatic retry that moves bytes: in_progress, Attempt 1/5, error null, last_error set."""
    faults.add_file("/flow.bin", size=SIZE, faults=Faults(drop_after=300_000, drop_times=1, rate_bps=400_000))
    ws_url = api.url.replace("http://", "ws://") + "/api/events"
    async with open_websocket_url(ws_url, extra_headers=[(b"authorization", f"Bearer {api.token}".encode())]) as ws:
        assert json.loads(await ws.get_message())["type"] == "snapshot"
        response = await api.client.post("/api/operations", json={
            "kind": "download", "url": f"{faults.base_url}/flow.bin", "dest": "flow.bin"})
        op_id = response.json()["id"]
        events: list[dict[str, Any]] = []
        with trio.fail_after(60):
            while True:
                event = json.loads(await ws.get_message())
                if event.get("op_id") != op_id:
                    continue
                events.append(event)
                if event["type"] == "status" and event["status"] == "in_progress" and event["previous"] == "recovering":
                    break
        # The API, asked while the resumed transfer runs (the rest takes seconds at 400 kB/s).
        with trio.fail_after(60):
            while True:
                view = await api.op(op_id)
                assert view["status"] != "recovering" or view["bytes_done"] <= 300_000 + 65_536, view
                if view["status"] == "in_progress" and view["rate_bps"] > 0 and view["bytes_done"] > 400_000:
                    break
                await trio.sleep(0.02)
        listed = {o["id"]: o for o in (await api.client.get("/api/operations")).json()}[op_id]
        with trio.fail_after(60):
            while True:
                event = json.loads(await ws.get_message())
                if event.get("op_id") == op_id:
                    events.append(event)
                    if event.get("status") == "success":
                        break
    assert view["attempt"] == 1 and view["max_retries"] == 5
    assert view["error"] is None and view["last_error"]["code"] == "E_NET_INTERRUPTED"
    assert view["eta_s"] is not None
    assert listed["status"] in ("in_progress", "success") and listed["error"] is None
    assert listed["last_error"]["code"] == "E_NET_INTERRUPTED"
    flowing = next(e for e in events if e["type"] == "status" and e["previous"] == "recovering")
    assert flowing["status"] == "in_progress" and "error" not in flowing
    assert flowing["attempt"] == 1 and flowing["max_retries"] == 5
    assert flowing["last_error"]["code"] == "E_NET_INTERRUPTED"
    statuses = [(e["previous"], e["status"]) for e in events if e["type"] == "status"]
    assert statuses[-1] == ("in_progress", "success")  # never "recovering" up to the end
    assert [s for s in statuses if s[1] == "recovering"] == [("in_progress", "recovering")]
