"""The control channel's routes (SPEC section 14), on top of the engine's public API.

Every handler calls the `Engine` API and shows its records with their own
``to_dict``; a `RefusedError` becomes the HTTP status its code implies.
Authentication, Host, Origin and body limits are enforced before any route
runs (`._security.Gate`).
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from typing import Any, Awaitable, Callable, Sequence

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute

from .._breaker import BreakerState
from .._engine import Engine
from .._errors import RefusedError
from ._intake import spec_from_json
from ._metrics import CONTENT_TYPE, render_metrics
from ._report import help_routes
from ._security import cookie_name, error_body, token_matches
from ._ws import dumps, events_endpoint

__all__ = ["CONTROL_ACTIONS", "HTTP_STATUS", "build_app"]

log = logging.getLogger("engine.server")

#: URL action -> engine control name.
CONTROL_ACTIONS = {
    "pause": "pause",
    "resume": "resume",
    "cancel": "cancel",
    "retry": "retry_now",
    "force-retry": "force_retry",
    "cancel-recovery": "cancel_recovery",
}

#: RefusedError code -> HTTP status.
HTTP_STATUS = {
    "E_NOT_FOUND": 404,
    "E_INVALID_STATE": 409,
    "E_NOT_RETRYABLE": 409,
    "E_INVALID_INPUT": 422,
    "E_FORBIDDEN": 403,
    "E_EXISTS": 409,
    "E_IN_USE": 409,
}

_COOKIE_MAX_AGE_S = 30 * 24 * 3600
_SECURITY_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
_PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
             "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
_ASSETS = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}

_HELP_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Recovery engine</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 40em; margin: 4em auto; line-height: 1.5">
<h1>Recovery engine</h1>
<p id="help">This dashboard needs its access token. Open the link that
<code>recovery serve</code> printed when it started; it looks like
<code>http://127.0.0.1:PORT/?token=...</code>.</p>
<p>The token is kept in the file <code>token</code> in the engine's state directory.</p>
</body></html>
"""


def _json(data: Any, status: int = 200) -> Response:
    return Response(dumps(data), status_code=status, media_type="application/json",
                    headers=_SECURITY_HEADERS)


def _error(status: int, code: str, message: str, field: str | None = None) -> Response:
    return Response(error_body(code, message, field), status_code=status, media_type="application/json",
                    headers=_SECURITY_HEADERS)


def _refused(exc: RefusedError) -> Response:
    return _error(HTTP_STATUS.get(exc.code, 400), exc.code, exc.message, exc.field)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def _body_json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadJSON(f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise _BadJSON("the JSON body is nested too deeply to read") from None


class _BadJSON(Exception):
    pass


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def build_app(engine: Engine, *, token: str, allow_installs: bool = False,
              closing: trio.Event | None = None) -> Starlette:
    """The Starlette application for ``engine``; wrap it in `Gate` before serving.

    ``closing`` is set when the server starts shutting down (event streams close at once).
    """
    dashboard = _asset("dashboard.html")
    assets = {name: _asset(name) for name in _ASSETS}

    def handled(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except RefusedError as exc:
                return _refused(exc)
            except _BadJSON as exc:
                return _error(400, "E_INVALID_INPUT", str(exc))

        return endpoint

    async def index(request: Request) -> Response:
        port = request.scope["server"][1]
        given = request.query_params.get("token")
        if given is not None:
            if not token_matches(given, token):
                return HTMLResponse(_HELP_PAGE, status_code=401, headers=_SECURITY_HEADERS)
            response = RedirectResponse("/", status_code=303, headers=_SECURITY_HEADERS)
            response.headers.append(
                "set-cookie",
                f"{cookie_name(port)}={token}; Path=/; Max-Age={_COOKIE_MAX_AGE_S}; HttpOnly; SameSite=Strict",
            )
            return response
        if not request.scope.get("state", {}).get("authenticated"):
            return HTMLResponse(_HELP_PAGE, status_code=401, headers=_SECURITY_HEADERS)
        return HTMLResponse(dashboard, headers={**_SECURITY_HEADERS, "content-security-policy": _PAGE_CSP})

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            return _error(404, "E_NOT_FOUND", f"no such file {name!r}")
        return Response(assets[name], media_type=_ASSETS[name], headers=_SECURITY_HEADERS)

    @handled
    async def list_operations(request: Request) -> Response:
        return _json([op.to_dict() for op in engine.list()])

    @handled
    async def submit(request: Request) -> Response:
        spec = spec_from_json(engine, await _body_json(request), allow_installs=allow_installs)
        resource = engine.kinds.for_spec(spec).resource_key(spec)
        before = engine.find(resource) if resource is not None else None
        op = await engine.submit(spec)
        reused = before is not None and before.id == op.id
        return _json(op.to_dict(), 200 if reused else 201)

    @handled
    async def get_operation(request: Request) -> Response:
        return _json(engine.get(request.path_params["op_id"]).to_dict())

    @handled
    async def forget(request: Request) -> Response:
        await engine.forget(request.path_params["op_id"])
        return Response(status_code=204, headers=_SECURITY_HEADERS)

    @handled
    async def control(request: Request) -> Response:
        op_id, action = request.path_params["op_id"], request.path_params["action"]
        engine.get(op_id)  # an unknown id is 404 whatever the action
        name = CONTROL_ACTIONS.get(action)
        if name is None:
            return _error(404, "E_NOT_FOUND", f"no control {action!r}; expected one of: "
                          + ", ".join(CONTROL_ACTIONS))
        op = await engine.control(op_id, name)
        return _json(op.to_dict())

    @handled
    async def performance(request: Request) -> Response:
        return _json(engine.statistics().to_dict())

    @handled
    async def get_settings(request: Request) -> Response:
        # the root as resolved (null in settings.json means "the server's working directory"):
        # what the dashboard shows, and what a PUT may send back unchanged
        return _json({**engine.settings.to_dict(), "download_root": str(engine.settings.download_root_path)})

    @handled
    async def put_settings(request: Request) -> Response:
        changes = await _body_json(request)
        if not isinstance(changes, dict):
            raise RefusedError("E_INVALID_INPUT", "the body must be a JSON object of setting names and values")
        if "download_root" in changes and changes["download_root"] not in (
                engine.settings.download_root, str(engine.settings.download_root_path)):
            raise RefusedError("E_FORBIDDEN", "download_root cannot be changed over the control channel; "
                               "set it where the server starts (--set download_root=... or settings.json)",
                               field="download_root")
        settings = await engine.update_settings(**changes)
        return _json(settings.to_dict())

    @handled
    async def breakers(request: Request) -> Response:
        states: Sequence[BreakerState] = await engine.breakers()
        return _json([b.to_dict() for b in states])

    @handled
    async def metrics(request: Request) -> Response:
        states: Sequence[BreakerState] = await engine.breakers()
        text = render_metrics(engine.statistics(), engine.list(), states, engine.failure_totals())
        return Response(text, media_type=CONTENT_TYPE, headers=_SECURITY_HEADERS)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return _error(404, "E_NOT_FOUND", f"no such path {request.url.path!r}")
        if exc.status_code == 405:
            return _error(405, "E_INVALID_INPUT", f"method {request.method} is not allowed on {request.url.path}")
        return _error(exc.status_code, "E_INVALID_INPUT", str(exc.detail))

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("control channel: %s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "E_INTERNAL", f"internal error ({type(exc).__name__}); see the log")

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/static/{name}", asset, methods=["GET"]),
        Route("/api/operations", list_operations, methods=["GET"]),
        Route("/api/operations", submit, methods=["POST"]),
        Route("/api/operations/{op_id}", get_operation, methods=["GET"]),
        Route("/api/operations/{op_id}", forget, methods=["DELETE"]),
        Route("/api/operations/{op_id}/{action}", control, methods=["POST"]),
        *help_routes(engine),
        Route("/api/recovery/performance", performance, methods=["GET"]),
        Route("/api/settings", get_settings, methods=["GET"]),
        Route("/api/settings", put_settings, methods=["PUT"]),
        Route("/api/breakers", breakers, methods=["GET"]),
        WebSocketRoute("/api/events", events_endpoint(engine, closing)),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: internal_error})
