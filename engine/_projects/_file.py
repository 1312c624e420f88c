"""Project files: a TOML description of a project (SPEC section 7).

::

    name = "my-project"                       # required; names the project

    [[steps]]                                 # one table per step, run in order
    kind = "download"
    url = "https://example.org/model.safetensors"
    dest = "models/checkpoints/model.safetensors"   # optional: default the URL's file name
    sha256 = "..."                            # optional, checked over the whole file
    headers = { Authorization = "Bearer ..." }      # optional; never shown or logged

    [[steps]]
    kind = "install"
    argv = ["python", "-m", "pip", "install", "-r", "requirements.txt"]  # a list, never a shell string
    cwd = "ComfyUI"                           # optional: default the file's folder
    env = { PIP_NO_INPUT = "1" }              # optional, merged onto the environment
    timeout_s = 600                           # optional; exceeding it is E_NET_TIMEOUT
    scope = "package-index"                   # optional circuit-breaker scope

Download steps take ``url``, ``dest``, ``sha256``, ``headers``; install steps
take ``argv``, ``cwd``, ``env``, ``timeout_s``, ``scope``. Relative ``dest``
and ``cwd`` are relative to the file's folder (``~`` is expanded); a
download without ``dest`` goes into that folder under the URL's file name.
Anything else is refused naming the step and the field, e.g.
``steps[1]: unknown field 'urll'`` (steps are numbered from 0, as in the
file's array). The kinds check the rest when the project is submitted
(URL scheme, sha256 format, ...), with the same ``steps[i].field`` names.
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

from .._errors import RefusedError
from .._specs import DownloadSpec, InstallSpec, ProjectSpec

__all__ = ["STEP_FIELDS", "load_project", "parse_project"]

#: The fields each step kind takes (``kind`` aside), in the order they are documented.
STEP_FIELDS: dict[str, tuple[str, ...]] = {
    "download": ("url", "dest", "sha256", "headers", "mirrors"),
    "install": ("argv", "cwd", "env", "timeout_s", "scope"),
}
_REQUIRED = {"download": ("url",), "install": ("argv",)}
_TOP_FIELDS = ("name", "steps")


class _Refused(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def load_project(path: str | os.PathLike[str]) -> ProjectSpec:
    """Read and check a project file; relative paths resolve against its folder.

    Raises `RefusedError` (``E_INVALID_INPUT``) naming the file, the step and
    the field.
    """
    file = Path(path).expanduser()
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise RefusedError("E_INVALID_INPUT", f"{file}: no such project file", field="project") from None
    except IsADirectoryError:
        raise RefusedError("E_INVALID_INPUT", f"{file}: is a directory, not a project file",
                           field="project") from None
    except OSError as exc:
        raise RefusedError("E_INVALID_INPUT", f"{file}: cannot be read: {exc.strerror or exc}",
                           field="project") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RefusedError("E_INVALID_INPUT", f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})",
                           field="project") from None
    except tomllib.TOMLDecodeError as exc:
        raise RefusedError("E_INVALID_INPUT", f"{file}: invalid TOML: {exc}", field="project") from None
    return parse_project(data, file.resolve().parent, source=str(file))


def parse_project(data: Mapping[str, Any], base_dir: str | os.PathLike[str], *,
                  source: str = "project") -> ProjectSpec:
    """Build the `ProjectSpec` a parsed project file describes (see the module docstring)."""
    try:
        return _parse(data, Path(base_dir).expanduser().resolve())
    except _Refused as exc:
        raise RefusedError("E_INVALID_INPUT", f"{source}: {exc.message}", field=exc.field) from None


def _parse(data: Mapping[str, Any], base: Path) -> ProjectSpec:
    for key in data:
        if key not in _TOP_FIELDS:
            raise _Refused(key, f"unknown field {key!r} (a project file has: name, [[steps]])")
    name = data.get("name")
    if name is None:
        raise _Refused("name", "missing field 'name' (the project's name)")
    if not isinstance(name, str) or not name.strip():
        raise _Refused("name", "'name' must be a non-empty string")
    steps = data.get("steps")
    if steps is None:
        raise _Refused("steps", "no steps: add at least one [[steps]] table")
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise _Refused("steps", "'steps' must be an array of tables ([[steps]])")
    if not steps:
        raise _Refused("steps", "no steps: add at least one [[steps]] table")
    return ProjectSpec(name=name.strip(), steps=[_step(i, step, base) for i, step in enumerate(steps)])


def _step(i: int, step: dict[str, Any], base: Path) -> DownloadSpec | InstallSpec:
    where = f"steps[{i}]"
    kind = step.get("kind")
    if kind is None:
        raise _Refused(f"{where}.kind", f"{where}: missing field 'kind' (\"download\" or \"install\")")
    if kind not in STEP_FIELDS:
        raise _Refused(f"{where}.kind", f"{where}: unknown kind {kind!r} (\"download\" or \"install\")")
    allowed = STEP_FIELDS[kind]
    for key in step:
        if key != "kind" and key not in allowed:
            raise _Refused(f"{where}.{key}", f"{where}: unknown field {key!r} "
                                             f"({kind} steps take: {', '.join(allowed)})")
    for key in _REQUIRED[kind]:
        if key not in step:
            raise _Refused(f"{where}.{key}", f"{where}: missing field {key!r}")

    def bad(key: str, what: str) -> _Refused:
        return _Refused(f"{where}.{key}", f"{where}.{key}: must be {what}, not {_toml_type(step[key])}")

    def string(key: str) -> str | None:
        value = step.get(key)
        if value is not None and not isinstance(value, str):
            raise bad(key, "a string")
        return value

    def table(key: str) -> dict[str, str] | None:
        value = step.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise bad(key, "a table of strings")
        for name, item in value.items():
            if not isinstance(item, str):
                raise _Refused(f"{where}.{key}", f"{where}.{key}: the value of {name!r} must be a string, "
                                                 f"not {_toml_type(item)}")
        return dict(value)

    if kind == "download":
        dest = string("dest")
        mirrors = step.get("mirrors", [])
        if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
            raise bad("mirrors", "an array of URLs")
        return DownloadSpec(
            url=string("url") or "",
            dest=_relative_to(base, dest) if dest else str(base) + os.sep,
            sha256=string("sha256"),
            headers=table("headers") or {},
            mirrors=list(mirrors),
        )
    argv = step["argv"]
    if isinstance(argv, str):
        raise _Refused(f"{where}.argv", f"{where}.argv: must be an array of strings, not a shell string "
                                        f"(write {argv.split()!r})")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise _Refused(f"{where}.argv", f"{where}.argv: must be a non-empty array of strings")
    timeout = step.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not math.isfinite(timeout) or timeout <= 0):
        raise _Refused(f"{where}.timeout_s", f"{where}.timeout_s: must be a positive number of seconds")
    cwd = string("cwd")
    return InstallSpec(
        argv=list(argv),
        cwd=_relative_to(base, cwd) if cwd else str(base),
        env=table("env"),
        timeout_s=float(timeout) if timeout is not None else None,
        scope=string("scope"),
    )


def _relative_to(base: Path, value: str) -> str:
    path = Path(os.path.expanduser(value))
    out = os.path.normpath(path if path.is_absolute() else base / path)
    return out + os.sep if value.endswith(("/", os.sep)) else out  # "models/": a folder
