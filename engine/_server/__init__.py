"""The control channel (SPEC section 14) and the Download Dashboard (section 15).

`serve_control` serves an `Engine` over HTTP + WebSocket on hypercorn's trio
worker; everything it does goes through the engine's public API.

- ``_serve``: `serve_control`, ``server.json``
- ``_security``: token, cookie, Host, Origin and body-size gate
- ``_app``: the routes; ``_intake``: request bodies into specs
- ``_ws``: the event stream; ``_metrics``: Prometheus text
- ``dashboard.html`` / ``.js`` / ``.css``: the page, served as is (no build step)
"""

from ._security import load_or_create_token as load_or_create_token
from ._serve import SERVER_INFO as SERVER_INFO
from ._serve import is_loopback as is_loopback
from ._serve import read_server_info as read_server_info
from ._serve import serve_control as serve_control

__all__ = ["SERVER_INFO", "is_loopback", "load_or_create_token", "read_server_info", "serve_control"]
