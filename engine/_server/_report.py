"""Routes for help when things go wrong (SPEC 10.1, 10.2, 14).

``GET /api/operations/{id}/report`` (``?format=text`` for the plain text,
``?network=0`` to skip the network check), ``GET /api/report`` (the whole
engine) and ``GET /api/recovery/history?hours=N``. The documents come from
`engine._report` and `engine._history`, already redacted.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .._engine import Engine
from .._errors import RefusedError
from .._history import summarize
from .._report import live_engine_report, live_operation_report, report_text
from ._security import error_body
from ._ws import dumps

__all__ = ["help_routes"]

_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff"}


def _json(data: Any, *, filename: str | None = None) -> Response:
    headers = dict(_HEADERS)
    if filename:
        headers["content-disposition"] = f'inline; filename="{filename}"'
    return Response(dumps(data), media_type="application/json", headers=headers)


def _refused(status: int, exc: RefusedError) -> Response:
    return Response(error_body(exc.code, exc.message, exc.field), status_code=status,
                    media_type="application/json", headers=_HEADERS)


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "1").lower() not in ("0", "false", "no")


def help_routes(engine: Engine) -> list[Route]:
    """The report and history routes for ``engine``."""

    async def operation_report(request: Request) -> Response:
        op_id = request.path_params["op_id"]
        try:
            doc = await live_operation_report(engine, op_id, network=_flag(request, "network"))
        except RefusedError as exc:
            return _refused(404 if exc.code == "E_NOT_FOUND" else 400, exc)
        if request.query_params.get("format") == "text":
            return PlainTextResponse(report_text(doc), headers=_HEADERS)
        return _json(doc, filename=f"recovery-report-{op_id}.json")

    async def engine_report(request: Request) -> Response:
        doc = await live_engine_report(engine)
        if request.query_params.get("format") == "text":
            return PlainTextResponse(report_text(doc), headers=_HEADERS)
        return _json(doc)

    async def history(request: Request) -> Response:
        raw = request.query_params.get("hours", "24")
        try:
            hours = int(raw)
            if not 1 <= hours <= 720:
                raise ValueError
        except ValueError:
            return _refused(422, RefusedError("E_INVALID_INPUT", f"hours: must be a whole number from 1 to 720, "
                                              f"not {raw[:20]!r}", field="hours"))
        buckets = engine.history(hours)
        return _json({"hours": hours, "buckets": [b.to_dict() for b in buckets], "totals": summarize(buckets)})

    return [
        Route("/api/operations/{op_id}/report", operation_report, methods=["GET"]),
        Route("/api/report", engine_report, methods=["GET"]),
        Route("/api/recovery/history", history, methods=["GET"]),
    ]
