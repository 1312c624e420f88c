"""An aiohttp application embedding the engine with `asyncio_engine` (SPEC 12.1).

The app enters the engine in a cleanup context; ``POST /downloads`` starts a
download and streams its events as newline-delimited JSON. It is served by a
real `web.AppRunner` on 127.0.0.1 and driven by an aiohttp `ClientSession`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, web

from engine import DownloadSpec, Settings
from engine.embed import AsyncioEngine, asyncio_engine
from engine.testing import FaultServer, Faults, VirtualFile

SIZE = 600_000
SETTLED = {"success", "failed", "exhausted", "cancelled"}
ENGINE = web.AppKey("engine", AsyncioEngine)


def ndjson(record: dict[str, Any]) -> bytes:
    return json.dumps(record, default=str).encode() + b"\n"


def make_app(state_dir: Path, settings: Settings) -> web.Application:
    """The launcher: one engine for the app's lifetime, one streaming handler."""

    async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
        async with asyncio_engine(state_dir, settings) as eng:
            app[ENGINE] = eng
            yield

    async def start_download(request: web.Request) -> web.StreamResponse:
        eng = request.app[ENGINE]
        body = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        async with eng.subscribe() as events:  # before submitting, so no event is missed
            op = await eng.submit(DownloadSpec(url=body["url"], dest=body.get("dest"), sha256=body.get("sha256")))
            await response.write(ndjson({"type": "accepted", **op.to_dict()}))
            if not op.settled:
                async for event in events:
                    if event.op_id != op.id:
                        continue
                    await response.write(ndjson(event.to_dict()))
                    if event.type == "status" and event["status"] in SETTLED:
                        break
        await response.write_eof()
        return response

    app = web.Application()
    app.cleanup_ctx.append(engine_ctx)
    app.router.add_post("/downloads", start_download)
    return app


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def stream(session: ClientSession, base: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    async with session.post(f"{base}/downloads", json=payload) as resp:
        assert resp.status == 200 and resp.content_type == "application/x-ndjson"
        return [json.loads(line) async for line in resp.content if line.strip()]


def test_handler_streams_a_recovering_download_as_ndjson(tmp_path: Path) -> None:
    """Two clients start downloads through the app and read their events, a recovery included, as NDJSON lines."""
    server = FaultServer()
    settings = Settings(initial_delay_s=0.05, max_delay_s=0.2, jitter=0.0, checkpoint_interval_s=0.05,
                        download_root=str(tmp_path / "downloads"))
    with server.run_in_thread():
        faults = Faults(drop_after=100_000, drop_times=1, rate_bps=2_000_000)
        payloads = [
            {"url": server.url(f"/files/{name}", size=SIZE, faults=faults), "dest": name,
             "sha256": VirtualFile(seed=f"/files/{name}", size=SIZE).sha256}
            for name in ("a.bin", "b.bin")
        ]

        async def main() -> list[list[dict[str, Any]]]:
            async with asyncio.timeout(20):
                runner, base = await serve(make_app(tmp_path / "state", settings))
                try:
                    async with ClientSession() as session:
                        return list(await asyncio.gather(*(stream(session, base, p) for p in payloads)))
                finally:
                    await runner.cleanup()  # leaves asyncio_engine: the engine stops here

        async def checked() -> list[list[dict[str, Any]]]:
            lines = await main()
            assert asyncio.all_tasks() == {asyncio.current_task()}
            return lines

        results = asyncio.run(checked())

    for payload, lines in zip(payloads, results):
        assert lines[0]["type"] == "accepted" and lines[0]["status"] == "pending"
        statuses = [line["status"] for line in lines if line["type"] == "status"]
        assert "recovering" in statuses and statuses[-1] == "success"
        retries = [line for line in lines if line["type"] == "retry_scheduled"]
        assert [r["error"]["code"] for r in retries] == ["E_NET_INTERRUPTED"]
        assert any(line["type"] == "progress" for line in lines)
        assert {line["op_id"] for line in lines[1:]} == {lines[0]["id"]}
        data = (tmp_path / "downloads" / payload["dest"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == payload["sha256"]
