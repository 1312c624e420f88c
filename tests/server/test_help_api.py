"""Report, history and failure metrics over the control channel (SPEC 10.1, 10.2, 14, 16)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from engine.testing._scripted import ScriptedSpec

# Found on PATH or where packages put it, so the check is skipped only when promtool is truly absent.
PROMTOOL = shutil.which("promtool") or next(
    (p for p in ("/usr/bin/promtool", "/usr/local/bin/promtool") if os.access(p, os.X_OK)), None)


async def test_operation_view_report_and_history_over_http(api, faults):
    """GET /api/operations/{id} has the timeline; /report is JSON or text; /history counts by code and host."""
    faults.add_file("/gone.bin", size=1000)
    r = await api.client.post("/api/operations", json={
        "kind": "download", "url": f"{faults.base_url}/missing.bin?token=SECRETQ", "dest": "x.bin",
        "headers": {"X-Api-Key": "SECRETH"}})
    assert r.status_code == 201, r.text
    op_id = r.json()["id"]
    op = await api.wait_status(op_id, "failed")
    assert [t["code"] for t in op["timeline"]] == ["E_HTTP_CLIENT"]
    report = await api.client.get(f"/api/operations/{op_id}/report")
    assert report.status_code == 200 and report.json()["summary"]["code"] == "E_HTTP_CLIENT"
    assert report.json()["network"]["tcp"]["ok"] is True
    assert "SECRETQ" not in report.text and "SECRETH" not in report.text
    text = await api.client.get(f"/api/operations/{op_id}/report?format=text&network=0")
    assert text.status_code == 200 and "E_HTTP_CLIENT" in text.text and "network check: not run" in text.text
    missing = await api.client.get("/api/operations/nope/report")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "E_NOT_FOUND"
    whole = await api.client.get("/api/report")
    assert whole.status_code == 200 and [o["id"] for o in whole.json()["operations"]] == [op_id]
    hist = await api.client.get("/api/recovery/history?hours=2")
    assert hist.status_code == 200
    body = hist.json()
    assert len(body["buckets"]) == 2 and body["totals"]["failures_by_code"] == {"E_HTTP_CLIENT": 1}
    assert body["totals"]["failures_by_host"] == {faults.base_url.split("://")[1]: 1}
    bad = await api.client.get("/api/recovery/history?hours=abc")
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "hours"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
async def test_failure_series_pass_promtool(api, tmp_path):
    """/metrics has recovery_failures_total{code,host} and `promtool check metrics` accepts the whole page."""
    await api.client.post("/api/operations", json={"kind": "download",
                                                   "url": "http://127.0.0.1:9/x.bin", "dest": "y.bin"})
    api.engine.settings  # noqa: B018 - the engine is live
    op = api.engine.list()[0]
    await api.wait_status(op.id, "failed", "exhausted", "recovering", timeout=10)
    metrics = await api.client.get("/metrics")
    assert metrics.status_code == 200
    assert 'recovery_failures_total{code="E_NET_UNREACHABLE",host="127.0.0.1:9"}' in metrics.text
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=metrics.text, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
