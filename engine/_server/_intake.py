"""Turning a ``POST /api/operations`` body into a spec, refusing what a caller may not ask.

Downloads are always accepted, but only into ``download_root``; installs and
projects run commands, so they need ``--allow-installs`` (403 ``E_FORBIDDEN``
otherwise) and a registered kind. A project whose steps are all downloads
runs no command (``recovery import`` handed over by the command line): it is
accepted like its downloads. Unknown fields are refused naming the field
(``steps[2].argv`` inside a project). An ``import`` (a ComfyUI workflow and a
ComfyUI folder inside ``download_root``) only downloads, so it is always
accepted; it becomes the project of the models that are missing.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from .._convert import converter
from .._engine import Engine
from .._errors import RefusedError
from .._specs import DownloadSpec, InstallSpec, ProjectSpec

__all__ = ["spec_from_json"]

_COMMAND_KINDS = ("install", "project")


def _invalid(message: str, field: str | None) -> RefusedError:
    return RefusedError("E_INVALID_INPUT", message, field=field)


def _field_names(cls: type) -> set[str]:
    return {f.name for f in attrs.fields(cls)}


def _check_fields(body: dict[str, Any], cls: type, prefix: str = "") -> None:
    allowed = _field_names(cls) | {"kind"}
    for name in body:
        if name not in allowed:
            raise _invalid(f"unknown field {prefix}{name!r} for a {cls.kind} operation",  # type: ignore[attr-defined]
                           f"{prefix}{name}")
    for f in attrs.fields(cls):
        if f.default is attrs.NOTHING and f.name not in body:
            raise _invalid(f"missing field {prefix}{f.name!r}", f"{prefix}{f.name}")


def _check_download_dest(engine: Engine, spec: DownloadSpec, prefix: str) -> DownloadSpec:
    """Validate with the download kind and refuse a destination outside ``download_root``."""
    from .._download._names import dest_within_root

    if "download" not in engine.kinds.names():
        raise _invalid("this engine has no download kind", f"{prefix}kind")
    root = engine.settings.download_root_path
    outside = _invalid(f"the destination must be inside the download root {root}", f"{prefix}dest")
    if spec.dest is not None and not dest_within_root(_as_file(spec.dest), root):
        raise outside
    try:
        validated = engine.kinds.get("download").validate(spec, engine.settings)
    except RefusedError as exc:
        if prefix and exc.field:
            exc.field = prefix + exc.field
        raise
    if not dest_within_root(validated.dest, root):
        raise outside
    return validated  # type: ignore[no-any-return]


def _as_file(dest: str) -> str:
    """A folder destination (ending in a separator) stands for a file inside it: the root itself is fine."""
    return dest + "x" if dest.endswith(("/", os.sep)) else dest


def _structure(body: dict[str, Any], cls: type, prefix: str = "") -> Any:
    """Build ``cls`` with the engine's converter (after the field checks above)."""
    data = {k: v for k, v in body.items() if k != "kind"}
    try:
        return converter.structure(data, cls)
    except Exception as exc:  # noqa: BLE001 - cattrs reports shape errors as exception groups
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]  # type: ignore[assignment]
        raise _invalid(f"invalid {prefix.rstrip('.') or cls.kind} spec: {exc}", None) from None  # type: ignore[attr-defined]


def _download(engine: Engine, body: dict[str, Any], prefix: str = "") -> DownloadSpec:
    _check_fields(body, DownloadSpec, prefix)
    url = body.get("url")
    if not isinstance(url, str):
        raise _invalid("url must be a string", f"{prefix}url")
    headers = body.get("headers")
    if headers is not None and not (isinstance(headers, dict)
                                    and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())):
        raise _invalid("headers must map names to string values", f"{prefix}headers")
    for name in ("dest", "sha256"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise _invalid(f"{name} must be a string", f"{prefix}{name}")
        if isinstance(body.get(name), str) and "\x00" in body[name]:
            raise _invalid(f"{name} contains a NUL byte", f"{prefix}{name}")
    overwrite = body.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise _invalid("overwrite must be true or false", f"{prefix}overwrite")
    mirrors = body.get("mirrors", [])
    if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
        raise _invalid("mirrors must be a list of URLs", f"{prefix}mirrors")
    numbers: dict[str, int | None] = {}
    for name in ("connections", "rate_limit_bps"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise _invalid(f"{name} must be a whole number", f"{prefix}{name}")
        numbers[name] = value
    spec = DownloadSpec(url=url, dest=body.get("dest"), sha256=body.get("sha256"), headers=dict(headers or {}),
                        overwrite=overwrite, mirrors=list(mirrors), connections=numbers["connections"],
                        rate_limit_bps=numbers["rate_limit_bps"])
    validated = _check_download_dest(engine, spec, prefix)
    _check_existing(engine, validated, prefix)
    return validated


def _check_existing(engine: Engine, spec: DownloadSpec, prefix: str) -> None:
    """409 ``E_EXISTS`` for a file at the destination that the request may not replace (SPEC 14).

    With a sha256 the operation decides (a matching file completes at once);
    a success this engine recorded and whose file is intact answers the request.
    """
    if spec.overwrite or spec.sha256 or spec.dest is None or not os.path.lexists(spec.dest):
        return
    if engine.find(spec.dest) is not None:
        return  # an operation of this engine owns it: submit answers (complete at once, or its own check)
    raise RefusedError("E_EXISTS", f"{spec.dest} already exists; it is replaced only when the request says "
                                   "\"overwrite\": true", field=f"{prefix}dest")


def _install(body: dict[str, Any], prefix: str = "") -> InstallSpec:
    _check_fields(body, InstallSpec, prefix)
    argv = body.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise _invalid("argv must be a non-empty list of strings (never a shell string)", f"{prefix}argv")
    for name in ("cwd", "scope"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise _invalid(f"{name} must be a string", f"{prefix}{name}")
    env = body.get("env")
    if env is not None and not (isinstance(env, dict)
                                and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise _invalid("env must map names to string values", f"{prefix}env")
    timeout = body.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):
        raise _invalid("timeout_s must be a number of seconds above 0", f"{prefix}timeout_s")
    return _structure(body, InstallSpec, prefix)  # type: ignore[no-any-return]


def _project(engine: Engine, body: dict[str, Any]) -> ProjectSpec:
    _check_fields(body, ProjectSpec)
    if not isinstance(body.get("name"), str) or not body["name"]:
        raise _invalid("name must be a non-empty string", "name")
    steps = body.get("steps")
    if not isinstance(steps, list) or not steps:
        raise _invalid("steps must be a non-empty list", "steps")
    built: list[Any] = []
    for i, step in enumerate(steps):
        prefix = f"steps[{i}]."
        if not isinstance(step, dict):
            raise _invalid(f"step {i} must be an object", f"steps[{i}]")
        kind = step.get("kind")
        if kind == "download":
            built.append(_download(engine, step, prefix))
        elif kind == "install":
            built.append(_install(step, prefix))
        else:
            raise _invalid(f"step {i}: kind must be 'download' or 'install', not {kind!r}", f"{prefix}kind")
    return ProjectSpec(name=body["name"], steps=built)


_IMPORT_FIELDS = {"kind", "workflow", "comfyui"}


def _import(engine: Engine, body: dict[str, Any]) -> ProjectSpec:
    """``{"kind": "import", "workflow": {...}, "comfyui": DIR}`` -> the project of missing models.

    The API cannot half-accept: a workflow with refused entries (paths that
    would leave ``DIR/models``, non-http(s) URLs) is refused whole, naming
    the nodes, and a workflow whose models are all present is refused with
    ``E_INVALID_STATE`` (nothing to do).
    """
    import hashlib
    import json
    from pathlib import Path

    from .._projects._comfyui import plan_import
    from .._download._names import dest_within_root

    for name in body:
        if name not in _IMPORT_FIELDS:
            raise _invalid(f"unknown field {name!r} for an import", name)
    workflow, folder = body.get("workflow"), body.get("comfyui")
    if not isinstance(workflow, dict):
        raise _invalid("workflow must be the workflow's JSON object", "workflow")
    if not isinstance(folder, str) or not folder:
        raise _invalid("comfyui must be the ComfyUI folder (inside the download root)", "comfyui")
    if "\x00" in folder:
        raise _invalid("comfyui contains a NUL byte", "comfyui")
    root = engine.settings.download_root_path
    comfyui = Path(folder) if Path(folder).is_absolute() else root / folder
    if not dest_within_root(comfyui, root):
        raise _invalid(f"the ComfyUI folder must be inside the download root {root}", "comfyui")
    plan = plan_import(workflow, comfyui)
    if plan.refused:
        reasons = "; ".join(f"{e.node}: {e.reason}" for e in plan.refused)
        raise _invalid(f"the workflow asks for models that cannot be imported safely: {reasons}", "workflow")
    outside = [e for e in plan.downloads if not dest_within_root(e.dest, root)]
    if outside:  # a link inside the folder that leads elsewhere (SPEC 7.1, 14)
        names = "; ".join(f"{e.node}: {e.directory}/{e.name}" for e in outside)
        raise _invalid(f"these models would be written outside the download root {root} "
                       f"(a link leads out of it): {names}", "workflow")
    if not plan.downloads:
        raise RefusedError("E_INVALID_STATE", "every model this workflow needs is already present", field="workflow")
    # Stable for the same workflow content and folder, so a second POST finds the live project.
    key = hashlib.sha256(json.dumps(workflow, sort_keys=True).encode() + b"\0" +
                         str(comfyui.resolve()).encode()).hexdigest()[:10]
    return plan.project(f"import:workflow@{key}")


def _downloads_only(body: dict[str, Any]) -> bool:
    """A project of download steps only (and at least one): it runs no command."""
    steps = body.get("steps")
    return (body.get("kind") == "project" and isinstance(steps, list) and bool(steps)
            and all(isinstance(s, dict) and s.get("kind") == "download" for s in steps))


def spec_from_json(engine: Engine, body: Any, *, allow_installs: bool) -> Any:
    """The spec a JSON body asks for, or `RefusedError` (``E_INVALID_INPUT`` / ``E_FORBIDDEN``)."""
    if not isinstance(body, dict):
        raise _invalid("the body must be a JSON object", None)
    kind = body.get("kind", "download")
    if not isinstance(kind, str):
        raise _invalid("kind must be a string", "kind")
    if kind == "download":
        return _download(engine, body)
    if kind == "import":
        if "project" not in engine.kinds.names():
            raise _invalid("the project kind is not available in this engine", "kind")
        return _import(engine, body)
    if kind in _COMMAND_KINDS:
        if not allow_installs and not _downloads_only(body):
            raise RefusedError("E_FORBIDDEN",
                               f"{kind} operations run commands; this server accepts them only when "
                               "started with --allow-installs", field="kind")
        if kind not in engine.kinds.names():
            raise _invalid(f"the {kind} kind is not available in this engine", "kind")
        if kind == "install":
            return _install(body)
        return _project(engine, body)
    raise _invalid(f"unknown operation kind {kind!r} (expected download, install, project or import)", "kind")
