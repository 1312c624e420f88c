"""Reading the control channel's answers: one place for the commands that talk to a server.

Every error body is ``{"error": {"code", "message", "field"?}}`` (SPEC 14);
`answer` returns a success's JSON and raises `Refused` for anything else.
Used by the client commands (`_client`, blocking) and the joined commands
(`_join`, on trio). May import: httpx.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import httpx

__all__ = ["Refused", "answer", "op_path"]


class Refused(Exception):
    """The server answered, and said no: ``code``, ``message`` and the ``field`` it names."""

    def __init__(self, status: int, code: str, message: str, field: str | None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def answer(response: httpx.Response) -> Any:
    """The JSON of a success (None for an empty one); otherwise `Refused` with the server's record."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.is_success:
        return data
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        err = {"code": f"HTTP_{response.status_code}", "message": response.text[:200]}
    raise Refused(response.status_code, str(err.get("code")), str(err.get("message")), err.get("field"))


def op_path(op_id: str, action: str = "") -> str:
    """``/api/operations/<id>[/<action>]``, the id quoted whatever it holds."""
    path = f"/api/operations/{urllib.parse.quote(op_id, safe='')}"
    return f"{path}/{action}" if action else path
