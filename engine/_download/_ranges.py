"""Range requests and their answers: the headers to send, the headers to believe (SPEC 6, 6.2).

Shared by the single-connection transfer (`_kind`) and the segmented one
(`_multi`), so both read ``Content-Range`` and validators the same way.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import httpx

__all__ = ["accepts_ranges", "content_length", "content_range", "if_range", "same_version", "unsatisfied_total"]

_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", re.IGNORECASE)
_UNSATISFIED = re.compile(r"\s*bytes\s+\*/(\d+)\s*", re.IGNORECASE)


def content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``(start, end_inclusive, total or None)`` of a 206's Content-Range, None if unusable."""
    m = _CONTENT_RANGE.fullmatch(value or "")
    if m is None:
        return None
    start, end = int(m[1]), int(m[2])
    total = None if m[3] == "*" else int(m[3])
    if end < start or (total is not None and end >= total):
        return None
    return start, end, total


def unsatisfied_total(value: str | None) -> int | None:
    m = _UNSATISFIED.fullmatch(value or "")
    return int(m[1]) if m else None


def content_length(headers: httpx.Headers) -> int | None:
    try:
        value = int(headers.get("content-length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def accepts_ranges(headers: httpx.Headers) -> bool:
    """Whether the server says it serves byte ranges (``Accept-Ranges: bytes``)."""
    return any(token.strip().lower() == "bytes" for token in headers.get("accept-ranges", "").split(","))


def if_range(state: Mapping[str, Any]) -> str | None:
    """The ``If-Range`` value for the recorded version: a strong ETag, else Last-Modified."""
    etag = state.get("etag")
    value = etag if etag and not etag.startswith("W/") else state.get("last_modified")
    return value if isinstance(value, str) and value else None


def same_version(state: Mapping[str, Any], headers: httpx.Headers) -> bool:
    """False when the response's validators contradict the recorded ones."""
    etag, got_etag = state.get("etag"), headers.get("etag")
    if etag and got_etag:
        return bool(etag == got_etag)
    modified, got_modified = state.get("last_modified"), headers.get("last-modified")
    return not (modified and got_modified and modified != got_modified)
