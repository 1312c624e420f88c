"""Client commands that talk to a running ``recovery serve`` (SPEC section 13).

``list``, ``status ID``, ``pause ID``, ``resume ID``, ``cancel ID``,
``retry ID [--force]``, ``cancel-recovery ID``, ``stats``,
``settings [KEY=VALUE...]``. The server is found through
``<state_dir>/server.json`` and authenticated with ``<state_dir>/token``.
Readable tables by default, ``--json`` for scripts. Exit codes: 0 ok, 1 the
server refused (the code is printed), 2 usage error (``settings`` with an
unknown name or a value the server finds invalid), 3 no server reachable.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from .._units import human_bytes, human_duration
from .._errors import RefusedError
from ._answers import Refused, answer, op_path

__all__ = ["add_parsers"]

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NO_SERVER = 0, 1, 2, 3
_TIMEOUT_S = 15.0

# command -> (help, URL action)
_CONTROLS = {
    "pause": ("pause an operation (progress is kept)", "pause"),
    "resume": ("resume a paused operation", "resume"),
    "cancel": ("cancel an operation and delete its partial data", "cancel"),
    "cancel-recovery": ("stop automatic retries; the operation fails with its last error", "cancel-recovery"),
}


class _NoServer(Exception):
    pass


def add_parsers(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", metavar="DIR",
                        help="state directory of the server (default: $RECOVERY_STATE_DIR or the "
                             "platform's user state dir)")
    common.add_argument("--json", action="store_true", help="print JSON for scripts")

    p = sub.add_parser("list", parents=[common], help="list the operations of a running server")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("status", parents=[common], help="show one operation")
    p.add_argument("id", metavar="ID")
    p.set_defaults(func=_cmd_status)

    for name, (help_text, action) in _CONTROLS.items():
        p = sub.add_parser(name, parents=[common], help=help_text)
        p.add_argument("id", metavar="ID")
        p.set_defaults(func=_cmd_control, action=action)

    p = sub.add_parser("retry", parents=[common],
                       help="retry now (skip the wait, or a fresh budget); --force retries whatever the error")
    p.add_argument("id", metavar="ID")
    p.add_argument("--force", action="store_true",
                   help="retry regardless of the error's classification (bypasses an open breaker once)")
    p.set_defaults(func=_cmd_control, action=None)

    p = sub.add_parser("stats", parents=[common], help="show the recovery statistics")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("settings", parents=[common],
                       help="show the settings, or change and save them with KEY=VALUE")
    p.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_settings)


# --- talking to the server --------------------------------------------------------------


def _state_dir(args: argparse.Namespace) -> Path:
    from .._store import default_state_dir

    return Path(args.state_dir).expanduser() if args.state_dir else default_state_dir()


def _no_server(state_dir: Path, why: str = "") -> _NoServer:
    detail = f" ({why})" if why else ""
    return _NoServer(f"no recovery server is running for state dir {state_dir}{detail}; "
                     "start one with `recovery serve`")


def _request(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    from .._server import read_server_info

    state_dir = _state_dir(args)
    info = read_server_info(state_dir)
    if info is None:
        raise _no_server(state_dir)
    try:
        token = (state_dir / "token").read_text(encoding="ascii").strip()
    except OSError:
        raise _no_server(state_dir, "its token file cannot be read") from None
    try:
        with httpx.Client(base_url=info["url"], timeout=_TIMEOUT_S, trust_env=False,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            response = client.request(method, path, json=body)
    except httpx.TransportError as exc:
        raise _no_server(state_dir, f"{info['url']} does not answer: {type(exc).__name__}") from None
    return answer(response)


def _run(args: argparse.Namespace, work: Any) -> int:
    try:
        work()
    except _NoServer as exc:
        print(f"recovery {args.command}: {exc}", file=sys.stderr)
        return EXIT_NO_SERVER
    except Refused as exc:
        if args.json:
            err = {"code": exc.code, "message": exc.message}
            if exc.field:
                err["field"] = exc.field
            print(json.dumps({"error": err, "http_status": exc.status}))
        field = f" (field {exc.field})" if exc.field else ""
        message = exc.message
        if exc.code == "E_NOT_RETRYABLE":  # the API's word is force_retry; here it is a flag
            message = message.replace("use force_retry", f"use `recovery retry {getattr(args, 'id', 'ID')} --force`")
        print(f"recovery {args.command}: refused: {exc.code}{field}: {message}", file=sys.stderr)
        # A value the server finds invalid (422) is a usage error, like a malformed one.
        return EXIT_USAGE if exc.status == 422 and args.command == "settings" else EXIT_REFUSED
    return EXIT_OK


# --- output -------------------------------------------------------------------------------


def _esc(text: Any) -> str:
    from rich.markup import escape

    return escape(str(text))


def _console() -> Any:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:  # piped: whole lines for grep and friends, no colour
        console = Console(highlight=False, soft_wrap=False, width=max(console.width, 160), no_color=True)
    return console


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def _size(n: int | float | None) -> str:
    return "?" if n is None else human_bytes(n)


def _name(op: dict[str, Any], *, short: bool = False) -> str:
    spec = op.get("spec") or {}
    if op.get("kind") == "download":
        dest = str(spec.get("dest") or spec.get("url") or "")
        return Path(dest).name if short and spec.get("dest") else dest
    if spec.get("name"):
        return str(spec["name"])
    if isinstance(spec.get("argv"), list):
        return " ".join(map(str, spec["argv"]))
    return ""


def _progress(op: dict[str, Any]) -> str:
    done, total = op.get("bytes_done") or 0, op.get("bytes_total")
    if total:
        return f"{done * 100 / total:5.1f}% of {_size(total)}"
    return _size(done) if done else "-"


def _attempt(op: dict[str, Any]) -> str:
    if not op.get("attempt") or op.get("status") in ("success", "cancelled"):
        return "-"
    text = f"Attempt {op['attempt']}/{op.get('max_retries')}"
    if op.get("status") == "recovering" and op.get("next_retry_at"):
        text += f", next in {human_duration(op['next_retry_at'] - time.time())}"
    return text


_STATUS_STYLE = {
    "pending": "dim", "in_progress": "blue", "recovering": "yellow", "paused": "magenta",
    "success": "green", "failed": "red", "exhausted": "red", "cancelled": "dim",
}


def _status(op: dict[str, Any]) -> str:
    status = str(op.get("status"))
    return f"[{_STATUS_STYLE.get(status, 'default')}]{status}[/]"


def _show_operations(ops: list[dict[str, Any]]) -> None:
    from rich.table import Table

    console = _console()
    if not ops:
        console.print("no operations")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "KIND", "STATUS", "PROGRESS", "RATE", "RECOVERY"):
        table.add_column(column, no_wrap=True)
    table.add_column("NAME / ERROR", overflow="fold")
    for op in ops:
        name = _esc(_name(op, short=True))
        if op.get("error") and op.get("status") in ("recovering", "failed", "exhausted"):
            name += f"\n[red]{op['error']['code']}[/]: {_esc(op['error']['message'])}"
        rate = f"{_size(op.get('rate_bps'))}/s" if op.get("status") == "in_progress" and op.get("rate_bps") else "-"
        table.add_row(_esc(op["id"]), _esc(op.get("kind")), _status(op), _progress(op), rate, _attempt(op), name)
    console.print(table)


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _show_operation(op: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows: list[tuple[str, str]] = [
        ("id", _esc(op["id"])), ("kind", _esc(op.get("kind"))), ("status", _status(op)), ("name", _esc(_name(op))),
        ("progress", _progress(op)),
    ]
    if op.get("status") == "in_progress":
        rows += [("rate", f"{_size(op.get('rate_bps'))}/s"), ("eta", human_duration(op.get("eta_s")))]
    rows.append(("recovery", _attempt(op)))
    if op.get("error"):
        err = op["error"]
        rows += [("error", f"[red]{err['code']}[/] ({err['category']}, "
                           f"{'retry-worthy' if err['retryable'] else 'not retry-worthy'}): {_esc(err['message'])}"),
                 ("suggestion", _esc(err.get("suggestion")))]
    spec = op.get("spec") or {}
    if spec.get("url"):
        rows.append(("url", _esc(spec["url"])))
    if op.get("steps_total"):
        rows.append(("steps", f"{op.get('steps_done')}/{op['steps_total']} done"))
    rows += [("retries total", str(op.get("retries_total", 0))), ("created", _when(op.get("created_at"))),
             ("updated", _when(op.get("updated_at")))]
    if op.get("output_tail"):
        rows.append(("output", _esc("\n".join(op["output_tail"][-10:]))))
    for key, value in rows:
        table.add_row(key, value)
    _console().print(table)


def _show_mapping(data: dict[str, Any], *, stats: bool = False) -> None:
    from rich.table import Table

    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in data.items():
        if stats and key.startswith("bytes_"):
            value = f"{_size(value)} ({value} bytes)"
        elif stats and key == "average_recovery_time_s" and value is not None:
            value = f"{value:.1f}s"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
        elif value is None:
            value = "-"
        table.add_row(key, _esc(value))
    _console().print(table)


# --- commands -------------------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> int:
    def work() -> None:
        ops = _request(args, "GET", "/api/operations")
        _print_json(ops) if args.json else _show_operations(ops)

    return _run(args, work)


def _cmd_status(args: argparse.Namespace) -> int:
    def work() -> None:
        op = _request(args, "GET", op_path(args.id))
        _print_json(op) if args.json else _show_operation(op)

    return _run(args, work)


def _cmd_control(args: argparse.Namespace) -> int:
    action = args.action or ("force-retry" if args.force else "retry")

    def work() -> None:
        op = _request(args, "POST", op_path(args.id, action))
        if args.json:
            _print_json(op)
        else:
            _console().print(f"{action}: {_esc(op['id'])} is now {_status(op)}")

    return _run(args, work)


def _cmd_stats(args: argparse.Namespace) -> int:
    def work() -> None:
        stats = _request(args, "GET", "/api/recovery/performance")
        _print_json(stats) if args.json else _show_mapping(stats, stats=True)

    return _run(args, work)


def _cmd_settings(args: argparse.Namespace) -> int:
    from .._settings import parse_setting_assignments

    try:
        changes = parse_setting_assignments(list(args.assignments))
    except RefusedError as exc:
        print(f"recovery settings: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE

    def work() -> None:
        if changes:
            settings = _request(args, "PUT", "/api/settings", changes)
        else:
            settings = _request(args, "GET", "/api/settings")
        if args.json:
            _print_json(settings)
        else:
            if changes:
                _console().print(_esc("saved: " + ", ".join(f"{k}={settings[k]}" for k in changes)))
            _show_mapping(settings)

    return _run(args, work)
