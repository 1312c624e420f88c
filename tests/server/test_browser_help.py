"""Help when things go wrong, in a real headless Chromium (SPEC 10.1, 10.2, 15).

The history chart under the cards, the attempt timeline in an expandable row
and the "Report" button (copy as text, download as JSON), driven against a
real ``recovery serve`` and a loopback fault server. Skipped only when no
chromium binary exists. Every wait is on a selector or a condition.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from engine._history import History, summarize
from engine._store import SnapshotStore
from engine.testing import FaultServer, Faults

CHROMIUM = os.environ.get("RECOVERY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Refreshed only on request, so a test run leaves the tree clean:
# RECOVERY_UPDATE_SCREENSHOT=1 pytest tests/server/test_browser_help.py
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard-help.png"
MiB = 1024 * 1024
SECRETS = ("hunter2", "HEADERSECRET99")
# Generous: two cores shared by several test runs.
SETTLE_S = 60.0

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium binary at {CHROMIUM}; "
                                "install Debian's chromium package to run the dashboard in a browser")


@pytest.fixture
def faults() -> Iterator[FaultServer]:
    server = FaultServer()
    with server.run_in_thread():
        yield server


@pytest.fixture
def browser_page() -> Iterator[tuple[Page, list[str]]]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1050}, accept_downloads=True)
            page = context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
                    if msg.type == "error" and "Failed to load resource" not in msg.text else None)
            page.set_default_timeout(20_000)
            yield page, problems
        finally:
            browser.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def submit(server: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/api/operations", json={"kind": "download", **body},
                          headers={"Authorization": f"Bearer {server.token}"}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def history_api(server: Any, hours: int) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/api/recovery/history?hours={hours}",
                         headers={"Authorization": f"Bearer {server.token}"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def seed_earlier_hours(state_dir: Path) -> dict[str, int]:
    """Write a history of earlier hours the way the engine persists it; returns its failures by code."""
    history = History()
    now = time.time()
    earlier = [(20, "E_NET_TIMEOUT", 3, 900 * MiB), (14, "E_SERVER_OVERLOAD", 5, 2400 * MiB),
               (13, "E_NET_INTERRUPTED", 2, 3100 * MiB), (9, "E_NET_TIMEOUT", 1, 1200 * MiB),
               (4, "E_AUTH", 1, 300 * MiB), (3, "E_NET_INTERRUPTED", 4, 1800 * MiB)]
    for hours_ago, code, failures, received in earlier:
        at = now - hours_ago * 3600
        for _ in range(failures):
            history.attempt(now=at)
            history.failure(code, "huggingface.co", now=at)
        history.attempt(now=at)
        history.recovery(12.0, now=at)
        history.received(received, now=at)
    state_dir.mkdir(parents=True, exist_ok=True)
    SnapshotStore(state_dir).write_stats({"history": history.to_record()})
    return summarize(history.buckets(24))["failures_by_code"]  # type: ignore[no-any-return]


def chart_counts(page: Page) -> dict[str, int]:
    counts: dict[str, int] = page.evaluate("""() => {
        const out = {};
        for (const r of document.querySelectorAll('#history-chart rect.fail-bar'))
            out[r.dataset.code] = (out[r.dataset.code] || 0) + Number(r.dataset.count);
        return out; }""")
    return counts


def test_chart_timeline_and_report_after_a_scripted_mix(tmp_path, faults, browser_page, start_serve, stop_serve):
    """The chart draws failures by code and throughput live, a row expands to its attempts, Report downloads JSON."""
    page, problems = browser_page
    state = tmp_path / "state"
    seeded = seed_earlier_hours(state)
    server = start_serve(state, tmp_path / "root", "--set", "initial_delay_s=0.05", "--set", "max_delay_s=0.1",
                         "--set", "jitter=0", "--set", "max_retries=2", "--set", "breaker_failure_threshold=100")
    try:
        page.goto(server.link)
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        # The persisted earlier hours are drawn before anything runs.
        expect(page.locator("#history-chart")).to_have_attribute("data-drawn", "true")
        page.wait_for_function("n => Number(document.querySelector('#history-chart').dataset.failures) === n",
                               arg=sum(seeded.values()))
        expect(page.locator("#history-chart rect.fail-bar")).to_have_count(6)  # one per earlier hour
        assert chart_counts(page) == seeded

        # The scripted mix, with credentials in the URL and a header of one of them.
        host = faults.base_url.split("://", 1)[1]
        missing = submit(server, {"url": faults.url("/files/clip_l.safetensors", size=1000,
                                                    faults=Faults(status=404)), "dest": "clip/clip_l.safetensors"})
        overloaded = submit(server, {
            "url": faults.url("/files/flux1-dev.safetensors", size=1000,
                              faults=Faults(status=503)).replace("://", "://user:hunter2@", 1),
            "dest": "checkpoints/flux1-dev.safetensors", "headers": {"Authorization": "Bearer HEADERSECRET99"}})
        flaky = submit(server, {"url": faults.url("/files/ae.safetensors", size=2 * MiB,
                                                  faults=Faults(drop_after=MiB, drop_times=1)),
                                "dest": "vae/ae.safetensors"})
        gone = submit(server, {"url": f"http://127.0.0.1:{closed_port()}/t5xxl.safetensors",
                               "dest": "clip/t5xxl.safetensors"})
        assert server.wait_status(missing["id"], "failed", timeout=SETTLE_S)["error"]["code"] == "E_HTTP_CLIENT"
        assert server.wait_status(overloaded["id"], "exhausted", timeout=SETTLE_S)["retries_total"] == 2
        assert server.wait_status(flaky["id"], "success", timeout=SETTLE_S)["retries_total"] == 1
        assert server.wait_status(gone["id"], "exhausted", timeout=SETTLE_S)["error"]["code"] == "E_NET_UNREACHABLE"
        now = {"E_HTTP_CLIENT": 1, "E_SERVER_OVERLOAD": 3, "E_NET_INTERRUPTED": 1, "E_NET_UNREACHABLE": 3}
        expected = {code: seeded.get(code, 0) + now.get(code, 0) for code in {*seeded, *now}}
        totals = history_api(server, 24)["totals"]
        assert totals["failures_by_code"] == expected
        assert totals["failures_by_host"]["huggingface.co"] == sum(seeded.values())
        assert totals["failures_by_host"][host] == 5

        # The chart follows (stats events) to the exact counts, with a legend and the throughput line.
        page.wait_for_function("n => Number(document.querySelector('#history-chart').dataset.failures) === n",
                               arg=sum(expected.values()), timeout=SETTLE_S * 1000)
        assert chart_counts(page) == expected
        # Drawn to scale: every bar's height is its count times the same number of pixels.
        per_failure = page.evaluate("""() => Array.from(document.querySelectorAll('#history-chart rect.fail-bar'),
            r => r.getBoundingClientRect().height / Number(r.dataset.count))""")
        assert min(per_failure) > 5 and max(per_failure) - min(per_failure) < 0.5, per_failure
        for code, count in expected.items():
            expect(page.locator(f'#history-legend [data-code="{code}"]')).to_have_text(f"{code} {count}")
        assert page.locator("#history-chart polyline.throughput").count() == 1
        assert page.locator("#history-chart circle.throughput-point").count() >= 6
        expect(page.locator("#history-summary")).to_contain_text(f"{sum(expected.values())} failures")

        # Rows with something to report have the button; the recovered one does not.
        for op in (missing, overloaded, gone):
            expect(page.locator(f'tr[data-op-id="{op["id"]}"] button[data-help="report"]')).to_have_count(1)
        expect(page.locator(f'tr[data-op-id="{flaky["id"]}"]')).to_have_attribute("data-status", "success")
        expect(page.locator(f'tr[data-op-id="{flaky["id"]}"] button[data-help="report"]')).to_have_count(0)

        # The timeline rows expand: three attempts of the exhausted one, the drop and the success of the other.
        row = f'tr[data-op-id="{overloaded["id"]}"]'
        toggle = page.locator(f'{row} button[data-help="timeline"]')
        expect(toggle).to_have_text("▸ 3 attempts")
        toggle.click()
        expect(toggle).to_have_attribute("aria-expanded", "true")
        attempts = page.locator(f'tr[data-detail-for="{overloaded["id"]}"] tr.attempt-row')
        expect(attempts).to_have_count(3)
        expect(attempts.locator(".attempt-code")).to_have_text(["E_SERVER_OVERLOAD"] * 3)
        expect(attempts.locator("td:nth-child(2)")).to_have_text(["first start", "automatic retry",
                                                                   "automatic retry"])
        flaky_toggle = page.locator(f'tr[data-op-id="{flaky["id"]}"] button[data-help="timeline"]')
        flaky_toggle.click()
        flaky_rows = page.locator(f'tr[data-detail-for="{flaky["id"]}"] tr.attempt-row')
        expect(flaky_rows).to_have_count(2)
        expect(flaky_rows.locator(".outcome")).to_have_text(["failed", "success"])
        expect(flaky_rows.locator(".attempt-code")).to_have_text(["E_NET_INTERRUPTED", ""])

        # Report: shown, copied as text, downloaded as JSON that parses; no credential anywhere.
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
        page.click(f'{row} button[data-help="report"]')
        panel = page.locator(f'tr[data-detail-for="{overloaded["id"]}"] .report-panel')
        expect(panel).to_have_attribute("data-state", "ready", timeout=SETTLE_S * 1000)
        expect(panel.locator(".report-summary")).to_contain_text("E_SERVER_OVERLOAD · 2 retries")
        expect(panel.locator(".report-summary")).to_contain_text("reachable now")
        shown = panel.locator(".report-text").inner_text()
        assert "E_SERVER_OVERLOAD" in shown and "free space at" in shown
        panel.locator('button[data-help="copy-report"]').click()
        expect(panel.locator(".report-result")).to_have_text("Copied.")
        copied = page.evaluate("() => navigator.clipboard.readText()")
        assert copied.strip() == shown.strip()
        with page.expect_download() as info:
            panel.locator('button[data-help="download-report"]').click()
        download = info.value
        assert download.suggested_filename == f"recovery-report-{overloaded['id']}.json"
        raw = Path(download.path()).read_text()
        doc = json.loads(raw)
        assert doc["report"] == "operation" and doc["operation"]["id"] == overloaded["id"]
        assert doc["summary"]["code"] == "E_SERVER_OVERLOAD" and doc["summary"]["retries"] == 2
        assert [t["code"] for t in doc["timeline"]] == ["E_SERVER_OVERLOAD"] * 3
        assert doc["resources"]["destination"]["free_bytes"] > 0 and doc["settings"]["max_retries"] == 2
        for secret in SECRETS:
            assert secret not in raw and secret not in copied
        assert server.token not in raw

        # The unreachable host's report says the TCP check failed.
        page.click(f'tr[data-op-id="{gone["id"]}"] button[data-help="report"]')
        gone_panel = page.locator(f'tr[data-detail-for="{gone["id"]}"] .report-panel')
        expect(gone_panel).to_have_attribute("data-state", "ready", timeout=SETTLE_S * 1000)
        expect(gone_panel.locator(".report-summary")).to_contain_text("not reachable now: TCP connect failed")

        # The cards, the chart and the operations (the forms below are in docs/dashboard.png).
        ops_panel = page.locator("section.panel:has(#operations)").bounding_box()
        assert ops_panel is not None
        shot = page.screenshot(path=str(tmp_path / "dashboard-help.png"), full_page=True,
                               clip={"x": 0, "y": 0, "width": 1440, "height": ops_panel["y"] + ops_panel["height"] + 16})
        assert shot.startswith(b"\x89PNG")
        if os.environ.get("RECOVERY_UPDATE_SCREENSHOT"):
            DOCS_SCREENSHOT.write_bytes(shot)

        # A shorter period leaves out the earlier hours; a week has them all.
        page.click('.history-range button[data-hours="6"]')
        expect(page.locator("#history-chart")).to_have_attribute("data-hours", "6")
        six = summarize_api(server, 6)
        page.wait_for_function("n => Number(document.querySelector('#history-chart').dataset.failures) === n",
                               arg=sum(six.values()))
        assert chart_counts(page) == six and "E_NET_TIMEOUT" not in six
        page.click('.history-range button[data-hours="168"]')
        expect(page.locator("#history-chart")).to_have_attribute("data-hours", "168")
        page.wait_for_function("n => Number(document.querySelector('#history-chart').dataset.failures) === n",
                               arg=sum(expected.values()))
        assert chart_counts(page) == expected

        # Collapsing hides the attempts again.
        toggle.click()
        expect(page.locator(f'tr[data-detail-for="{overloaded["id"]}"]')).to_have_count(0)
        expect(toggle).to_have_attribute("aria-expanded", "false")
    finally:
        stop_serve(server)
    assert problems == []


def summarize_api(server: Any, hours: int) -> dict[str, int]:
    return history_api(server, hours)["totals"]["failures_by_code"]  # type: ignore[no-any-return]
