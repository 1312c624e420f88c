"""A loopback server that answers like the Hugging Face hub or civitai (SPEC 6.3 tests).

Hub paths (``HF_ENDPOINT`` points at it):

- ``/<org>/<repo>/resolve/<rev>/<path>``: 302 to the CDN (a `FaultServer` on
  another loopback host) with a signed query, ``X-Linked-Size`` set; a gated
  repository answers 401 (no token) or 403 (a token without access) with
  ``X-Error-Code: GatedRepo``.
- ``/<org>/<repo>/blob/<rev>/<path>``: the model's web page (``text/html``).

civitai paths (``CIVITAI_ENDPOINT`` points at it): ``/api/download/models/<id>``
302s to the CDN file, whose answer carries Content-Disposition with the
file name; a model that needs sign-in redirects to ``/login?reason=download-auth``
(an HTML page) unless ``Authorization: Bearer <token>`` is right.

With ``default_size`` set, any repository path or civitai id not added
beforehand is served too (a file of that many bytes, named ``model-<id>``
for civitai), so a test can import real workflows without listing their
models. Every request's Authorization header is recorded in
``authorization_seen``. Start it with ``await nursery.start(hub.serve)`` or,
outside trio, ``with hub.run_in_thread()`` (the CDN runs on its own).
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse

import attrs
import trio

from ._faultcontent import Faults
from ._faultserver import FaultServer, _read_request, _send_simple
from ._thread import serve_in_thread

__all__ = ["HubServer"]

_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/(resolve|blob)/([^/]+)/(.+)$")
_CIVITAI = re.compile(r"^/api/download/models/(\d+)$")


@attrs.define(eq=False)
class HubServer:
    """The hub in front of ``cdn`` (a started `FaultServer`)."""

    cdn: FaultServer
    host: str = "127.0.0.1"
    gated: dict[str, str] = attrs.Factory(dict)  # repo -> the token that has access
    civitai_token: str | None = None  # sign-in required when set
    civitai_files: dict[str, tuple[str, int]] = attrs.Factory(dict)  # id -> (file name, size)
    authorization_seen: list[tuple[str, str | None]] = attrs.Factory(list)
    #: Serve unknown repository files and civitai ids with this size (None: 404).
    default_size: int | None = None
    _base_url: str | None = None
    _sizes: dict[str, int] = attrs.Factory(dict)

    @property
    def base_url(self) -> str:
        assert self._base_url is not None, "HubServer is not started"
        return self._base_url

    def add_model(self, repo: str, path: str, *, size: int, faults: Faults | None = None) -> str:
        """Serve ``repo``'s ``path`` (from the CDN); returns the CDN path."""
        cdn_path = f"/repos/{repo}/{path}"
        self.cdn.add_file(cdn_path, size=size, faults=faults)
        self._sizes[cdn_path] = size
        return cdn_path

    def add_civitai(self, model_id: str, name: str, *, size: int) -> str:
        cdn_path = f"/civitai/{model_id}"
        self.cdn.add_file(cdn_path, size=size, faults=Faults(content_disposition=f'attachment; filename="{name}"'))
        self.civitai_files[model_id] = (name, size)
        return cdn_path

    async def _listen(self) -> list[trio.SocketListener]:
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        self._base_url = f"http://{self.host}:{listeners[0].socket.getsockname()[1]}"
        return listeners

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await self._listen()
        task_status.started(self.base_url)
        await trio.serve_listeners(self._handle, listeners)

    def run_in_thread(self) -> contextlib.AbstractContextManager[str]:
        """Serve from a daemon thread running its own ``trio.run``; ``with`` yields the base URL.

        Leaving the block cancels the server and joins the thread; an error
        that stopped the server is raised there.
        """
        return serve_in_thread(self._listen, self._handle, lambda: self.base_url,
                               name="HubServer")

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            request = await _read_request(stream)
            if request is None:
                return
            auth = request.headers.get("authorization")
            self.authorization_seen.append((request.path, auth))
            method = request.method
            token = auth[7:] if auth and auth.startswith("Bearer ") else None
            m = _RESOLVE.match(request.path)
            if m:
                repo, mode, _rev, path = m.groups()
                if mode == "blob":
                    page = f"<!doctype html><html><body><h1>{path} · {repo}</h1></body></html>".encode()
                    await _send_simple(stream, 200, page, method=method, content_type="text/html; charset=utf-8")
                    return
                if repo in self.gated and token != self.gated[repo]:
                    status = 403 if token else 401
                    headers = [("X-Error-Code", "GatedRepo"),
                               ("X-Error-Message", f"Access to model {repo} is restricted; you must be "
                                                   "authenticated and have access to it.")]
                    await _send_simple(stream, status, b"gated\n", headers, method=method)
                    return
                cdn_path = f"/repos/{repo}/{path}"
                if cdn_path not in self._sizes:
                    if self.default_size is None:
                        await _send_simple(stream, 404, b"Entry not found\n", [("X-Error-Code", "EntryNotFound")],
                                           method=method)
                        return
                    self.add_model(repo, path, size=self.default_size)
                signed = urllib.parse.urlencode({"Expires": "1999999999", "Signature": "sig-abc",
                                                 "Key-Pair-Id": "K1"})
                await _send_simple(stream, 302, b"", [("Location", f"{self.cdn.base_url}{cdn_path}?{signed}"),
                                                      ("X-Linked-Size", str(self._sizes[cdn_path]))],
                                   method=method)
                return
            m = _CIVITAI.match(request.path)
            if m and m[1] not in self.civitai_files and self.default_size is not None:
                self.add_civitai(m[1], f"model-{m[1]}.safetensors", size=self.default_size)
            if m and m[1] in self.civitai_files:
                if self.civitai_token is not None and token != self.civitai_token:
                    where = f"{self.base_url}/login?returnUrl=%2Fmodels%2F{m[1]}&reason=download-auth"
                    await _send_simple(stream, 307, b"", [("Location", where)], method=method)
                    return
                await _send_simple(stream, 307, b"", [("Location", f"{self.cdn.base_url}/civitai/{m[1]}")],
                                   method=method)
                return
            if request.path == "/login":
                await _send_simple(stream, 200, b"<html>Sign in</html>", method=method,
                                   content_type="text/html")
                return
            await _send_simple(stream, 404, b"not found\n", method=method)
