"""``recovery report`` and ``recovery history`` with a running ``recovery serve``, then without (SPEC 10.1, 10.2, 13)."""

from __future__ import annotations

import json
from typing import Any, Iterator

import httpx
import pytest

from engine._cli import main
from engine.testing import FaultServer, Faults

SECRETS = ("hunter2", "HEADERSECRET99")


@pytest.fixture
def faults() -> Iterator[FaultServer]:
    server = FaultServer()
    with server.run_in_thread():
        yield server


def recovery(capsys: Any, *argv: str) -> tuple[int, str, str]:
    """Run a ``recovery`` command in this process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_report_and_history_ask_the_running_serve_then_read_the_state_dir(
    tmp_path, faults, start_serve, stop_serve, capsys
):
    """While serve runs, report and history come from it (its --set in force); once stopped, from the state dir."""
    state = tmp_path / "state"
    server = start_serve(state, tmp_path / "root", "--set", "max_retries=1", "--set", "initial_delay_s=0.05",
                         "--set", "jitter=0")
    url = faults.url("/files/m.bin", size=1000, faults=Faults(status=503)).replace("://", "://user:hunter2@", 1)
    try:
        response = httpx.post(f"{server.url}/api/operations", timeout=10,
                              headers={"Authorization": f"Bearer {server.token}"},
                              json={"kind": "download", "url": url, "dest": "m.bin",
                                    "headers": {"Authorization": "Bearer HEADERSECRET99"}})
        assert response.status_code == 201, response.text
        op_id = response.json()["id"]
        server.wait_status(op_id, "exhausted", timeout=60)
        where = ("--state-dir", str(state))

        code, out, err = recovery(capsys, "report", op_id, "--json", *where)
        assert code == 0, err
        doc = json.loads(out)
        assert doc["source"] == "engine" and doc["settings"]["max_retries"] == 1  # the server's --set
        assert doc["summary"]["code"] == "E_SERVER_OVERLOAD" and doc["summary"]["retries"] == 1
        assert doc["network"]["tcp"]["ok"] is True and len(doc["timeline"]) == 2
        # the serve log's lines about this operation, and only those
        assert doc["log_lines"] and all(op_id in line for line in doc["log_lines"])
        assert any("exhausted with E_SERVER_OVERLOAD" in line for line in doc["log_lines"])
        code, text, _ = recovery(capsys, "report", op_id, "--no-network", *where)
        assert code == 0 and "E_SERVER_OVERLOAD" in text and "network check: not run" in text
        code, whole, _ = recovery(capsys, "report", "--json", *where)
        assert code == 0 and [o["id"] for o in json.loads(whole)["operations"]] == [op_id]
        code, hist, _ = recovery(capsys, "history", "--hours", "2", "--json", *where)
        assert code == 0 and json.loads(hist)["totals"]["failures_by_code"] == {"E_SERVER_OVERLOAD": 2}
        code, _, err = recovery(capsys, "report", "nope", *where)
        assert code == 1 and "E_NOT_FOUND" in err
        for secret in SECRETS:
            assert secret not in out + text + whole + hist
    finally:
        stop_serve(server)

    code, offline, err = recovery(capsys, "report", "--json", *where)
    assert code == 0, err
    engine_doc = json.loads(offline)
    assert engine_doc["source"] == "state_dir" and engine_doc["report"] == "engine"
    assert [(o["id"], o["status"], o["code"]) for o in engine_doc["operations"]] == \
        [(op_id, "exhausted", "E_SERVER_OVERLOAD")]
    assert engine_doc["history_24h"]["failures_by_code"] == {"E_SERVER_OVERLOAD": 2}
    code, hist, _ = recovery(capsys, "history", "--hours", "2", "--json", *where)
    assert code == 0 and json.loads(hist)["totals"]["failures_by_code"] == {"E_SERVER_OVERLOAD": 2}
    for secret in SECRETS:
        assert secret not in offline + hist
