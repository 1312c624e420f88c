"""The control channel is secure by default (SPEC section 14), and logs are redacted (section 16)."""

from __future__ import annotations

import json
import logging
import stat
from typing import Any, Iterator

import pytest
from trio_websocket import ConnectionRejected, open_websocket_url

from engine._cli._logsetup import LOG_BACKUPS, LOG_MAX_BYTES, redact, setup_logging
from engine._server import load_or_create_token, read_server_info

MiB = 1024 * 1024


def _refused(response: Any, status: int, code: str, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert err["code"] == code and err["message"]
    if field is not None:
        assert err["field"] == field


async def test_no_token_is_401(api):
    """Every /api path, and /metrics, needs the token: without it 401 with the JSON error body."""
    async with api.anonymous() as anon:
        for path in ("/api/operations", "/api/settings", "/api/breakers", "/api/recovery/performance",
                     "/metrics", "/api/operations/x", "/static/dashboard.js", "/api/nothing"):
            _refused(await anon.get(path), 401, "E_AUTH")
        _refused(await anon.post("/api/operations", json={"kind": "download", "url": "http://a.example/"}),
                 401, "E_AUTH")


async def test_wrong_token_is_401(api):
    """A wrong bearer token or a wrong cookie is refused like a missing one."""
    async with api.anonymous(headers={"Authorization": "Bearer " + "x" * len(api.token)}) as anon:
        _refused(await anon.get("/api/operations"), 401, "E_AUTH")
    async with api.anonymous(headers={"Cookie": f"recovery_token_{api.port}=wrong"}) as anon:
        _refused(await anon.get("/api/operations"), 401, "E_AUTH")
    async with api.anonymous(headers={"Authorization": f"Basic {api.token}"}) as anon:
        _refused(await anon.get("/api/operations"), 401, "E_AUTH")


async def test_foreign_host_header_is_403(api):
    """A Host that is not loopback (DNS rebinding) or not on this port is refused, token or not."""
    for host in ("evil.example", f"evil.example:{api.port}", f"127.0.0.1:{api.port + 1}", "127.0.0.1"):
        _refused(await api.client.get("/api/operations", headers={"Host": host}), 403, "E_FORBIDDEN")
    for host in (f"localhost:{api.port}", f"127.0.0.1:{api.port}", f"[::1]:{api.port}", f"LOCALHOST:{api.port}"):
        assert (await api.client.get("/api/operations", headers={"Host": host})).status_code == 200, host


async def test_allow_host_accepts_that_name(serve):
    """--allow-host NAME adds that name (with the server's port) to the loopback names."""
    async with serve(allow_hosts=["launcher.lan"]) as api:
        ok = await api.client.get("/api/operations", headers={"Host": f"launcher.lan:{api.port}"})
        assert ok.status_code == 200
        _refused(await api.client.get("/api/operations", headers={"Host": f"other.lan:{api.port}"}),
                 403, "E_FORBIDDEN")


async def test_cross_site_origin_is_403_on_writes(api):
    """POST/PUT/DELETE with a foreign Origin, or Origin: null, are refused; the server's own is fine."""
    body = {"kind": "download", "url": "http://a.example/f.bin"}
    for origin in ("http://evil.example", "null", f"http://localhost:{api.port}", f"https://{api.host}"):
        headers = {"Origin": origin}
        _refused(await api.client.post("/api/operations", json=body, headers=headers), 403, "E_FORBIDDEN")
        _refused(await api.client.put("/api/settings", json={}, headers=headers), 403, "E_FORBIDDEN")
        _refused(await api.client.delete("/api/operations/x", headers=headers), 403, "E_FORBIDDEN")
    own = await api.client.put("/api/settings", json={}, headers={"Origin": f"http://{api.host}"})
    assert own.status_code == 200


async def test_cross_site_origin_is_403_on_the_websocket(api):
    """A WebSocket handshake from another origin, or Origin: null, is refused even with the token."""
    url = api.url.replace("http://", "ws://") + "/api/events"
    for origin in (b"http://evil.example", b"null"):
        headers = [(b"authorization", f"Bearer {api.token}".encode()), (b"origin", origin)]
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(url, extra_headers=headers):
                pass
        assert info.value.status_code == 403
    own = [(b"authorization", f"Bearer {api.token}".encode()), (b"origin", f"http://{api.host}".encode())]
    async with open_websocket_url(url, extra_headers=own) as ws:
        assert json.loads(await ws.get_message())["type"] == "snapshot"


async def test_oversized_body_is_413(api):
    """A 2 MiB body gets 413, with Content-Length and chunked (no length) alike; 1 MiB is still read."""
    _refused(await api.client.post("/api/operations", content=b"x" * (2 * MiB)), 413, "E_INVALID_INPUT")

    async def chunks() -> Any:
        for _ in range(32):
            yield b"y" * (64 * 1024)

    response = await api.client.post("/api/operations", content=chunks())
    assert "content-length" not in response.request.headers
    _refused(response, 413, "E_INVALID_INPUT")
    exactly = json.dumps({"kind": "download", "url": "x" * (MiB - 40)}).encode()
    assert len(exactly) <= MiB
    _refused(await api.client.post("/api/operations", content=exactly), 422, "E_INVALID_INPUT", "url")
    assert (await api.client.get("/api/operations")).status_code == 200  # still serving


async def test_malformed_json_is_400(api):
    """A body that is not JSON is 400; NaN is not JSON either."""
    _refused(await api.client.post("/api/operations", content=b'{"kind": "download",'), 400, "E_INVALID_INPUT")
    _refused(await api.client.put("/api/settings", content=b'{"jitter": NaN}'), 400, "E_INVALID_INPUT")
    _refused(await api.client.post("/api/operations", content=b""), 400, "E_INVALID_INPUT")


async def test_non_http_url_is_422(api):
    """file://, ftp:// and other schemes are refused naming the url field."""
    for url in ("file:///etc/passwd", "ftp://example.org/x", "javascript:alert(1)"):
        _refused(await api.client.post("/api/operations", json={"kind": "download", "url": url}),
                 422, "E_INVALID_INPUT", "url")


async def test_destination_outside_download_root_is_422(api):
    """dest '../../x', an absolute path elsewhere, or a symlink out of the root are refused (field dest)."""
    (api.root / "escape").symlink_to(api.root.parent)
    for dest in ("../../x", "/etc/cron.d/evil", str(api.root.parent / "x"), "escape/x", "a/../../x"):
        response = await api.client.post("/api/operations", json={
            "kind": "download", "url": "http://a.example/f.bin", "dest": dest})
        _refused(response, 422, "E_INVALID_INPUT", "dest")
    assert (await api.client.get("/api/operations")).json() == []


async def test_installs_need_allow_installs(api):
    """install and project bodies are 403 E_FORBIDDEN unless the server was started with --allow-installs."""
    _refused(await api.client.post("/api/operations", json={"kind": "install", "argv": ["touch", "/tmp/pwned"]}),
             403, "E_FORBIDDEN")
    _refused(await api.client.post("/api/operations", json={"kind": "project", "name": "p", "steps": []}),
             403, "E_FORBIDDEN")


async def test_token_file_is_private_and_kept(api, tmp_path):
    """The token file is 0600 with 32 random bytes, and the same token is used after a restart."""
    path = api.engine.state_dir / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(api.token) >= 43
    assert load_or_create_token(api.engine.state_dir) == api.token
    other = tmp_path / "other"
    other.mkdir()
    assert load_or_create_token(other) != api.token


async def test_server_json_written_private_and_removed(serve, tmp_path):
    """server.json says where the server is (0600) while it runs and is gone after it stops."""
    async with serve() as api:
        path = api.engine.state_dir / "server.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        info = read_server_info(api.engine.state_dir)
        assert info is not None and info["url"] == api.url and isinstance(info["pid"], int)
    assert not path.exists()


async def test_cookie_link_sets_httponly_samesite_strict(api):
    """GET /?token= sets an HttpOnly, SameSite=Strict cookie and redirects to /, which then serves the page."""
    async with api.anonymous() as anon:
        response = await anon.get(f"/?token={api.token}")
        assert response.status_code == 303 and response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        attributes = [part.strip().lower() for part in cookie.split(";")]
        assert "httponly" in attributes and "samesite=strict" in attributes
        assert "SameSite=Strict" in cookie
        assert cookie.startswith(f"recovery_token_{api.port}={api.token}")
        page = await anon.get("/")  # the client keeps the cookie
        assert page.status_code == 200 and 'id="ops-body"' in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert (await anon.get("/api/operations")).status_code == 200


async def test_dashboard_without_token_shows_only_help(api):
    """GET / without auth (or with a wrong token link) shows how to open the link, not the dashboard."""
    async with api.anonymous() as anon:
        for path in ("/", "/?token=wrong"):
            page = await anon.get(path)
            assert page.status_code == 401
            assert "recovery serve" in page.text and 'id="ops-body"' not in page.text
            assert "set-cookie" not in page.headers


async def test_token_never_in_responses(api):
    """The token does not appear in the dashboard page, its assets or API answers."""
    for path in ("/", "/static/dashboard.js", "/static/dashboard.css", "/api/settings", "/api/operations"):
        assert api.token not in (await api.client.get(path)).text, path


# --- logging (SPEC 16) -------------------------------------------------------------------------


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


def test_redact_masks_credentials():
    """Authorization/Cookie values, token=... pairs, URL userinfo and secret query values are masked."""
    text = redact("GET https://user:pw@hf.example/m.bin?token=T0K&X-Amz-Signature=S1G&rev=main "
                  "Authorization: Bearer B3ARER Cookie: sid=C00KIE api_key=K3Y")
    for secret in ("pw", "T0K", "S1G", "B3ARER", "C00KIE", "K3Y"):
        assert secret not in text
    assert "hf.example/m.bin" in text and "rev=main" in text


def test_setup_logging_writes_a_redacted_rotating_file(tmp_path, logging_restored):
    """setup_logging sends engine records to <state>/logs/recovery.log (0600, 5 x 10 MiB), redacted."""
    path = setup_logging(tmp_path / "state")
    assert path == tmp_path / "state" / "logs" / "recovery.log"
    log = logging.getLogger("engine.download")
    log.warning("op %s: retry 1/5 after %s (headers %s)", "op-1", "E_NET_TIMEOUT",
                {"Authorization": "Bearer SECRET-1"})
    log.error("fetching http://me:SECRET-2@host.example/f?access_token=SECRET-3 failed", exc_info=False)
    try:
        raise RuntimeError("token=SECRET-4")
    except RuntimeError:
        log.exception("attempt crashed")
    logging.getLogger("supervisors").warning("child restarted")
    for handler in logging.getLogger("engine").handlers:
        handler.flush()
    text = path.read_text()
    assert "op op-1: retry 1/5 after E_NET_TIMEOUT" in text and "child restarted" in text
    for secret in ("SECRET-1", "SECRET-2", "SECRET-3", "SECRET-4"):
        assert secret not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    handler = next(h for h in logging.getLogger("engine").handlers if hasattr(h, "maxBytes"))
    assert (handler.maxBytes, handler.backupCount) == (LOG_MAX_BYTES, LOG_BACKUPS) == (10 * MiB, 4)
    setup_logging(tmp_path / "state")  # again: replaces, never duplicates
    assert sum(hasattr(h, "maxBytes") for h in logging.getLogger("engine").handlers) == 1


async def test_serve_logs_to_the_state_dir(serve, tmp_path, logging_restored):
    """With logging set up, the control channel's start and its retries land in recovery.log."""
    from engine.testing._scripted import ScriptedSpec

    path = setup_logging(tmp_path / "state")
    async with serve() as api:
        op = await api.engine.submit(ScriptedSpec(name="flaky", script=["fail:E_NET_TIMEOUT", "ok"]))
        await api.wait_status(op.id, "success")
    text = path.read_text()
    assert f"control channel listening on {api.url}" in text
    assert f"op {op.id}: Attempt 1/5" in text and "E_NET_TIMEOUT" in text
