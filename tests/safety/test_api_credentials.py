"""SPEC 6.1, 14, 16: no credential in any API answer, WebSocket event or log line of a control-channel run.

Credentials go in as request headers (one with a trailing space, one wrapped in tabs, one with a
vertical tab inside, which is refused) and as ``user:pass@`` in the URL; the downloads fail,
recover and succeed against a real loopback server. Then every answer the API gives is read,
with every event the WebSocket sent and the whole ``recovery.log``, and none holds a secret.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from _safety import serving
from engine._cli._logsetup import setup_logging
from engine.testing import FaultServer, Faults

BEARER, API_KEY, USER_PASS, REFUSED = "s3cr3t-bearer-9921", "k3y-value-4410", "p4ssw0rd-in-url", "vt-s3cr3t-77"
SECRETS = (BEARER, API_KEY, USER_PASS, REFUSED)


@pytest.fixture
def logging_restored() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("engine", "supervisors", "hypercorn.error")]
    saved = [(lg, list(lg.handlers), lg.level) for lg in loggers]
    yield
    for lg, handlers, level in saved:
        for handler in lg.handlers:
            if handler not in handlers:
                handler.close()
        lg.handlers[:] = handlers
        lg.setLevel(level)


async def test_no_credential_in_any_answer_event_or_log_line(tmp_path: Path, logging_restored: None) -> None:
    """Every API answer (operations, each operation, reports, history, statistics, breakers, settings,
    metrics), every WebSocket event and every log line of a run with credentials in headers (odd
    whitespace too) and in the URL's user:pass@ is free of them; the refusal names the header only."""
    faults = FaultServer()
    async with faults.running(), serving(tmp_path) as api:
        setup_logging(api.state_dir)  # as `recovery serve` does
        events: list[str] = []
        ws_url = api.url.replace("http://", "ws://") + "/api/events"

        async def listen(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            async with open_websocket_url(ws_url, extra_headers=[(b"authorization",
                                                                  f"Bearer {api.token}".encode())]) as ws:
                task_status.started()
                try:
                    while True:
                        events.append(await ws.get_message())
                except ConnectionClosed:
                    pass

        async with trio.open_nursery() as nursery:
            await nursery.start(listen)
            host = faults.base_url.split("://", 1)[1]
            headers = {"Authorization": f"Bearer {BEARER} ", "X-Api-Key": f"\t{API_KEY}\t"}
            answers: list[str] = []
            ids = []
            for path, fault in (("/files/down.bin", Faults(status=503)),
                                ("/files/drop.bin", Faults(drop_after=20_000, drop_times=1))):
                userinfo = f"user:{USER_PASS}@" if path == "/files/down.bin" else ""
                url = f"http://{userinfo}{host}{path}?size=60000"
                faults.add_file(path, size=60_000, faults=fault)
                created = await api.client.post("/api/operations", json={
                    "url": url, "dest": path.rsplit("/", 1)[1], "headers": headers})
                assert created.status_code == 201, created.text
                answers.append(created.text)
                ids.append(created.json()["id"])
            refused = await api.client.post("/api/operations", json={
                "url": f"http://{host}/files/x.bin", "headers": {"Authorization": f"Bearer {REFUSED}\x0b{REFUSED}"}})
            assert refused.status_code == 422 and "Authorization" in refused.json()["error"]["message"]
            answers.append(refused.text)
            finals = [await api.wait_status(op_id, "success", "failed", "exhausted", timeout=30) for op_id in ids]
            assert [f["status"] for f in finals] == ["exhausted", "success"], finals
            seen = {auth for path, auth in faults.authorization_seen if path == "/files/drop.bin"}
            assert seen == {f"Bearer {BEARER}"}  # the credentials were really in use (sent, trimmed)
            assert {p for p, _a in faults.authorization_seen} == {"/files/down.bin", "/files/drop.bin"}
            for path in ("/api/operations", *(f"/api/operations/{i}" for i in ids),
                         *(f"/api/operations/{i}/report" for i in ids), "/api/report",
                         "/api/recovery/history?hours=1", "/api/recovery/performance", "/api/breakers",
                         "/api/settings", "/metrics"):
                response = await api.client.get(path)
                assert response.status_code == 200, (path, response.text)
                answers.append(response.text)
            nursery.cancel_scope.cancel()

        for handler in logging.getLogger("engine").handlers:
            handler.flush()
        logs = [p.read_text(errors="replace") for p in (api.state_dir / "logs").glob("recovery.log*")]

    # The scan has something to scan: the failure, the retry and both destinations are in there.
    everything = "\n".join(answers + events + logs)
    assert "E_SERVER_OVERLOAD" in "\n".join(answers) and "E_SERVER_OVERLOAD" in "\n".join(events)
    assert any("retry_scheduled" in e for e in events) and "down.bin" in "\n".join(logs)
    assert "drop.bin" in json.dumps(finals)
    for secret in SECRETS:
        assert secret not in everything, secret
