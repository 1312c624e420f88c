"""The one frozen settings record (SPEC section 11), its validation and file.

Every surface (Python, ``--set``, the API, ``settings.json``) uses these
names. Validation refuses with the field and the reason, never silently
clamps: a user who typed ``backoff_factor=0.5`` should hear about it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import attrs

from ._errors import RefusedError

__all__ = ["Settings", "load_settings", "parse_setting_assignments", "save_settings"]


def _check(field: str, ok: bool, reason: str) -> None:
    if not ok:
        raise RefusedError("E_INVALID_INPUT", f"{field}: {reason}", field=field)


@attrs.frozen(kw_only=True)
class Settings:
    """Recovery settings. Units are in the names; see SPEC section 11."""

    max_retries: int = 5
    initial_delay_s: float = 2.0
    backoff_factor: float = 2.0
    max_delay_s: float = 300.0
    jitter: float = 0.1
    progress_reset_bytes: int = 1024 * 1024
    breaker_failure_threshold: int = 5
    breaker_reset_timeout_s: float = 30.0
    breaker_half_open_probes: int = 1
    max_concurrent: int = 3
    max_per_host: int = 2
    #: Connections for one download (1 = never split) and across one host (SPEC 6.2).
    max_connections: int = 16
    max_connections_per_host: int = 16
    #: No segment is split below this many bytes.
    min_segment_bytes: int = 8 * 1024 * 1024
    #: The engine's total receive rate in bytes per second; 0 = unlimited.
    max_download_rate_bps: int = 0
    checkpoint_interval_s: float = 1.0
    connect_timeout_s: float = 10.0
    stall_timeout_s: float = 30.0
    download_root: str | None = None
    history_limit: int = 1000

    def __attrs_post_init__(self) -> None:
        for f in attrs.fields(Settings):
            value = getattr(self, f.name)
            if f.name == "download_root":
                _check(f.name, value is None or (isinstance(value, str) and value != ""),
                       "must be a directory path or null")
                continue
            want = int if f.type in (int, "int") else float
            _check(f.name, isinstance(value, (int, float)) and not isinstance(value, bool),
                   f"must be a number, got {value!r}")
            if want is int:
                _check(f.name, float(value).is_integer(), f"must be a whole number, got {value!r}")
            _check(f.name, value == value and value not in (float("inf"), float("-inf")),
                   "must be a finite number")
        _check("max_retries", self.max_retries >= 0, "must be 0 or more")
        _check("initial_delay_s", self.initial_delay_s >= 0, "a delay cannot be negative")
        _check("backoff_factor", self.backoff_factor >= 1, "must be at least 1")
        _check("max_delay_s", self.max_delay_s >= 0, "a delay cannot be negative")
        _check("jitter", 0 <= self.jitter < 1, "must be at least 0 and below 1")
        _check("progress_reset_bytes", self.progress_reset_bytes >= 0, "cannot be negative")
        _check("breaker_failure_threshold", self.breaker_failure_threshold >= 1, "must be at least 1")
        _check("breaker_reset_timeout_s", self.breaker_reset_timeout_s >= 0, "a delay cannot be negative")
        _check("breaker_half_open_probes", self.breaker_half_open_probes >= 1, "must be at least 1")
        _check("max_concurrent", self.max_concurrent >= 1, "must be at least 1")
        _check("max_per_host", self.max_per_host >= 1, "must be at least 1")
        _check("max_connections", self.max_connections >= 1, "must be at least 1")
        _check("max_connections_per_host", self.max_connections_per_host >= 1, "must be at least 1")
        _check("min_segment_bytes", self.min_segment_bytes >= 1, "must be at least 1")
        _check("max_download_rate_bps", self.max_download_rate_bps >= 0, "cannot be negative (0 = unlimited)")
        _check("checkpoint_interval_s", self.checkpoint_interval_s > 0, "must be above 0")
        _check("connect_timeout_s", self.connect_timeout_s > 0, "must be above 0")
        _check("stall_timeout_s", self.stall_timeout_s > 0, "must be above 0")
        _check("history_limit", self.history_limit >= 0, "cannot be negative")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in attrs.fields(cls)]

    def updated(self, changes: Mapping[str, Any]) -> "Settings":
        """A copy with ``changes`` applied; unknown names and bad values are refused."""
        known = set(self.field_names())
        for name in changes:
            _check(str(name), name in known, "unknown setting")
        coerced = {name: _coerce(name, value) for name, value in changes.items()}
        return attrs.evolve(self, **coerced)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @property
    def download_root_path(self) -> Path:
        """The directory downloads may write into (the current directory when unset)."""
        return Path(self.download_root or os.getcwd()).resolve()


def _coerce(name: str, value: Any) -> Any:
    """Accept ints where floats are expected and whole floats where ints are."""
    field = attrs.fields_dict(Settings)[name]
    if name == "download_root":
        if value is None or isinstance(value, str):
            return value
        _check(name, False, f"must be a directory path, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _check(name, False, f"must be a number, got {value!r}")
    if field.type in (int, "int"):
        _check(name, float(value).is_integer(), f"must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def parse_setting_assignments(items: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings (``--set``) into typed values, naming bad ones."""
    out: dict[str, Any] = {}
    known = Settings.field_names()
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise RefusedError("E_INVALID_INPUT", f"{item!r}: expected KEY=VALUE", field=key or item)
        _check(key, key in known, "unknown setting")
        raw = raw.strip()
        if key == "download_root":
            out[key] = raw or None
            continue
        try:
            out[key] = int(raw) if raw.lstrip("-").isdigit() else float(raw)
        except ValueError:
            _check(key, False, f"must be a number, got {raw!r}")
    return out


def load_settings(path: Path) -> Settings:
    """Read ``settings.json``; a missing file means defaults, a bad one is refused."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RefusedError("E_INVALID_INPUT", f"{path}: not valid JSON ({exc})", field="settings.json") from None
    if not isinstance(data, dict):
        raise RefusedError("E_INVALID_INPUT", f"{path}: expected a JSON object", field="settings.json")
    return Settings().updated(data)


def save_settings(path: Path, settings: Settings, *, only_changed: bool = True) -> None:
    """Write ``settings.json`` atomically (human-editable, so JSON, sorted, indented)."""
    data = settings.to_dict()
    if only_changed:
        defaults = Settings().to_dict()
        data = {k: v for k, v in data.items() if defaults[k] != v}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
