"""``recovery import --sizes``: how much an import downloads, and whether it fits (SPEC 7.1).

Each missing model's URL is asked for its size with a ``HEAD`` request,
the way a download would ask it: the hub rules and credentials of SPEC 6.3
(`hub_url`, `host_auth`: a token goes to its own host only), redirects
followed hop by hop with every credential header dropped across origins.
The size is the final answer's ``Content-Length`` (or the hub's
``X-Linked-Size`` on the way). A server that refuses ``HEAD`` (405, 501) is
asked ``GET`` with ``Range: bytes=0-0`` instead, and nothing of its body is
read. A gated repository, a sign-in page or a web page where a model was
expected is reported for that model with the message a download would give.

The totals are grouped by the file system the models go to, with its free
space; a group that does not fit is a warning (the plan still exits 0).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import attrs
import httpx
import trio

from .._download._credentials import CredentialStore
from .._download._hubs import HubEnv, host_auth, hub_failure, hub_url, web_page_failure
from .._download._names import redact_url
from .._download._part import free_bytes
from .._download._redirects import MAX_REDIRECTS, next_request
from .._errors import AttemptFailed, classify_exception, classify_status, failure
from .._units import human_bytes
from ._comfyui import ImportPlan, ModelEntry

__all__ = ["SizeAnswer", "ask_sizes", "size_lines"]

_CONCURRENCY = 8
_CONNECT_S = 10.0
_READ_S = 20.0


@attrs.frozen(kw_only=True)
class SizeAnswer:
    """What one model's URL said about its size: ``size`` in bytes, or a ``problem``."""

    entry: ModelEntry
    size: int | None = None
    problem: str | None = None
    suggestion: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"dest": self.entry.dest, "url": redact_url(self.entry.url), "size": self.size,
                "problem": self.problem, "suggestion": self.suggestion}


def _int(value: str | None) -> int | None:
    try:
        number = int((value or "").strip())
    except ValueError:
        return None
    return number if number >= 0 else None


def _range_total(value: str | None) -> int | None:
    """The total of ``Content-Range: bytes 0-0/TOTAL``."""
    if not value or "/" not in value:
        return None
    return _int(value.rsplit("/", 1)[1])


async def _send(client: httpx.AsyncClient, request: httpx.Request) -> tuple[httpx.Response, int | None]:
    """``request`` with its redirects followed (its method kept); the answer and an ``X-Linked-Size`` seen."""
    linked: int | None = None
    for _hop in range(MAX_REDIRECTS + 1):
        response = await client.send(request, stream=True, follow_redirects=False)
        linked = _int(response.headers.get("x-linked-size")) or linked
        if not response.has_redirect_location:
            return response, linked
        try:
            follow = next_request(request, response)  # drops credentials across origins
        finally:
            await response.aclose()
        request = httpx.Request(request.method, follow.url, headers=follow.headers, extensions=follow.extensions)
    raise failure("E_INVALID_INPUT", f"more than {MAX_REDIRECTS} redirects")


async def _ask_one(client: httpx.AsyncClient, entry: ModelEntry, env: HubEnv,
                   credentials: CredentialStore | None) -> SizeAnswer:
    url, _note = hub_url(entry.url, env)
    try:
        auth = host_auth(url, env, credentials)
        for method, extra in (("HEAD", {}), ("GET", {"Range": "bytes=0-0"})):
            request = client.build_request(method, url, headers={**extra, **auth.headers})
            response, linked = await _send(client, request)
            try:
                status = response.status_code
                if method == "HEAD" and status in (405, 501):
                    continue
                refused = hub_failure(url, response, env, sent_token=bool(auth.headers))
                if refused is None and status not in (200, 206):
                    refused = classify_status(status, response.headers)
                if refused is None:
                    refused = web_page_failure(Path(entry.dest).name, response)
                if refused is not None:
                    return SizeAnswer(entry=entry, problem=f"{refused.error.code}: {refused.error.message}",
                                      suggestion=refused.error.suggestion)
                if status == 206:
                    size = _range_total(response.headers.get("content-range"))
                else:
                    size = _int(response.headers.get("content-length"))
                return SizeAnswer(entry=entry, size=size if size is not None else linked)
            finally:
                await response.aclose()
    except AttemptFailed as exc:
        return SizeAnswer(entry=entry, problem=f"{exc.error.code}: {exc.error.message}",
                          suggestion=exc.error.suggestion)
    except (httpx.HTTPError, OSError) as exc:
        info = classify_exception(exc).error
        return SizeAnswer(entry=entry, problem=f"{info.code}: {info.message}", suggestion=info.suggestion)
    return SizeAnswer(entry=entry, problem="the server answers neither HEAD nor a one-byte GET")


async def ask_sizes(entries: Sequence[ModelEntry], *, credentials: CredentialStore | None = None,
                    env: HubEnv | None = None) -> list[SizeAnswer]:
    """The size of each entry's file, asked concurrently (at most 8 at a time), in ``entries`` order."""
    env = env or HubEnv.current()
    answers: list[SizeAnswer | None] = [None] * len(entries)
    limit = trio.CapacityLimiter(_CONCURRENCY)
    timeout = httpx.Timeout(connect=_CONNECT_S, read=_READ_S, write=_READ_S, pool=None)
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:

        async def one(i: int, entry: ModelEntry) -> None:
            async with limit:
                with trio.move_on_after(_CONNECT_S + _READ_S) as scope:
                    answers[i] = await _ask_one(client, entry, env, credentials)
                if scope.cancelled_caught:
                    answers[i] = SizeAnswer(entry=entry, problem="E_NET_TIMEOUT: no answer in time")

        async with trio.open_nursery() as nursery:
            for i, entry in enumerate(entries):
                nursery.start_soon(one, i, entry)
    return [a for a in answers if a is not None]


def _volume(path: Path) -> tuple[Path, int | None]:
    """The nearest existing folder of ``path``, and the file system it is on."""
    folder = path.parent
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        return folder, os.stat(folder).st_dev
    except OSError:
        return folder, None


def size_lines(plan: ImportPlan, answers: Sequence[SizeAnswer]) -> tuple[list[str], dict[str, object]]:
    """The size part of the plan for a person, and the same as JSON (``sizes``)."""
    lines: list[str] = []
    groups: dict[object, tuple[Path, list[SizeAnswer]]] = {}
    for answer in answers:
        folder, device = _volume(Path(answer.entry.dest))
        groups.setdefault(device if device is not None else str(folder), (folder, []))[1].append(answer)
        what = f"{answer.entry.directory}/{answer.entry.name}"
        if answer.problem:
            lines.append(f"  size      {what}: {answer.problem}")
            if answer.suggestion:
                lines.append(f"            {answer.suggestion}")
        else:
            lines.append(f"  size      {what}: " + (human_bytes(answer.size) if answer.size is not None
                                                     else "unknown (the server does not say)"))
    volumes = []
    for folder, group in groups.values():
        known = [a.size for a in group if a.size is not None]
        total = sum(known)
        unknown = len(group) - len(known)
        free = free_bytes(folder)
        fits = free is None or total <= free
        volumes.append({"folder": str(folder), "total_bytes": total, "unknown": unknown,
                        "free_bytes": free, "fits": fits})
        more = f" and {unknown} of unknown size" if unknown else ""
        where = f"free {human_bytes(free)}" if free is not None else "free space unknown"
        lines.append(f"to download: {human_bytes(total)} in {len(group)} file{'s' if len(group) != 1 else ''}"
                     f"{more} into {folder} ({where})")
        if not fits:
            lines.append(f"warning: {human_bytes(total - (free or 0))} more than the free space on {folder}; "
                         "free some space or point extra_model_paths.yaml at another drive")
    total_all = sum(a.size or 0 for a in answers)
    doc: dict[str, object] = {"models": [a.to_dict() for a in answers], "total_bytes": total_all,
                              "volumes": volumes}
    if not answers:
        lines.append("to download: nothing")
    return lines, doc
