"""The built-in ``download`` kind: resumable, verified HTTP downloads (SPEC section 6).

One attempt streams ``spec.url`` into ``<dest>.part`` and, once the size (and
sha256 when given) is verified, renames it to ``<dest>`` atomically.

Resumable state (``ctx.state``, written into the snapshot):

``offset``        bytes of ``.part`` that are fsynced: the resume point
``etag``, ``last_modified``   validators of the version being fetched (If-Range)
``total``         the file's size when the server said it
``cd_name``       safe file name from Content-Disposition, if any
``complete``      the verified ``.part`` is about to be (or was) renamed
``final_dest``    where it is renamed to, when that is not ``spec.dest``
``segments``      ``[start, end, durable]`` per part of a download over several
                  connections (SPEC 6.2; see `_multi`)
``source``        which of ``[url, *mirrors]`` the next attempt starts from

How one attempt moves the bytes (requests, answers, restarts, several
connections, mirrors) is `_transfer`; this module is the kind around it:
validation, scope, description, the already-complete cases and clean-up.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import attrs
import trio

from .. import _platform
from .._errors import AttemptFailed, RefusedError, classify_exception, failure
from ._part import PartFile, Writer
from ._safefile import complete_at_once, open_part_fd, remove_if_empty, still_complete
from .._kinds import AttemptContext
from ._names import (
    FALLBACK_NAME,
    dest_within_root,
    redact_url,
    resolve_dest,
    safe_basename,
    scrub_secrets,
    url_scope,
    validate_headers,
    validate_sha256,
    validate_url,
)
from .._settings import Settings
from .._specs import DownloadSpec, redact_headers
from ._hosts import HostConnections
from ._ratelimit import TokenBucket
from ._credentials import CredentialStore
from ._hubs import hub_url
from ._transfer import Transfer, finish_recorded_completion, kept_bytes, source_url

__all__ = [
    "FALLBACK_NAME",
    "DownloadKind",
    "dest_within_root",
    "download_paths",
    "redact_url",
    "safe_basename",
]

log = logging.getLogger("engine.download")

PART_SUFFIX = ".part"


# --- names, paths and redaction ------------------------------------------------


def download_paths(spec: DownloadSpec) -> tuple[Path, Path]:
    """``(dest, dest.part)`` of a validated spec."""
    if spec.dest is None:
        raise ValueError("the spec has no destination; validate it first")
    dest = Path(spec.dest)
    return dest, dest.with_name(dest.name + PART_SUFFIX)


# --- the kind -----------------------------------------------------------------------


@attrs.define(eq=False)
class DownloadKind:
    """Resumable, verified HTTP(S) downloads into ``<dest>.part``, renamed when verified.

    ``write`` and ``statvfs`` are seams for tests (disk full, permission
    denied, too little free space); the engine uses the defaults.
    """

    name: str = attrs.field(default="download", init=False)
    spec_type: type = attrs.field(default=DownloadSpec, init=False)
    _write: Writer = os.write
    _statvfs: Callable[[str], _platform.FsStats] = _platform.statvfs
    #: ``<state_dir>/credentials.toml`` (SPEC 6.3); None: no per-host credentials.
    credentials: CredentialStore | None = None
    #: Extra connections and refusals per host, for the engine's lifetime (SPEC 6.2).
    hosts: HostConnections = attrs.Factory(HostConnections)
    _engine_rate: Callable[[], float] = attrs.field(default=lambda: 0.0, init=False)
    _engine_bucket: TokenBucket = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # one bucket for every download of the engine; its rate is read live from the settings
        self._engine_bucket = TokenBucket(lambda: self._engine_rate())

    def validate(self, spec: Any, settings: Settings) -> DownloadSpec:
        """Check the spec and return it with an absolute ``dest`` (see the module docstring)."""
        if not isinstance(spec, DownloadSpec):
            raise RefusedError("E_INVALID_INPUT", f"a download needs a DownloadSpec, not {type(spec).__name__}",
                               field="kind")
        url = validate_url(spec.url)
        sha = validate_sha256(spec.sha256)
        headers = validate_headers(spec.headers)
        dest = resolve_dest(spec.dest, url, settings.download_root_path)
        if spec.connections is not None and (not isinstance(spec.connections, int)
                                             or isinstance(spec.connections, bool) or spec.connections < 1):
            raise RefusedError("E_INVALID_INPUT", "connections must be a whole number of at least 1",
                               field="connections")
        rate = spec.rate_limit_bps
        if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool) or rate < 0):
            raise RefusedError("E_INVALID_INPUT", "rate_limit_bps must be a whole number of bytes per second, "
                                                  "0 or more", field="rate_limit_bps")
        mirrors = []
        for i, mirror in enumerate(spec.mirrors or []):
            try:
                mirrors.append(validate_url(mirror))
            except RefusedError as exc:
                raise RefusedError(exc.code, exc.message.replace("URL", "mirror URL", 1),
                                   field=f"mirrors[{i}]") from None
        return attrs.evolve(spec, url=url, dest=str(dest), sha256=sha, headers=headers, mirrors=mirrors)

    def resource_key(self, spec: DownloadSpec) -> str | None:
        """The destination; case-folded where its folder's file system ignores case."""
        return _platform.resource_path(spec.dest) if spec.dest is not None else None

    def still_complete(self, done: DownloadSpec, state: dict[str, Any], spec: DownloadSpec) -> bool:
        """Whether a recorded success of ``done`` answers ``spec``: same URL, file intact (SPEC 6.1)."""
        return still_complete(done, state, spec)

    def scope(self, spec: DownloadSpec, state: dict[str, Any]) -> str | None:
        """The current source's host, lowercase, with the port when it is not the scheme's default.

        Each mirror is its own breaker scope (SPEC 6.2): the scope follows
        ``state["source"]``, the source the next attempt starts from.
        """
        return url_scope(source_url(spec, state))

    def describe(self, spec: DownloadSpec) -> dict[str, Any]:
        """The spec as shown in events and the API: no credentials."""
        described: dict[str, Any] = {
            "url": redact_url(spec.url),
            "dest": spec.dest,
            "sha256": spec.sha256,
            "headers": redact_headers(spec.headers or {}),
            "overwrite": spec.overwrite,
        }
        if spec.connections is not None:
            described["connections"] = spec.connections
        if spec.rate_limit_bps:
            described["rate_limit_bps"] = spec.rate_limit_bps
        if spec.mirrors:
            described["mirrors"] = [redact_url(m) for m in spec.mirrors]
        fetched, note = hub_url(spec.url)
        if note:  # SPEC 6.3: the plan and the events say what is really fetched
            described["fetched_as"] = redact_url(fetched)
            described["note"] = note
        return described

    def discard(self, spec: DownloadSpec, state: dict[str, Any]) -> None:
        """Delete the ``.part`` file; a finished destination is never touched."""
        _dest, part = download_paths(spec)
        try:
            part.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not delete partial file %s: %s", part, exc)

    async def attempt(self, ctx: AttemptContext) -> None:
        """Run one attempt: return when ``dest`` is complete and verified, else raise.

        Any failure's message is scrubbed of the spec's header values and URL
        userinfo, whatever library raised it (SPEC 6.1).
        """
        try:
            await self._attempt(ctx)
        except AttemptFailed as exc:
            exc.error = scrub_secrets(exc.error, ctx.spec)
            raise
        except Exception as exc:
            classified = classify_exception(exc)
            cleaned = scrub_secrets(classified.error, ctx.spec)
            if cleaned != classified.error:  # the raw exception carries a credential: never pass it on
                raise AttemptFailed(cleaned, retry_after_s=classified.retry_after_s) from None
            raise

    async def _attempt(self, ctx: AttemptContext) -> None:
        spec: DownloadSpec = ctx.spec
        dest, part = download_paths(spec)
        if finish_recorded_completion(dest, part, ctx.state, spec.overwrite):
            await trio.lowlevel.checkpoint()
            return
        done = await complete_at_once(dest, spec.sha256, overwrite=spec.overwrite, disk=ctx.disk)
        if done is not None:  # the file is there already and matches its sha256
            ctx.state.clear()
            ctx.state.update(offset=done[0], total=done[0], complete=True, file=list(done))
            ctx.progress(done[0], done[0])
            return
        try:
            os.makedirs(_platform.long_path(dest.parent), exist_ok=True)
            fd = open_part_fd(part)
        except OSError as exc:
            raise classify_exception(exc) from exc
        try:
            part_file = PartFile.adopt(part, fd, kept_bytes(ctx.state), write=self._write, disk=ctx.disk)
        except OSError as exc:
            raise classify_exception(exc) from exc
        self._engine_rate = lambda: float(ctx.settings.max_download_rate_bps)
        buckets = [self._engine_bucket]
        if spec.rate_limit_bps:
            limit = float(spec.rate_limit_bps)
            buckets.append(TokenBucket(lambda: limit))
        transfer = Transfer(ctx, spec, dest, part_file, self._statvfs, self.credentials, hosts=self.hosts,
                             buckets=tuple(buckets))
        try:
            await transfer.run()
        except BaseException:
            # A request that never produced a byte (a 4xx, a refused redirect, a
            # full disk) leaves no empty .part behind; anything with data in it is
            # kept for the resume.
            if part_file.size == 0 and not part_file.closed and not ctx.state.get("complete"):
                remove_if_empty(part_file.fd, part, release=transfer.close)
            raise
        finally:
            transfer.close()


