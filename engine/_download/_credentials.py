"""Credentials for hosts: ``<state_dir>/credentials.toml`` (SPEC 6.3).

The file maps exact host names to request headers::

    [hosts."models.example.org"]
    headers = { Authorization = "Bearer ..." }

A host with a port is written ``"host:port"``; without one it matches the
scheme's default port only. The file must be private to the user: one that
group or others can read (or write) is refused with an error naming the
file and the fix (``chmod 600``), and nothing from it is used. Each value
follows the rules of every request header (``validate_headers``: spaces and
tabs around it dropped, a control character or non-ASCII refused), so no
library ever gets to quote it in an error. Values are never shown: errors
name the host and the header, never the value.

The file is read again when it changes (its mtime and size), so a running
``recovery serve`` picks up an edit without a restart.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any, Mapping

import attrs

from .._errors import AttemptFailed, RefusedError, error
from ._names import validate_headers

__all__ = ["CREDENTIALS_FILE", "CredentialStore", "credentials_problem"]

CREDENTIALS_FILE = "credentials.toml"


def credentials_problem(path: Path, message: str) -> AttemptFailed:
    """The failure of a download whose credentials file cannot be used."""
    return AttemptFailed(error("E_PERMISSION", f"{path}: {message}",
                               suggestion=f"Fix {path} (it must be a TOML file readable by you only: "
                                          f"chmod 600 {path}) and retry."))


@attrs.define(eq=False)
class CredentialStore:
    """Headers per host from one ``credentials.toml`` (missing file: no credentials)."""

    path: Path
    _cache_key: tuple[int, int, int] | None = None
    _hosts: dict[str, dict[str, str]] = attrs.Factory(dict)
    _lock: threading.Lock = attrs.Factory(threading.Lock)

    @classmethod
    def in_state_dir(cls, state_dir: str | os.PathLike[str]) -> "CredentialStore":
        return cls(Path(state_dir) / CREDENTIALS_FILE)

    def headers_for(self, host_key: str) -> dict[str, str]:
        """The headers configured for exactly ``host_key`` (``host`` or ``host:port``).

        Raises `AttemptFailed` (``E_PERMISSION``) when the file exists but is
        readable by others, is not a regular file, or is not valid.
        """
        return dict(self._load().get(host_key.lower(), {}))

    def _load(self) -> Mapping[str, dict[str, str]]:
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            except FileNotFoundError:
                self._cache_key, self._hosts = None, {}
                return self._hosts
            except OSError as exc:
                raise credentials_problem(self.path, f"cannot be read ({exc.strerror or exc})") from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise credentials_problem(self.path, "is not a regular file")
                if st.st_mode & 0o077:
                    raise credentials_problem(
                        self.path, f"can be read by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                                   "it is not used until only you can read it")
                key = (st.st_mtime_ns, st.st_size, st.st_ino)
                if key == self._cache_key:
                    return self._hosts
                with os.fdopen(os.dup(fd), "rb") as f:
                    raw = f.read(1024 * 1024)
            finally:
                os.close(fd)
            self._hosts = _parse(self.path, raw)
            self._cache_key = key
            return self._hosts


def _parse(path: Path, raw: bytes) -> dict[str, dict[str, str]]:
    import tomllib  # only with a credentials file: most runs have none

    try:
        data: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # The decoder's message can quote the line: it may hold a secret.
        lineno = getattr(exc, "lineno", None)
        where = f" (line {lineno})" if isinstance(lineno, int) else ""
        raise credentials_problem(path, f"is not valid TOML{where}") from None
    unknown = sorted(set(data) - {"hosts"})
    if unknown:
        raise credentials_problem(path, f"unknown table or key {unknown[0]!r} (only [hosts.\"NAME\"] tables)")
    hosts = data.get("hosts", {})
    if not isinstance(hosts, dict):
        raise credentials_problem(path, "'hosts' must be a table of host names")
    result: dict[str, dict[str, str]] = {}
    for host, entry in hosts.items():
        if not isinstance(entry, dict) or set(entry) - {"headers"}:
            raise credentials_problem(path, f"[hosts.{host!r}] may only hold 'headers'")
        headers = entry.get("headers", {})
        if not isinstance(headers, dict):
            raise credentials_problem(path, f"[hosts.{host!r}] headers must be a table of names to values")
        clean: dict[str, str] = {}
        for name, value in headers.items():
            if (not isinstance(name, str) or not isinstance(value, str) or not name
                    or any(ch in name for ch in ":\r\n\x00 ") or any(ch in value for ch in "\r\n\x00")):
                raise credentials_problem(path, f"[hosts.{host!r}] header {str(name)!r} has an invalid "
                                                "name or value")
            try:  # the rules of every request header (SPEC 6.1), checked before any request
                clean.update(validate_headers({name: value}))
            except RefusedError as exc:  # names the header, never its value
                raise credentials_problem(path, f"[hosts.{host!r}] {exc.message}") from None
        result[host.strip().lower()] = clean
    return result
