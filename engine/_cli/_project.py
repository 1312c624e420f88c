"""``recovery run PROJECT.toml``: run a project file (SPEC sections 7 and 13).

The same display, ``--json`` events and exit codes as ``recovery download``
(the shared runner). Rerunning the same command takes over the project the
state directory recorded under the same name: a paused one resumes at its
first unfinished step, a failed or exhausted one is retried, and one that
already succeeded is reported complete (exit 0).

`run_project` is the shared part for every command that runs a project
(``run`` here, ``import`` for ComfyUI workflows): give it a function that
builds the `ProjectSpec` and the parsed arguments. Commands of this module
register in ``_COMMANDS``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal

import attrs

from .._engine import Engine
from .._errors import RefusedError
from .._model import Operation
from .._projects._file import load_project
from ._join import Remote
from ._runner import add_common_options, run_cli
from .._specs import DownloadSpec, ProjectSpec

__all__ = ["add_parsers", "recorded_project", "run_project", "take_over_project", "take_over_project_on"]

#: What to do when the recorded, unfinished project has other steps than the new one.
OnChange = Literal["refuse", "take_over"]


def add_parsers(sub: Any) -> None:
    for add in _COMMANDS:
        add(sub)


def _add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="run a project file (downloads and installs), resuming where it stopped",
        description="Run the steps of a project file in order. Ctrl-C pauses; run the same command "
                    "again to continue at the first unfinished step.",
    )
    p.add_argument("project", type=Path, metavar="PROJECT.toml", help="the project file (TOML)")
    add_restart_option(p)
    add_common_options(p)
    p.set_defaults(func=_run)


def add_restart_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--restart", action="store_true",
                        help="forget the recorded run of this project and start again from its first step")


_COMMANDS: list[Callable[[Any], None]] = [_add_run]


def _run(args: argparse.Namespace) -> int:
    return run_project(lambda: load_project(args.project), args)


def run_project(make_spec: Callable[[], ProjectSpec], args: argparse.Namespace, *,
                on_change: OnChange = "refuse") -> int:
    """Run one project like ``recovery run``: take-over, display, Ctrl-C and exit codes.

    ``make_spec`` runs before the engine starts; a `RefusedError` from it is
    a usage error (exit 2). ``on_change`` decides what happens when the
    state directory holds an unfinished run of the same project with other
    steps: ``"refuse"`` (exit 2, pointing to ``--restart``) or
    ``"take_over"`` (continue the recorded run as recorded).
    """
    restart = bool(getattr(args, "restart", False))

    async def prepare(eng: Engine, specs: list[Any]) -> list[Any]:
        return await take_over_project(eng, specs[0], on_change=on_change, restart=restart)

    async def prepare_on(server: Remote, specs: list[Any]) -> list[Any]:
        return await take_over_project_on(server, specs[0], on_change=on_change, restart=restart)

    return run_cli(lambda: [make_spec()], args, prepare=prepare, join_prepare=prepare_on)


def recorded_project(eng: Engine, spec: ProjectSpec) -> Operation | None:
    """The latest operation the engine recorded for a project of this name (finished ones too)."""
    key = eng.kinds.get("project").resource_key(spec)
    found = [op for op in eng.list() if op.kind == "project" and op.resource == key]
    return found[-1] if found else None


def _refetching(spec: ProjectSpec) -> ProjectSpec:
    """``--restart`` asks for every step again: its downloads may replace the files the last run wrote."""
    steps = [attrs.evolve(s, overwrite=True) if isinstance(s, DownloadSpec) else s for s in spec.steps]
    return attrs.evolve(spec, steps=steps)


async def take_over_project(eng: Engine, spec: ProjectSpec, *, on_change: OnChange = "refuse",
                            restart: bool = False) -> list[Any]:
    """What to run for ``spec``: the spec itself, or the recorded operation to continue or show."""
    kind = eng.kinds.get("project")
    checked = kind.validate(spec, eng.settings)
    recorded = recorded_project(eng, checked)
    if recorded is None:
        return [spec]
    view = recorded.to_dict()

    async def cancel() -> None:
        await eng.cancel(recorded.id)

    return await _decide(spec, checked.name, recorded, view, view["spec"] == kind.describe(checked), cancel,
                         on_change=on_change, restart=restart)


async def take_over_project_on(server: Remote, spec: ProjectSpec, *, on_change: OnChange = "refuse",
                               restart: bool = False) -> list[Any]:
    """`take_over_project` for a joined server: its recorded runs, seen through the API."""
    from .._engine import builtin_kinds
    from .._settings import Settings

    kind = builtin_kinds().get("project")  # to describe the steps the way the server records them
    checked = kind.validate(spec, Settings())
    found = [op for op in await server.operations() if op.get("resource") == kind.resource_key(checked)]
    if not found:
        return [spec]
    view = max(found, key=lambda op: op.get("created_at") or 0)

    async def cancel() -> None:
        await server.cancel(view["id"])

    return await _decide(spec, checked.name, view, view, view["spec"] == kind.describe(checked), cancel,
                         on_change=on_change, restart=restart)


async def _decide(spec: ProjectSpec, name: str, recorded: Any, view: dict[str, Any], same: bool,
                  cancel: Callable[[], Awaitable[None]], *, on_change: OnChange, restart: bool) -> list[Any]:
    """The take-over rules of ``recovery run`` (module docstring), wherever the run was recorded."""
    steps = _where(view)
    if view["status"] == "success":
        if same and not restart:
            _say(f"project {name!r} is already complete ({steps}); nothing to do "
                 f"(--restart runs it again)")
            return [recorded]
        return [_refetching(spec) if restart else spec]
    if restart:
        _say(f"project {name!r}: forgetting the recorded run ({steps}) "
             "and starting again from the first step")
        await cancel()
        return [_refetching(spec)]
    if same:
        return [recorded]
    if on_change == "take_over":
        _say(f"project {name!r}: continuing the recorded run ({steps}) "
             "with the steps it was started with")
        return [recorded]
    raise RefusedError(
        "E_INVALID_STATE",
        f"project {name!r} has a recorded run with other steps ({steps}); "
        "run the project unchanged to continue it, or add --restart to start the new steps from the first",
        field="steps",
    )


def _where(view: dict[str, Any]) -> str:
    """``success, 5/5 steps`` or ``paused`` (steps done are known once the run reported them)."""
    total = len(view["spec"].get("steps", []))
    done = total if view["status"] == "success" else view.get("steps_done")
    return str(view["status"]) + (f", {done}/{total} steps done" if done is not None else "")


def _say(message: str) -> None:
    print(f"recovery: {message}", file=sys.stderr)


# --- recovery import (SPEC 7.1) ------------------------------------------------------


def _add_import(sub: Any) -> None:
    p = sub.add_parser(
        "import", help="fetch the models a ComfyUI workflow needs into DIR/models",
        description="Download the models a ComfyUI workflow lists (properties.models of its nodes and "
                    "subgraphs) into DIR/models/<directory>/<name>; files already there are skipped. "
                    "Entries whose name or directory would leave DIR/models, or whose URL is not "
                    "http(s), are refused and never downloaded; the others still are, and the exit "
                    "code is 1 at the end. Ctrl-C pauses; run the same command again to resume.",
    )
    p.add_argument("workflow", type=Path, metavar="WORKFLOW.json", help="a workflow saved by ComfyUI")
    p.add_argument("--comfyui", type=Path, required=True, metavar="DIR", help="the ComfyUI folder")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be downloaded, skipped, bypassed or refused, and the node packs; "
                        "no download")
    p.add_argument("--sizes", action="store_true",
                   help="ask each missing model's URL for its size (HEAD, with the hub tokens) and print the "
                        "total and the free space where the files go")
    p.add_argument("--verify", action="store_true",
                   help="hash the present files whose entry carries a sha256 'hash'; a mismatch is reported "
                        "and the file left alone")
    p.add_argument("--include-bypassed", action="store_true",
                   help="also fetch the models of bypassed (mode 4) and muted (mode 2) nodes")
    p.add_argument("--extra-model-paths", type=Path, default=None, metavar="FILE",
                   help="ComfyUI's extra_model_paths.yaml to search (default: DIR/extra_model_paths.yaml)")
    add_restart_option(p)
    add_common_options(p)
    p.set_defaults(func=_import)


def _import(args: argparse.Namespace) -> int:
    import json

    from .._projects._comfyui import import_project_name, plan_import, plan_lines

    comfy = args.comfyui.expanduser()
    try:
        if not comfy.is_dir():
            raise RefusedError("E_INVALID_INPUT", f"the ComfyUI folder {comfy} does not exist", field="comfyui")
        extra = args.extra_model_paths
        if extra is not None and not extra.expanduser().is_file():
            raise RefusedError("E_INVALID_INPUT", f"the extra model paths file {extra} does not exist",
                               field="extra_model_paths")
        plan = plan_import(args.workflow, comfy, include_bypassed=args.include_bypassed,
                           extra_model_paths=extra, verify=args.verify)
    except RefusedError as exc:
        print(f"recovery: {exc.message}", file=sys.stderr)
        return 2
    doc = plan.to_dict()
    lines = plan_lines(plan)
    if args.sizes:
        size_text, doc["sizes"] = _sizes(plan, args)
        lines += size_text
    if args.dry_run:
        print(json.dumps(doc) if args.json else "\n".join(lines), flush=True)
        return 0
    if args.json:
        print(json.dumps({"type": "import_plan", **doc}), flush=True)
    print("\n".join(lines), file=sys.stderr, flush=True)
    name = import_project_name(args.workflow, comfy)
    if plan.downloads:
        # A rerun after a crash finds the first models present and plans fewer steps:
        # the recorded run is continued as it was started (its step resumes from its offset).
        code = run_project(lambda: plan.project(name), args, on_change="take_over")
    else:
        code = run_cli(list, args, prepare=_nothing_missing(name), join_prepare=_nothing_missing_on(name))
    if code == 0 and plan.refused:
        _say(f"{len(plan.refused)} model entr{'y was' if len(plan.refused) == 1 else 'ies were'} "
             "refused (listed above) and not downloaded")
        return 1
    return code


def _sizes(plan: Any, args: argparse.Namespace) -> tuple[list[str], dict[str, object]]:
    """``--sizes``: ask every missing model's size (with the credentials a download would use)."""
    import trio

    from .._download._credentials import CredentialStore
    from .._projects._sizes import ask_sizes, size_lines
    from .._store import default_state_dir

    store = CredentialStore.in_state_dir(args.state_dir or default_state_dir())
    answers = trio.run(lambda: ask_sizes(plan.downloads, credentials=store))
    return size_lines(plan, answers)


def _nothing_missing(name: str) -> Callable[[Engine, list[Any]], Any]:
    """Nothing is missing: an unfinished run recorded for this import is no longer needed."""

    async def prepare(eng: Engine, specs: list[Any]) -> list[Any]:
        recorded = recorded_project(eng, ProjectSpec(name=name, steps=[]))
        if recorded is not None and not recorded.terminal:
            await eng.cancel(recorded.id)  # drops its partial file; finished files stay
        _say_nothing_missing(name, cancelled=recorded is not None and not recorded.terminal)
        return []

    return prepare


def _nothing_missing_on(name: str) -> Callable[[Remote, list[Any]], Any]:
    """`_nothing_missing` for a joined server."""

    async def prepare(server: Remote, specs: list[Any]) -> list[Any]:
        key = f"project:{name}"
        live = [op for op in await server.operations()
                if op.get("resource") == key and op["status"] not in ("success", "cancelled")]
        for op in live:
            await server.cancel(op["id"])
        _say_nothing_missing(name, cancelled=bool(live))
        return []

    return prepare


def _say_nothing_missing(name: str, *, cancelled: bool) -> None:
    if cancelled:
        _say(f"nothing to download; the unfinished run recorded for {name!r} is no longer "
             "needed and was cancelled (finished files stay)")
    else:
        _say("nothing to download")


_COMMANDS.append(_add_import)
