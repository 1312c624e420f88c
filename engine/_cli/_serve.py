"""``recovery serve``: the engine with its control channel and dashboard (SPEC 13, 14).

Prints the dashboard link with its token once the socket is bound (the real
port, also with ``--port 0``). Ctrl-C (SIGINT) or SIGTERM shuts down
gracefully: the server closes its connections, the engine checkpoints every
operation and ``server.json`` is removed; a second Ctrl-C stops at once.
Exit codes: 130 after Ctrl-C (SPEC 13's convention), 0 after SIGTERM (what
service managers expect from a clean stop), 1 when it cannot start (state
dir in use, port taken), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import errno
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio

from .._errors import RefusedError, StateDirError

__all__ = ["add_parsers"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the engine with the HTTP/WebSocket control channel and the Download Dashboard",
        description="Run the engine with its control channel and dashboard. Prints the dashboard "
                    "link (with its one-time token) once listening. Ctrl-C stops it; every "
                    "operation is checkpointed and resumes on the next start.",
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; anything else is reachable from "
                        "other computers and prints a warning)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME", dest="allow_hosts",
                   help="also accept this Host name (e.g. a LAN name); repeatable")
    p.add_argument("--allow-installs", action="store_true",
                   help="accept install and project operations over the API (they run commands)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="assignments",
                   help="a setting for this run only (not saved); repeatable")
    p.add_argument("--state-dir", metavar="DIR", help="state directory (default: $RECOVERY_STATE_DIR or "
                                                      "the platform's user state dir)")
    p.set_defaults(func=run)


def _usage(message: str) -> int:
    print(f"recovery serve: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    from .._settings import parse_setting_assignments
    from .._store import default_state_dir

    try:
        overrides = parse_setting_assignments(list(args.assignments))
    except RefusedError as exc:
        return _usage(f"--set {exc.message}")
    if not 0 <= args.port <= 65535:
        return _usage(f"--port must be between 0 and 65535, not {args.port}")
    state_dir = Path(args.state_dir).expanduser() if args.state_dir else default_state_dir()
    outcome: dict[str, int] = {}
    try:
        trio.run(partial(_main, args, state_dir, overrides, outcome))
    except BaseException as exc:  # noqa: BLE001 - nurseries wrap the one error that matters
        cause = _single(exc)
        if isinstance(cause, StateDirError):
            print(f"recovery serve: {cause}", file=sys.stderr)
        elif isinstance(cause, RefusedError):
            print(f"recovery serve: {cause.code}: {cause.message}", file=sys.stderr)
        elif isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            print(f"recovery serve: port {args.port} on {args.host} is already in use; "
                  "choose another with --port", file=sys.stderr)
        elif isinstance(cause, OSError) and cause.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
            print(f"recovery serve: cannot listen on {args.host}:{args.port}: {cause}", file=sys.stderr)
        else:
            raise
        return EXIT_FAILED
    return outcome.get("exit", EXIT_OK)


def _single(exc: BaseException) -> BaseException:
    """The one error inside nested single-member exception groups (or ``exc`` itself)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _main(args: argparse.Namespace, state_dir: Path, overrides: dict[str, Any],
                outcome: dict[str, int]) -> None:
    from .._engine import open_engine
    from ._logsetup import setup_logging
    from .._server import is_loopback, serve_control

    stop = trio.Event()
    from .._platform import interrupt_signals, terminate_signals

    interrupts = interrupt_signals()  # Ctrl-C; Ctrl-Break on Windows
    with trio.open_signal_receiver(*interrupts, *terminate_signals()) as signals:
        log_path = setup_logging(state_dir)  # creates the state dir, or says why it cannot
        async with open_engine(state_dir, overrides=overrides) as engine:
            async with trio.open_nursery() as nursery:

                async def watch_signals() -> None:
                    async for signum in signals:
                        if stop.is_set():
                            nursery.cancel_scope.cancel()  # a second Ctrl-C: stop now
                            return
                        outcome["exit"] = EXIT_INTERRUPTED if signum in interrupts else EXIT_OK
                        print("\nshutting down (Ctrl-C again to stop at once)…", file=sys.stderr, flush=True)
                        stop.set()

                async def serve(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
                    await serve_control(engine, host=args.host, port=args.port, allow_hosts=args.allow_hosts,
                                        allow_installs=args.allow_installs, shutdown_trigger=stop.wait,
                                        task_status=task_status)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch_signals)
                url: str = await nursery.start(serve)
                _banner(url, engine.state_dir, log_path, args, is_loopback(args.host))
                for problem in engine.load_problems:
                    print(f"snapshot not loaded: {problem.path}: {problem.reason}", file=sys.stderr, flush=True)


def _banner(url: str, state_dir: Path, log_path: Path, args: argparse.Namespace, loopback: bool) -> None:
    from .._server import load_or_create_token

    token = load_or_create_token(state_dir)
    if not loopback:
        print(f"WARNING: listening on {args.host}: other computers that can reach this address can "
              "use the control channel if they learn the token. Prefer the default 127.0.0.1.",
              file=sys.stderr, flush=True)
    lines = [
        f"Recovery engine serving {state_dir}",
        f"Dashboard: {url}/?token={token}",
        "  (open this link once: it signs your browser in. API clients send "
        f"'Authorization: Bearer <token>' with the token from {state_dir / 'token'})",
        f"API: {url}/api/operations   Logs: {log_path}",
        "Installs and projects over the API: " + ("allowed" if args.allow_installs else
                                                 "refused (start with --allow-installs to accept them)"),
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)
