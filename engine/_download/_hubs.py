"""Model hubs: Hugging Face and civitai rules, and credentials per host (SPEC 6.3).

What a download asks is decided here, from the environment at the moment of
each attempt (so a token set or changed later is used on the next attempt):

- `hub_url`: a Hugging Face ``/blob/<rev>/<path>`` link (the web page) is
  fetched as ``/resolve/<rev>/<path>`` (the file); ``HF_ENDPOINT`` replaces
  ``https://huggingface.co`` and ``CIVITAI_ENDPOINT`` replaces
  ``https://civitai.com`` (a company proxy or mirror; tests point them at
  loopback servers). The note returned says what was changed.
- `HostAuth`: the credential headers for the URL's own host only: the
  Hugging Face token (``HF_TOKEN``, else ``HUGGING_FACE_HUB_TOKEN``, else
  ``$HF_HOME/token``) for the hub host, ``CIVITAI_API_TOKEN`` for civitai's,
  and the ``credentials.toml`` headers of exactly that host. They are put on
  the first request only (an httpx ``Auth``); a redirect to another host
  (the CDN with its signed URL) never carries them. Headers the user gave
  in the spec win.
- `hub_failure`: a gated Hugging Face repository or a civitai sign-in
  answer becomes ``E_AUTH`` with a suggestion that names the page and the
  variable.
- `web_page_failure`: an HTML page where a model file was expected fails
  before a byte is written.

Credential values never leave this module except as request headers: no
message, log line or event carries them.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Generator
from pathlib import Path
from typing import Mapping

import attrs
import httpx

from .._errors import AttemptFailed, RefusedError, error
from ._credentials import CredentialStore
from ._names import url_scope, validate_headers

__all__ = ["HostAuth", "HubEnv", "hub_failure", "hub_url", "web_page_failure", "MODEL_SUFFIXES"]

HF_DEFAULT = "https://huggingface.co"
CIVITAI_DEFAULT = "https://civitai.com"
#: File names that are models: a web page for one of these is never saved.
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx", ".sft")
_HF_BLOB = re.compile(r"^(/(?:datasets/|spaces/)?[^/]+/[^/]+)/blob/(.+)$")
_HF_REPO = re.compile(r"^/((?:datasets/|spaces/)?[^/]+/[^/]+)/(?:resolve|blob)/")


@attrs.frozen(kw_only=True)
class HubEnv:
    """The hub settings of the environment (read per attempt by `HubEnv.current`)."""

    hf_endpoint: str = HF_DEFAULT
    hf_token: str | None = None
    hf_token_source: str | None = None
    civitai_endpoint: str = CIVITAI_DEFAULT
    civitai_token: str | None = None

    @classmethod
    def current(cls, environ: Mapping[str, str] | None = None) -> "HubEnv":
        env = os.environ if environ is None else environ
        token, source = _hf_token(env)
        civitai = (env.get("CIVITAI_API_TOKEN") or "").strip() or None
        return cls(hf_endpoint=_endpoint(env.get("HF_ENDPOINT"), HF_DEFAULT), hf_token=token,
                   hf_token_source=source,
                   civitai_endpoint=_endpoint(env.get("CIVITAI_ENDPOINT"), CIVITAI_DEFAULT),
                   civitai_token=civitai)

    @property
    def hf_host(self) -> str:
        return url_scope(self.hf_endpoint)

    @property
    def civitai_host(self) -> str:
        return url_scope(self.civitai_endpoint)

    def is_hf(self, url: str) -> bool:
        return url_scope(url) in (self.hf_host, "huggingface.co")

    def is_civitai(self, url: str) -> bool:
        return url_scope(url) in (self.civitai_host, "civitai.com", "www.civitai.com")


def _endpoint(value: str | None, default: str) -> str:
    value = (value or "").strip().rstrip("/")
    parts = urllib.parse.urlsplit(value) if value else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return default
    return value


def _hf_token(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = (env.get(name) or "").strip()
        if value:
            return value, name
    home = env.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    path = Path(home) / "token"
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None, None
    return (value, str(path)) if value else (None, None)


def _rebase(url: str, default: str, endpoint: str) -> str:
    """``url`` on ``endpoint`` when it is on ``default`` (https://huggingface.co, ...)."""
    if endpoint == default:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "https" or (parts.hostname or "").lower() not in (
            urllib.parse.urlsplit(default).hostname, "www." + (urllib.parse.urlsplit(default).hostname or "")):
        return url
    if parts.port not in (None, 443):
        return url
    base = urllib.parse.urlsplit(endpoint)
    prefix = base.path.rstrip("/")
    return urllib.parse.urlunsplit((base.scheme, base.netloc, prefix + parts.path, parts.query, parts.fragment))


def hub_url(url: str, env: HubEnv | None = None) -> tuple[str, str | None]:
    """``(URL to fetch, note)``: the hub rules applied; the note says what changed, or None."""
    env = env or HubEnv.current()
    fetched = _rebase(url, HF_DEFAULT, env.hf_endpoint)
    fetched = _rebase(fetched, CIVITAI_DEFAULT, env.civitai_endpoint)
    notes = []
    if fetched != url:
        notes.append("fetched through " + ("HF_ENDPOINT" if env.is_hf(fetched) else "CIVITAI_ENDPOINT"))
    if env.is_hf(fetched):
        parts = urllib.parse.urlsplit(fetched)
        m = _HF_BLOB.match(parts.path)
        if m:
            fetched = urllib.parse.urlunsplit(parts._replace(path=f"{m[1]}/resolve/{m[2]}"))
            notes.insert(0, "a Hugging Face /blob/ link (the web page) is fetched as /resolve/ (the file)")
    return fetched, "; ".join(notes) or None


@attrs.define(eq=False)
class HostAuth(httpx.Auth):
    """Credential headers for one host, put on the first request only if it goes there.

    httpx runs an ``Auth`` flow once per ``send``, before redirects; the
    redirect hops are built by httpx from the first request, and a hop to
    another origin loses ``Authorization``. So the hub's token reaches the
    hub and never the CDN it redirects to.
    """

    host: str
    headers: dict[str, str]

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if url_scope(str(request.url)) == self.host:
            for name, value in self.headers.items():
                if name not in request.headers:
                    request.headers[name] = value
        yield request

    @property
    def names(self) -> list[str]:
        return sorted(self.headers)


def host_auth(url: str, env: HubEnv, store: CredentialStore | None) -> HostAuth:
    """The credential headers for ``url``'s host (the hub tokens, then credentials.toml)."""
    host = url_scope(url)
    headers: dict[str, str] = {}
    if store is not None:
        headers.update(store.headers_for(host))
    has_auth = any(k.lower() == "authorization" for k in headers)
    if not has_auth:
        if host == env.hf_host and env.hf_token:
            headers["Authorization"] = _bearer(env.hf_token, env.hf_token_source or "HF_TOKEN", host)
        elif host == env.civitai_host and env.civitai_token:
            headers["Authorization"] = _bearer(env.civitai_token, "CIVITAI_API_TOKEN", host)
    return HostAuth(host=host, headers=headers)


def _bearer(token: str, source: str, host: str) -> str:
    """``Bearer <token>``, checked like every header value before it is sent (SPEC 6.1).

    A token with a control character or a non-ASCII character in it (a paste
    accident) would make the HTTP library refuse the request with a message
    that quotes it: refused here instead, naming where it came from, never its value.
    """
    value = f"Bearer {token}"
    try:
        validate_headers({"Authorization": value})
    except RefusedError:
        raise AttemptFailed(error(
            "E_INVALID_INPUT", f"the token from {source} contains a control character or a character outside "
                               f"printable ASCII, so it was not sent to {host} (its value is not shown)",
            suggestion=f"Set {source} again to the token alone, exactly as your account's token page shows it, "
                       "and retry.")) from None
    return value


def _hf_repo_page(url: str, env: HubEnv) -> tuple[str | None, str | None]:
    parts = urllib.parse.urlsplit(url)
    m = _HF_REPO.match(parts.path)
    if not m:
        return None, None
    return m[1], f"{env.hf_endpoint}/{m[1]}"


def hub_failure(fetched: str, response: httpx.Response, env: HubEnv, *, sent_token: bool) -> AttemptFailed | None:
    """The hub's own meaning of an unwanted answer, or None to classify it as usual."""
    status, headers = response.status_code, response.headers
    final = str(response.url)
    if env.is_hf(fetched) and status in (401, 403):
        code = (headers.get("x-error-code") or "").strip()
        text = (headers.get("x-error-message") or "").lower()
        repo, page = _hf_repo_page(fetched, env)
        source = env.hf_token_source or "HF_TOKEN"
        if code == "GatedRepo" or "gated" in text:
            what = f"{repo} is a gated repository" if repo else "the repository is gated"
            if sent_token:
                suggestion = (f"The token from {source} has no access to {repo or 'this repository'}: "
                              f"open {page or env.hf_endpoint}, accept its licence with the account the "
                              "token belongs to, and retry.")
            else:
                suggestion = (f"Open {page or env.hf_endpoint}, accept its licence, then set HF_TOKEN to an "
                              "access token of that account (huggingface.co/settings/tokens) and retry.")
            return AttemptFailed(error("E_AUTH", f"HTTP {status} from the hub: {what}", suggestion=suggestion))
        suggestion = (f"The token from {source} was refused; check it, or that it may read "
                      f"{repo or 'this repository'}." if sent_token else
                      "Set HF_TOKEN to a Hugging Face access token (huggingface.co/settings/tokens) and retry.")
        return AttemptFailed(error("E_AUTH", f"HTTP {status} from the Hugging Face hub", suggestion=suggestion))
    if env.is_civitai(fetched):
        final_path = urllib.parse.urlsplit(final).path.lower()
        if status in (401, 403) or final_path.startswith("/login") or "reason=download-auth" in final.lower():
            why = ("redirected the download to its sign-in page" if status not in (401, 403)
                   else f"answered HTTP {status}")
            suggestion = ("CIVITAI_API_TOKEN was refused; check the key in your civitai account settings."
                          if sent_token else
                          "The creator requires sign-in: set CIVITAI_API_TOKEN to an API key from your "
                          "civitai account settings and retry.")
            return AttemptFailed(error("E_AUTH", f"civitai {why}: this model needs a signed-in account",
                                       suggestion=suggestion))
    return None


def web_page_failure(dest_name: str, response: httpx.Response) -> AttemptFailed | None:
    """``E_HTTP_CLIENT`` when a model file's response is an HTML page (SPEC 6.3), else None."""
    content_type = (response.headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type not in ("text/html", "application/xhtml+xml"):
        return None
    if not dest_name.lower().endswith(MODEL_SUFFIXES):
        return None
    return AttemptFailed(error(
        "E_HTTP_CLIENT", f"the server sent a web page, not the file (Content-Type {content_type}, "
                         f"for {dest_name}); nothing was written",
        suggestion="The link points at a web page: use the file's direct download link (on Hugging Face, "
                   "/resolve/ instead of /blob/), or sign in if the page asks for it."))
