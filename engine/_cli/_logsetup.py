"""Logging for the command line and ``recovery serve`` (SPEC section 16).

`setup_logging` sends the ``engine`` and ``supervisors`` loggers (and
hypercorn's) to ``<state_dir>/logs/recovery.log``, rotating over 5 files of
10 MiB, so "check the logs" has an answer. Every record passes a redaction
step first: ``Authorization``/``Cookie`` values, ``token=...`` style pairs,
URL userinfo and credential-like query values never reach a file or a
console, tracebacks included.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import urllib.parse
from pathlib import Path

__all__ = ["LOG_BACKUPS", "LOG_MAX_BYTES", "RedactingFilter", "RedactingFormatter", "redact", "setup_logging"]

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 4  # recovery.log plus 4 rotated files: 5 files of 10 MiB
LOGGERS = ("engine", "supervisors", "hypercorn.error")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_MARK = "_recovery_handler"

_URL = re.compile(r"\b(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<netloc>[^/?#\s'\"<>]*)(?P<rest>[^\s'\"<>]*)",
                  re.IGNORECASE)
_HEADER = re.compile(
    r"(?P<key>\b(?:proxy-)?authorization|\b(?:set-)?cookie|\bx-api-key|\bx-auth-token|\bx-hf-token)"
    r"(?P<sep>['\"]?\s*[:=]\s*['\"]?)(?P<value>(?:(?:bearer|basic|token|digest)\s+)?[^\r\n'\"]*)",
    re.IGNORECASE,
)
_PAIR = re.compile(
    r"(?P<key>\b[\w-]*(?:token|secret|password|passwd|api[-_]?key|signature|sig|credential)[\w-]*)"
    r"(?P<sep>['\"]?\s*[:=]\s*['\"]?)(?P<value>[^\s,;&'\"]+)",
    re.IGNORECASE,
)
_SECRET_QUERY = re.compile(
    r"^(?:.*(?:token|secret|signature|password|passwd|credential|session|auth).*|sig|key|code|policy|"
    r"key-pair-id|api_?key|x-amz-.*|x-goog-.*)$",
    re.IGNORECASE,
)
REDACTED = "<redacted>"


def _redact_url(match: re.Match[str]) -> str:
    netloc = match["netloc"]
    if "@" in netloc:
        netloc = "<redacted>@" + netloc.rpartition("@")[2]
    rest = match["rest"]
    path, qmark, query = rest.partition("?")
    if qmark:
        query, hashmark, fragment = query.partition("#")
        pairs = []
        for pair in query.split("&"):
            key, eq, _value = pair.partition("=")
            if eq and _SECRET_QUERY.match(urllib.parse.unquote_plus(key)):
                pair = f"{key}={REDACTED}"
            pairs.append(pair)
        rest = path + "?" + "&".join(pairs) + (hashmark + fragment if hashmark else "")
    return match["scheme"] + netloc + rest


def redact(text: str) -> str:
    """``text`` with credentials replaced by ``<redacted>`` (see the module docstring)."""
    text = _URL.sub(_redact_url, text)
    text = _HEADER.sub(lambda m: m["key"] + m["sep"] + REDACTED, text)
    return _PAIR.sub(lambda m: m[0] if m["value"].startswith(REDACTED) else m["key"] + m["sep"] + REDACTED, text)


class RedactingFilter(logging.Filter):
    """Renders a record's message once, redacted, so no handler sees the raw arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the record
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = redact(message)
        record.args = None
        return True


class RedactingFormatter(logging.Formatter):
    """Redacts the whole formatted record, tracebacks and stack info included."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Creates each log file (the rotated ones too) private to the user (0600)."""

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


def _handlers(level: int, path: Path, console_level: int | str | None) -> list[logging.Handler]:
    handlers: list[logging.Handler] = []
    file_handler = _PrivateRotatingFileHandler(
        path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8", delay=True)
    file_handler.setLevel(level)
    handlers.append(file_handler)
    if console_level is not None:
        console = logging.StreamHandler()
        console.setLevel(console_level)
        handlers.append(console)
    for handler in handlers:
        handler.addFilter(RedactingFilter())
        handler.setFormatter(RedactingFormatter(_FORMAT))
        setattr(handler, _MARK, True)
    return handlers


def setup_logging(state_dir: str | os.PathLike[str], *, level: int = logging.INFO,
                  console_level: int | str | None = None) -> Path:
    """Log ``engine``, ``supervisors`` and hypercorn to ``<state_dir>/logs/recovery.log``.

    Calling it again replaces the handlers it installed before (a new state
    dir, another console level); other handlers are left alone. Returns the
    log file's path.
    """
    logs = Path(state_dir).expanduser() / "logs"
    try:
        logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        from .._errors import StateDirError

        raise StateDirError(f"cannot use the state directory {Path(state_dir).expanduser()}: "
                            f"{exc.strerror or exc}; choose another with --state-dir or "
                            "$RECOVERY_STATE_DIR") from exc
    path = logs / "recovery.log"
    handlers = _handlers(level, path, console_level)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, _MARK, False)]:
            logger.removeHandler(old)
            old.close()
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)
        for handler in handlers:
            logger.addHandler(handler)
    return path
