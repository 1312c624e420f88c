"""The Download Dashboard in a real headless Chromium (SPEC section 15).

Drives Debian's ``chromium`` with Playwright's Python package (no browser
download: ``executable_path``). Skipped only when no chromium binary exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from engine.testing import FaultServer, Faults

from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = os.environ.get("RECOVERY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The committed screenshot is refreshed only on request, so a test run leaves the tree clean:
# RECOVERY_UPDATE_SCREENSHOT=1 pytest tests/server/test_browser.py
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
MiB = 1024 * 1024

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
            page = browser.new_page(viewport={"width": 1440, "height": 1050})
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            # Refused requests (the 422 the test provokes) are logged by the browser itself; script
            # errors are not.
            page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
                    if msg.type == "error" and "Failed to load resource" not in msg.text else None)
            page.set_default_timeout(10_000)
            yield page, problems
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def submit(server: Any, url: str, dest: str) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/api/operations", json={"kind": "download", "url": url, "dest": dest},
                          headers={"Authorization": f"Bearer {server.token}"}, timeout=5)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def progress_of(page: Page, row_selector: str) -> float:
    return float(page.locator(f"{row_selector} .bar").get_attribute("aria-valuenow") or 0)


def test_dashboard_drives_a_recovering_download(tmp_path, faults, browser_page, start_serve, stop_serve):
    """Open the token link, add a download that drops once, watch it recover, use the controls and settings."""
    page, problems = browser_page
    server = start_serve(tmp_path / "state", tmp_path / "models-root", "--set", "initial_delay_s=20",
                         "--set", "max_delay_s=20", "--set", "jitter=0")
    try:
        # Some history for the table (and the screenshot): one finished, one failed download.
        done = submit(server, faults.url("/files/ae.safetensors", size=320 * 1024), "vae/ae.safetensors")
        missing = submit(server, faults.url("/files/clip_l.safetensors", size=1000, faults=Faults(status=404)),
                         "clip/clip_l.safetensors")

        page.goto(server.link)
        assert page.url == f"{server.url}/"  # the token link redirected and left the token out of the URL
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        expect(page.locator(f'tr[data-op-id="{done["id"]}"]')).to_have_attribute("data-status", "success")
        expect(page.locator(f'tr[data-op-id="{missing["id"]}"]')).to_have_attribute("data-status", "failed")
        expect(page.locator(f'tr[data-op-id="{missing["id"]}"] .error-message')).to_contain_text("E_HTTP_CLIENT")
        expect(page.locator(f'tr[data-op-id="{missing["id"]}"] .suggestion')).not_to_be_empty()

        # Add a slow, rate-limited download that drops once.
        url = faults.url("/files/flux1-dev.safetensors", size=4 * MiB,
                         faults=Faults(rate_bps=1.5 * MiB, drop_after=2 * MiB, drop_times=1))
        page.fill("#add-url", url)
        page.fill("#add-dest", "checkpoints/flux1-dev.safetensors")
        page.click("#add-submit")
        row_locator = page.locator('tr[data-op-id]:has-text("flux1-dev.safetensors")')
        expect(row_locator).to_have_count(1)
        op_id = row_locator.get_attribute("data-op-id")
        row = f'tr[data-op-id="{op_id}"]'

        # The progress bar advances while it runs, with its rate.
        expect(page.locator(row)).to_have_attribute("data-status", "in_progress")
        expect(page.locator(f"{row} .rate")).to_contain_text("/s")
        page.wait_for_function(
            "sel => Number(document.querySelector(sel + ' .bar').getAttribute('aria-valuenow')) > 3", arg=row)
        first = progress_of(page, row)
        page.wait_for_function(
            "([sel, v]) => Number(document.querySelector(sel + ' .bar').getAttribute('aria-valuenow')) > v",
            arg=[row, first])

        # The drop: recovering, Attempt 1/5, a live countdown, the error and its suggestion.
        expect(page.locator(row)).to_have_attribute("data-status", "recovering")
        expect(page.locator(f"{row} .badge")).to_have_text("Recovering")
        expect(page.locator(f"{row} .attempt")).to_have_text("Attempt 1/5")
        countdown = page.locator(f"{row} .countdown")
        expect(countdown).to_have_text(re.compile(r"Next try in \d+(\.\d)?s"))
        seconds = float(re.findall(r"[\d.]+", countdown.inner_text())[0])
        page.wait_for_function("([sel, s]) => { const t = document.querySelector(sel + ' .countdown').textContent;"
                               " const m = t.match(/[\\d.]+/); return m && Number(m[0]) < s; }",
                               arg=[row, seconds])
        expect(page.locator(f"{row} .error-message")).to_contain_text("E_NET_INTERRUPTED")
        expect(page.locator(f"{row} .suggestion")).to_contain_text("connection")
        actions = page.locator(f"{row} button[data-action]")
        expect(actions).to_have_count(5)
        assert sorted(actions.evaluate_all("bs => bs.map(b => b.dataset.action)")) == \
            ["cancel", "cancel-recovery", "force-retry", "pause", "retry"]

        # A bad setting is refused at its field.
        page.fill('input[name="backoff_factor"]', "0.5")
        page.click("#settings-save")
        expect(page.locator('.field-error[data-for="backoff_factor"]')).to_contain_text("at least 1")
        expect(page.locator('input[name="backoff_factor"]')).to_have_attribute("aria-invalid", "true")
        expect(page.locator("#breakers-body tr")).to_have_count(1)

        shot = page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        assert shot.startswith(b"\x89PNG")
        if os.environ.get("RECOVERY_UPDATE_SCREENSHOT"):
            DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
            DOCS_SCREENSHOT.write_bytes(shot)

        # Retry now skips the 20 s wait.
        page.click(f"{row} button[data-action=retry]")
        expect(page.locator(row)).to_have_attribute("data-status", "in_progress")
        expect(page.locator(f"{row} .countdown")).to_have_text("")

        page.click(f"{row} button[data-action=pause]")
        expect(page.locator(row)).to_have_attribute("data-status", "paused")
        expect(page.locator(f"{row} .badge")).to_have_text("Paused")
        expect(page.locator(f"{row} button[data-action]")).to_have_count(2)  # resume, cancel
        page.click(f"{row} button[data-action=resume]")
        expect(page.locator(row)).to_have_attribute("data-status", re.compile("pending|in_progress|success"))

        # A good setting is saved (and persisted by the server).
        page.fill('input[name="backoff_factor"]', "3")
        page.fill('input[name="max_retries"]', "7")
        page.click("#settings-save")
        expect(page.locator("#settings-result")).to_have_text("Saved.")
        expect(page.locator('.field-error[data-for="backoff_factor"]')).to_have_text("")
        saved = json.loads((tmp_path / "state" / "settings.json").read_text())
        assert saved["max_retries"] == 7 and saved["backoff_factor"] == 3.0

        expect(page.locator(row)).to_have_attribute("data-status", "success", timeout=15_000)
        expect(page.locator('[data-stat="success_operations"] .value')).to_have_text("2")
        expect(page.locator('[data-stat="recovered_operations"] .value')).to_have_text("1")
    finally:
        stop_serve(server)
    assert problems == []


def test_dashboard_reconnects_after_a_server_restart(tmp_path, browser_page, start_serve, stop_serve):
    """When the server restarts on the same port, the page reconnects by itself and shows live data."""
    page, problems = browser_page
    port = str(free_port())
    server = start_serve(tmp_path / "state", tmp_path / "root", "--port", port)
    try:
        page.goto(server.link)
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    finally:
        stop_serve(server)
    expect(page.locator("#connection")).to_have_attribute("data-state", re.compile("reconnecting|connecting"))
    server = start_serve(tmp_path / "state", tmp_path / "root", "--port", port)
    try:
        expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=15_000)
        page.fill('input[name="history_limit"]', "500")  # the cookie still works after the restart
        page.click("#settings-save")
        expect(page.locator("#settings-result")).to_have_text("Saved.")
    finally:
        stop_serve(server)
    assert [p for p in problems if "WebSocket" not in p] == []


def test_settings_typed_but_not_saved_survive_a_reload(tmp_path, browser_page, start_serve, stop_serve):
    """Another client's change reloads the form: its field moves, the value the user is typing stays theirs."""
    page, problems = browser_page
    server = start_serve(tmp_path / "state", tmp_path / "root")
    try:
        page.goto(server.link)
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        expect(page.locator('input[name="history_limit"]')).to_have_value("1000")
        page.fill('input[name="history_limit"]', "500")
        page.locator('input[name="history_limit"]').blur()  # typed, then looked elsewhere: still unsaved
        response = httpx.put(f"{server.url}/api/settings", json={"max_retries": 7},
                             headers={"Authorization": f"Bearer {server.token}"}, timeout=5)
        assert response.status_code == 200, response.text
        expect(page.locator('input[name="max_retries"]')).to_have_value("7")
        expect(page.locator('input[name="history_limit"]')).to_have_value("500")
        page.click("#settings-save")
        expect(page.locator("#settings-result")).to_have_text("Saved.")
        saved = httpx.get(f"{server.url}/api/settings", headers={"Authorization": f"Bearer {server.token}"},
                          timeout=5).json()
        assert (saved["history_limit"], saved["max_retries"]) == (500, 7)
    finally:
        stop_serve(server)
    assert problems == []


DOCS_RECOVERING = DOCS_SCREENSHOT.with_name("dashboard-recovering.png")
DOCS_RECOVERED = DOCS_SCREENSHOT.with_name("dashboard-recovered.png")


def test_dashboard_shows_a_recovered_download_as_flowing(tmp_path, faults, browser_page, start_serve, stop_serve):
    """After the retry transfers, the row is In progress with Attempt 1/5 and the old failure quiet, no live error."""
    page, problems = browser_page
    server = start_serve(tmp_path / "state", tmp_path / "models-root", "--set", "initial_delay_s=600",
                         "--set", "max_delay_s=600", "--set", "jitter=0")
    try:
        done = submit(server, faults.url("/files/clip_l.safetensors", size=256 * 1024), "clip/clip_l.safetensors")
        url = faults.url("/files/flux1-schnell.safetensors", size=12 * MiB,
                         faults=Faults(rate_bps=MiB, drop_after=MiB, drop_times=1))
        op = submit(server, url, "checkpoints/flux1-schnell.safetensors")
        row = f'tr[data-op-id="{op["id"]}"]'
        page.goto(server.link)
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        expect(page.locator(f'tr[data-op-id="{done["id"]}"]')).to_have_attribute("data-status", "success")

        # Each row says where its file goes.
        dest = str(server.root / "checkpoints" / "flux1-schnell.safetensors")
        expect(page.locator(f"{row} .dest")).to_have_text(f"→ {dest}")

        # The drop: recovering, with the live error (600 s before the next automatic try).
        expect(page.locator(row)).to_have_attribute("data-status", "recovering")
        expect(page.locator(f"{row} .error-message")).to_contain_text("E_NET_INTERRUPTED")
        expect(page.locator(f"{row} .recovered-from")).to_have_text("")
        expect(page.locator(f"{row} .countdown")).to_contain_text("Next try in")
        shot = page.screenshot(full_page=True)
        if os.environ.get("RECOVERY_UPDATE_SCREENSHOT"):
            DOCS_RECOVERING.write_bytes(shot)

        # Retry now: the transfer flows again. Attempt 1/5 stays, the error is history, shown quietly.
        page.click(f"{row} button[data-action=retry]")
        expect(page.locator(row)).to_have_attribute("data-status", "in_progress")
        page.wait_for_function(
            "([sel, v]) => Number(document.querySelector(sel + ' .bar').getAttribute('aria-valuenow')) > v",
            arg=[row, progress_of(page, row) + 1])
        expect(page.locator(f"{row} .badge")).to_have_text("In progress")
        expect(page.locator(f"{row} .attempt")).to_have_text("Attempt 1/5")
        expect(page.locator(f"{row} .error-message")).to_have_text("")
        expect(page.locator(f"{row} .suggestion")).to_have_text("")
        expect(page.locator(f"{row} .countdown")).to_have_text("")
        expect(page.locator(f"{row} .recovered-from")).to_contain_text("recovered from E_NET_INTERRUPTED")
        expect(page.locator(f"{row} .rate")).to_contain_text("/s")
        expect(page.locator(f"{row} button[data-action=retry]")).to_have_count(0)  # nothing to retry
        quiet = page.locator(f"{row} .recovered-from").evaluate("n => getComputedStyle(n).color")
        alarm = page.locator(f"{row} .error-message").evaluate("n => getComputedStyle(n).color")
        assert quiet != alarm
        shot = page.screenshot(full_page=True)
        if os.environ.get("RECOVERY_UPDATE_SCREENSHOT"):
            DOCS_RECOVERED.write_bytes(shot)

        # What the page shows is what the API says.
        seen = httpx.get(f"{server.url}/api/operations/{op['id']}",
                         headers={"Authorization": f"Bearer {server.token}"}, timeout=5).json()
        assert seen["status"] in ("in_progress", "success") and seen["error"] is None
        assert seen["last_error"]["code"] == "E_NET_INTERRUPTED" and seen["attempt"] == 1
    finally:
        stop_serve(server)
    # Disconnected: the controls wait for the connection to come back.
    expect(page.locator("#connection")).to_have_attribute("data-state", re.compile("reconnecting|connecting"))
    buttons = page.locator("#ops-body button[data-action]")
    assert buttons.count() > 0
    assert all(buttons.nth(i).is_disabled() for i in range(buttons.count()))
    expect(page.locator("#add-submit")).to_be_disabled()
    assert [p for p in problems if "WebSocket" not in p and "ERR_CONNECTION_REFUSED" not in p] == []


def test_dashboard_says_stalled_when_nothing_arrives(tmp_path, faults, browser_page, start_serve, stop_serve):
    """A transfer that stops sending shows "stalled" and no ETA, not the rate it had before."""
    page, problems = browser_page
    server = start_serve(tmp_path / "state", tmp_path / "root", "--set", "stall_timeout_s=600")
    try:
        url = faults.url("/files/stall.bin", size=8 * MiB,
                         faults=Faults(rate_bps=MiB, stall_after=MiB, stall_s=600, stall_times=1))
        op = submit(server, url, "stall.bin")
        row = f'tr[data-op-id="{op["id"]}"]'
        page.goto(server.link)
        expect(page.locator(f"{row} .rate")).to_contain_text("/s")  # flowing
        expect(page.locator(f"{row} .rate-value")).to_have_text("stalled", timeout=30_000)
        expect(page.locator(f"{row} .eta")).to_have_text("–")
        expect(page.locator(row)).to_have_attribute("data-status", "in_progress")
    finally:
        stop_serve(server)
    assert [p for p in problems if "WebSocket" not in p and "ERR_CONNECTION_REFUSED" not in p] == []


async def test_dashboard_shows_the_connections_a_progress_event_carries(tmp_path):
    """A progress event with ``connections`` (a segmented download's) shows "4 connections" in the row."""
    from functools import partial

    import attrs
    import trio

    from engine import Settings, open_engine
    from engine._server import serve_control
    from engine.testing._scripted import ScriptedKind, ScriptedSpec

    @attrs.define(eq=False)
    class FourConnections(ScriptedKind):
        """``conns:N``: progress reported the way a segmented download reports it, until cancelled."""

        async def _act(self, ctx: Any, spec: Any, action: str) -> None:
            if action.startswith("conns:"):
                done = 0
                while True:  # a transfer that goes on, as progress does
                    done += 1000
                    ctx.received(1000)
                    ctx.made_durable(1000)
                    ctx.progress(done, spec.size, connections=int(action.split(":")[1]))
                    await ctx.checkpoint()
                    await trio.sleep(0.2)
            else:
                await super()._act(ctx, spec, action)

    def drive(url: str, token: str, op_id: str) -> None:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            try:
                page = browser.new_page()
                page.set_default_timeout(30_000)
                page.goto(f"{url}/?token={token}")
                row = f'tr[data-op-id="{op_id}"]'
                expect(page.locator(row)).to_have_attribute("data-status", "in_progress")
                expect(page.locator(f"{row} .connections")).to_have_text("4 connections")
            finally:
                browser.close()

    root = tmp_path / "root"
    root.mkdir()
    async with open_engine(tmp_path / "state", Settings(download_root=str(root)), kinds=[FourConnections()]) as eng:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_control, eng, port=0))
            token = (eng.state_dir / "token").read_text().strip()
            op = await eng.submit(ScriptedSpec(name="segmented", script=["conns:4"], size=10_000_000))
            await trio.to_thread.run_sync(drive, url, token, op.id)
            assert eng.get(op.id).connections == 4  # the API's view carries it too (snapshot, GET)
            nursery.cancel_scope.cancel()


def test_dashboard_form_refuses_then_overwrites_an_existing_file(tmp_path, faults, browser_page, start_serve,
                                                                 stop_serve):
    """The add form on a file already there: E_EXISTS at the destination field, the file untouched and
    nothing fetched; with "Replace a file already there" ticked, the download replaces it (SPEC 6.1, 15)."""
    import hashlib

    from engine.testing import content_sha256

    page, problems = browser_page
    root = tmp_path / "models-root"
    mine = root / "vae" / "ae.safetensors"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own vae")
    server = start_serve(tmp_path / "state", root)
    try:
        url = faults.url("/files/ae.safetensors", size=64 * 1024)
        page.goto(server.link)
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        page.fill("#add-url", url)
        page.fill("#add-dest", "vae/ae.safetensors")
        page.click("#add-submit")
        expect(page.locator('.field-error[data-for="dest"]')).to_contain_text("already exists")
        expect(page.locator("tr[data-op-id]")).to_have_count(0)
        assert mine.read_bytes() == b"the user's own vae" and faults.stats.requests == 0

        page.check("#add-overwrite")
        page.click("#add-submit")
        row = page.locator('tr[data-op-id]:has-text("ae.safetensors")')
        expect(row).to_have_count(1)
        expect(row).to_have_attribute("data-status", "success", timeout=15_000)
        assert hashlib.sha256(mine.read_bytes()).hexdigest() == content_sha256("/files/ae.safetensors", 64 * 1024)
    finally:
        stop_serve(server)
    assert problems == []
