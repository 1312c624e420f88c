"""Following redirects ourselves, so credentials never travel to another host (SPEC 6, 6.1).

httpx drops ``Authorization`` across origins (but keeps it on an http ->
https upgrade) and drops every ``Cookie``, even on the same host; it knows
nothing of ``X-Api-Key``, ``X-HF-Token`` and the other headers the engine
treats as credentials. Here every hop is one request without
``follow_redirects``; the next request keeps the previous one's headers when
the origin (scheme, host and port) is the same, and drops every header
`is_credential_header` names when it is not, as curl does. Once dropped
they stay dropped for the rest of the chain. Only ``http`` and ``https``
targets are followed, at most `MAX_REDIRECTS` of them.
"""

from __future__ import annotations

import httpx

from .._errors import failure
from .._specs import is_credential_header
from ._names import redact_url

__all__ = ["MAX_REDIRECTS", "send_following_redirects"]

MAX_REDIRECTS = 10
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    scheme = url.scheme.lower()
    return scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(scheme)


def next_request(request: httpx.Request, response: httpx.Response) -> httpx.Request:
    """The GET that follows ``response``'s redirect, with credentials kept only on the same origin."""
    target = response.next_request.url if response.next_request is not None else None
    if target is None:
        raise failure("E_HTTP_CLIENT", f"HTTP {response.status_code} redirect without a usable Location")
    scheme = target.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise failure("E_INVALID_INPUT", f"the server redirected to a {scheme or '(no scheme)'}: URL; "
                                         "only http and https redirects are followed")
    headers = httpx.Headers(request.headers)
    if _origin(target) != _origin(request.url):
        for name in list(headers.keys()):
            if is_credential_header(name):
                del headers[name]
        headers["Host"] = target.netloc.decode("ascii")
    return httpx.Request("GET", target, headers=headers, extensions=request.extensions)


async def send_following_redirects(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """Send ``request`` (streaming) and follow up to `MAX_REDIRECTS` redirects; return the last answer."""
    first = request.url
    for _hop in range(MAX_REDIRECTS + 1):
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.InvalidURL:  # httpx builds the redirect's URL before returning the answer
            raise failure("E_INVALID_INPUT", "the server redirected to a URL that is not a valid http or "
                                             "https URL; only http and https redirects are followed") from None
        if not response.has_redirect_location:
            return response
        try:
            follow = next_request(request, response)
        finally:
            await response.aclose()
        request = follow
    raise failure("E_INVALID_INPUT", f"more than {MAX_REDIRECTS} redirects from {redact_url(str(first))}")
