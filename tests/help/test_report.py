"""The support report (SPEC 10.2): contents, redaction, the network check, the offline CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import DownloadSpec, Settings, Status, open_engine
from engine.testing import INLINE_DISK
from engine._report import check_host, live_operation_report, report_text
from engine.testing import FaultServer, Faults

SECRETS = ("hunter2", "QUERYSECRET42", "HEADERSECRET99")


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    srv = FaultServer()
    async with srv.running():
        yield srv


def fast(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(initial_delay_s=0.01, max_delay_s=0.05, jitter=0.0, download_root=str(tmp_path / "dl"), **kw)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret} leaked into the report"


async def test_report_of_an_exhausted_download(server: FaultServer, tmp_path: Path) -> None:
    """Names code, message, retries, settings and free space where the file goes; no credential from headers or URL."""
    server.add_file("/m.bin", size=10_000, faults=Faults(status=503))
    host_port = server.base_url.split("://", 1)[1]
    url = f"http://user:hunter2@{host_port}/m.bin?token=QUERYSECRET42&v=1"
    spec = DownloadSpec(url=url, dest="m.bin", headers={"Authorization": "Bearer HEADERSECRET99"})
    async with open_engine(tmp_path / "state", fast(tmp_path, max_retries=2), disk=INLINE_DISK) as eng:
        op = await eng.submit(spec)
        final = await eng.wait(op.id)
        doc = await live_operation_report(eng, op.id)
    assert final.status is Status.EXHAUSTED
    summary = doc["summary"]
    assert summary["code"] == "E_SERVER_OVERLOAD" and "503" in summary["message"] and summary["suggestion"]
    assert summary["retries"] == 2 and summary["attempts"] == 3 and summary["kind"] == "download"
    assert [t["code"] for t in doc["timeline"]] == ["E_SERVER_OVERLOAD"] * 3
    assert doc["settings"]["max_retries"] == 2 and doc["settings"]["initial_delay_s"] == 0.01
    assert doc["settings_source"] == "the running engine"
    dest = doc["resources"]["destination"]
    assert dest["path"] == str(tmp_path / "dl") and dest["free_bytes"] > 0
    assert doc["resources"]["state_dir"]["free_bytes"] > 0 and doc["resources"]["memory"]["total_bytes"] > 0
    assert doc["network"]["checked"] and doc["network"]["dns"]["ok"] and doc["network"]["tcp"]["ok"]
    assert doc["versions"]["python"] == sys.version.split()[0]
    text = report_text(doc)
    assert "E_SERVER_OVERLOAD" in text and "free space at" in text and "TCP connect: ok" in text
    assert_no_secret(json.dumps(doc))
    assert_no_secret(text)

    # without a running engine: `recovery report ID` reads the state directory
    env = {**os.environ, "RECOVERY_STATE_DIR": str(tmp_path / "state")}
    out = subprocess.run([sys.executable, "-m", "engine", "report", op.id, "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    offline = json.loads(out.stdout)
    assert offline["source"] == "state_dir" and offline["summary"]["code"] == "E_SERVER_OVERLOAD"
    assert offline["summary"]["retries"] == 2 and len(offline["timeline"]) == 3
    assert offline["resources"]["destination"]["free_bytes"] > 0
    # the settings the download ran with (not settings.json's defaults), and where they come from
    assert offline["settings"]["max_retries"] == 2 and offline["settings"]["initial_delay_s"] == 0.01
    assert offline["settings_source"] == "the operation's last snapshot"
    assert offline["summary"]["attempt"] == 2 and offline["summary"]["max_retries"] == 2
    assert_no_secret(out.stdout + out.stderr)
    plain = subprocess.run([sys.executable, "-m", "engine", "report", op.id], env=env,
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0 and "E_SERVER_OVERLOAD" in plain.stdout and "attempt 2/2" in plain.stdout
    assert "settings (from the operation's last snapshot): " in plain.stdout and "max_retries=2" in plain.stdout
    assert_no_secret(plain.stdout)
    missing = subprocess.run([sys.executable, "-m", "engine", "report", "nope"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "E_NOT_FOUND" in missing.stderr


async def test_report_for_an_unreachable_host_says_tcp_failed(tmp_path: Path) -> None:
    """A download to a port nobody listens on: the report's TCP check failed, measured now."""
    port = closed_port()
    async with open_engine(tmp_path / "state", fast(tmp_path, max_retries=0), disk=INLINE_DISK) as eng:
        op = await eng.submit(DownloadSpec(url=f"http://127.0.0.1:{port}/m.bin", dest="m.bin"))
        final = await eng.wait(op.id)
        doc = await live_operation_report(eng, op.id)
    assert final.error is not None and final.error.code == "E_NET_UNREACHABLE"
    net = doc["network"]
    assert net["host"] == "127.0.0.1" and net["port"] == port and net["limit_s"] == 3.0
    assert net["dns"]["ok"] and not net["tcp"]["ok"] and "connect failed" in net["tcp"]["error"]
    assert net["ok"] is False and net["tcp"]["elapsed_ms"] < 3000
    assert "TCP connect: FAILED" in report_text(doc)


async def test_network_check_of_a_name_that_does_not_resolve() -> None:
    """A host the resolver does not know: the DNS check failed, the TCP step is not tried, within the limit."""
    with trio.fail_after(10):
        result = await check_host("no-such-host.invalid", 443, limit_s=3.0)
    assert result["dns"]["ok"] is False and result["dns"]["error"]
    assert result["tcp"] == {"ok": False, "error": "not tried: the DNS lookup failed"}
    assert result["dns"]["elapsed_ms"] <= 3500


async def test_history_cli_reads_the_state_directory(state_dir: Path, scripted: Any) -> None:
    """`recovery history --json` without a server shows the persisted buckets; --hours is validated."""
    from engine.testing._scripted import ScriptedSpec

    async with open_engine(state_dir, Settings(initial_delay_s=0.01, jitter=0.0), kinds=[scripted], disk=INLINE_DISK) as eng:
        op = await eng.submit(ScriptedSpec(name="a", scope="hub", script=["fail:E_NET_TIMEOUT", "ok"]))
        await eng.wait(op.id)
    env = {**os.environ, "RECOVERY_STATE_DIR": str(state_dir)}
    out = subprocess.run([sys.executable, "-m", "engine", "history", "--hours", "3", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert len(data["buckets"]) == 3 and data["totals"]["failures_by_host"] == {"hub": 1}
    assert data["totals"]["attempts"] == 2 and data["totals"]["recoveries"] == 1
    text = subprocess.run([sys.executable, "-m", "engine", "history"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert text.returncode == 0 and "E_NET_TIMEOUT 1" in text.stdout and "hub 1" in text.stdout
    bad = subprocess.run([sys.executable, "-m", "engine", "history", "--hours", "0"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--hours" in bad.stderr


async def test_report_for_a_host_that_does_not_resolve_says_dns_failed(tmp_path: Path) -> None:
    """A download from a name no resolver knows: the report's DNS check failed (measured now), TCP not tried."""
    url = "http://no-such-host.invalid/m.bin?token=QUERYSECRET42"
    async with open_engine(tmp_path / "state", fast(tmp_path, max_retries=0), disk=INLINE_DISK) as eng:
        op = await eng.submit(DownloadSpec(url=url, dest="m.bin"))
        with trio.fail_after(60):
            final = await eng.wait(op.id)
            doc = await live_operation_report(eng, op.id)
    assert final.status in (Status.FAILED, Status.EXHAUSTED) and final.error is not None
    assert doc["summary"]["code"] == final.error.code
    net = doc["network"]
    assert net["checked"] and net["host"] == "no-such-host.invalid" and net["port"] == 80 and net["ok"] is False
    assert net["dns"]["ok"] is False and net["dns"]["error"] and net["dns"]["elapsed_ms"] <= 3500
    assert net["tcp"] == {"ok": False, "error": "not tried: the DNS lookup failed"}
    text = report_text(doc)
    assert "DNS: FAILED" in text and "TCP connect: FAILED: not tried" in text
    assert_no_secret(json.dumps(doc) + text)
