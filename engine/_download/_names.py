"""Names, destinations and URLs for downloads: safe, validated, never leaking secrets.

A file name taken from a URL or a Content-Disposition header is reduced to a
safe base name; a destination is resolved against the download root; a URL
must be http(s) with a host; what is shown of a URL or its headers never
carries credentials (signed-URL query values, userinfo). The download kind
and the ComfyUI import share these.
"""

from __future__ import annotations

import email.message
import os
import re
import unicodedata
import urllib.parse
from pathlib import Path
from typing import Any

import attrs
import httpx

from .._errors import ErrorInfo, RefusedError

__all__ = [
    "FALLBACK_NAME",
    "dest_within_root",
    "name_from_content_disposition",
    "name_from_url",
    "redact_url",
    "resolve_dest",
    "safe_basename",
    "scrub_secrets",
    "url_scope",
    "validate_headers",
    "validate_sha256",
    "validate_url",
    "windows_name_problem",
]

#: The file name used when neither the URL nor the user gives one.
FALLBACK_NAME = "download"
_MAX_NAME_BYTES = 200  # leaves room for ".part" under the usual 255-byte limit
_SCHEMES = {"http": 80, "https": 443}
# Headers the download manages itself; a spec may not set them.
_MANAGED_HEADERS = frozenset({"range", "if-range"})
# Query keys whose values are credentials in signed URLs (S3, GCS, Azure SAS,
# CloudFront, Hugging Face, generic tokens).
_SECRET_QUERY_KEYS = frozenset({
    "token", "access_token", "auth", "authorization", "sig", "signature", "key", "api_key",
    "apikey", "api-key", "password", "passwd", "secret", "client_secret", "credential",
    "policy", "key-pair-id", "session", "sessionid", "code",
})
_SECRET_QUERY_WORDS = ("token", "secret", "signature", "password", "credential")
_SECRET_QUERY_PREFIXES = ("x-amz-", "x-goog-")
_WINDOWS_RESERVED = re.compile(r'[<>:"|?*]')
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"(?:[\x21-\x7e](?:[ \t]*[\x21-\x7e])*)?")
_SHA256 = re.compile(r"[0-9a-f]{64}")


# Device names Windows reserves in every folder, whatever the extension (``NUL.safetensors``).
_WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", "conin$", "conout$",
                              *(f"com{c}" for c in "123456789\u00b9\u00b2\u00b3"),
                              *(f"lpt{c}" for c in "123456789\u00b9\u00b2\u00b3")})


def _device_name(name: str) -> bool:
    return name.split(".", 1)[0].rstrip(" .").lower() in _WINDOWS_DEVICES


def windows_name_problem(name: str) -> str | None:
    """Why Windows would refuse (or misread) ``name`` as a file or folder name, or None.

    Reserved device names with any extension, ``<>:"|?*``, control
    characters, and a trailing dot or space.
    """
    if _device_name(name):
        return f"{name!r} is a device name Windows reserves (CON, PRN, AUX, NUL, COM1-9, LPT1-9)"
    if (bad := _WINDOWS_RESERVED.search(name)) is not None:
        return f"{name!r} contains {bad[0]!r}, which Windows does not allow in names"
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        return f"{name!r} contains a control character"
    if name.endswith((".", " ")):
        return f"{name!r} ends in a dot or a space, which Windows drops"
    return None


def safe_basename(name: str) -> str | None:
    """Reduce a server-supplied file name to a safe base name, or None if nothing is left.

    Keeps only the last path component (``/`` and ``\\`` both separate),
    drops control and format characters (bidi overrides too), replaces
    characters Windows refuses, strips leading dots (no ``..``, no hidden
    files) and trailing dots and spaces, and caps the length.
    """
    name = unicodedata.normalize("NFC", name)
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))
    name = _WINDOWS_RESERVED.sub("_", name)
    name = name.strip().lstrip(".").strip().rstrip(". ")
    if name and _device_name(name):
        name = "_" + name  # "_NUL.safetensors" is an ordinary file everywhere
    if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
        stem, dot, suffix = name.rpartition(".")
        if not dot or len(suffix.encode("utf-8")) > 20:
            stem, suffix = name, ""
        keep = _MAX_NAME_BYTES - len(suffix.encode("utf-8")) - (1 if suffix else 0)
        stem = stem.encode("utf-8")[:keep].decode("utf-8", "ignore").rstrip(". ")
        name = f"{stem}.{suffix}" if suffix else stem
    return name or None


def name_from_url(url: str) -> str | None:
    """The safe base name of the URL path's last segment, or None.

    A civitai-style ``/api/download/models/<number>`` has no name in its URL
    (the number is a version id): None, so Content-Disposition names the file.
    """
    path = urllib.parse.urlsplit(url).path
    last = urllib.parse.unquote(path.rsplit("/", 1)[-1])
    if last.isdigit() and "/api/download/" in path:
        return None
    return safe_basename(last)


def name_from_content_disposition(value: str | None) -> str | None:
    """The safe base name a ``Content-Disposition`` header suggests (``filename*`` wins)."""
    if not value:
        return None
    msg = email.message.Message()
    msg["content-disposition"] = value
    try:
        raw = msg.get_filename()
    except (ValueError, LookupError):
        return None
    return safe_basename(raw) if raw else None


def dest_within_root(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """True when ``path`` (symlinks resolved; relative to ``root``) lies strictly inside ``root``."""
    root_path = Path(root).resolve()
    target = Path(path)
    if not target.is_absolute():
        target = root_path / target
    target = target.resolve()
    return target != root_path and target.is_relative_to(root_path)


def _secret_query_key(key: str) -> bool:
    low = urllib.parse.unquote_plus(key).lower()
    return (low in _SECRET_QUERY_KEYS or low.startswith(_SECRET_QUERY_PREFIXES)
            or any(word in low for word in _SECRET_QUERY_WORDS))


def redact_url(url: str) -> str:
    """``url`` safe to show: userinfo dropped, credential-like query values replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    netloc = parts.netloc.rpartition("@")[2]
    pairs = []
    for pair in parts.query.split("&") if parts.query else []:
        key, sep, _value = pair.partition("=")
        pairs.append(f"{key}=***" if sep and _secret_query_key(key) else pair)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "&".join(pairs), parts.fragment))


def _refuse(field: str, message: str) -> RefusedError:
    return RefusedError("E_INVALID_INPUT", message, field=field)


def validate_url(url: Any) -> str:
    if not isinstance(url, str) or not url:
        raise _refuse("url", "the URL must be a non-empty string")
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in url):
        raise _refuse("url", "the URL contains whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        raise _refuse("url", f"not a valid URL: {redact_url(url)}") from None
    if parts.scheme.lower() not in _SCHEMES:
        scheme = parts.scheme or "(none)"
        raise _refuse("url", f"only http and https URLs are accepted, not {scheme}")
    if not parts.hostname:
        raise _refuse("url", "the URL has no host")
    return url


def validate_sha256(sha: Any) -> str | None:
    if sha is None:
        return None
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha.strip().lower()):
        raise _refuse("sha256", "sha256 must be 64 hexadecimal characters")
    return sha.strip().lower()


def validate_headers(headers: Any) -> dict[str, str]:
    """Check header names and values before any request (SPEC 6.1); return them cleaned.

    Spaces and tabs around a value are not part of it in HTTP and are dropped
    (a paste accident); any other control character, or a character outside
    printable ASCII, refuses the header by name. A value is never echoed: it
    may be a credential.
    """
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise _refuse("headers", "headers must be a mapping of names to values")
    cleaned: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise _refuse("headers", "header names and values must be strings")
        if not _HEADER_NAME.fullmatch(name):
            shown = name if name.isprintable() and len(name) <= 64 else "(unprintable)"
            raise _refuse("headers", f"the header name {shown!r} is not a valid HTTP header name")
        value = value.strip(" \t")
        if not _HEADER_VALUE.fullmatch(value):
            raise _refuse("headers", f"the value of the {name} header contains a control character or a "
                                     "character outside printable ASCII (its value is not shown)")
        if name.lower() in _MANAGED_HEADERS:
            raise _refuse("headers", f"the {name} header is managed by the download itself")
        cleaned[name] = value
    return cleaned


def scrub_secrets(info: ErrorInfo, spec: Any) -> ErrorInfo:
    """``info`` with every header value and URL userinfo of ``spec`` masked in its message.

    The message of a library exception may quote what it refused; this is
    the last guard before a message reaches events, logs or the API.
    """
    secrets: list[str] = []
    for value in (getattr(spec, "headers", None) or {}).values():
        value = value.strip()
        secrets.append(value)
        secrets.extend(part for part in value.split() if len(part) >= 4)
    for url in [getattr(spec, "url", None) or "", *(getattr(spec, "mirrors", None) or [])]:
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError:
            continue
        for raw in (parts.username, parts.password):
            if raw:
                secrets += [raw, urllib.parse.unquote(raw)]
    message = info.message
    for secret in sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True):
        for form in {secret, repr(secret)[1:-1], secret.encode("unicode_escape").decode("ascii")}:
            message = message.replace(form, "***")
    return info if message == info.message else attrs.evolve(info, message=message)


def resolve_dest(dest: Any, url: str, root: Path) -> Path:
    name = name_from_url(url) or FALLBACK_NAME
    if dest is None:
        return root / name
    if not isinstance(dest, (str, os.PathLike)):
        raise _refuse("dest", "the destination must be a path")
    raw = os.fspath(dest)
    if not isinstance(raw, str) or not raw.strip() or "\x00" in raw:
        raise _refuse("dest", "the destination must be a non-empty path")
    path = Path(raw)
    if not path.is_absolute():
        path = root / path
    if raw.endswith(("/", os.sep)) or (os.altsep and raw.endswith(os.altsep)) or path.is_dir():
        path = path / name
    path = Path(os.path.abspath(path))
    if path.name in ("", ".", "..") or path.is_dir():
        raise _refuse("dest", f"the destination {path} is not a file path")
    for parent in path.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise _refuse("dest", f"{parent} is not a directory")
            break
    return path


def url_scope(url: str) -> str:
    """A URL's breaker scope: its host, lowercase, with the port when not the scheme's default."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None or port == _SCHEMES.get(parts.scheme.lower()):
        return host
    return f"{host}:{port}"
