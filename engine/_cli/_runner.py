"""Run a batch of operations to the end for the command line.

Shared by ``recovery download``, ``run`` and ``import``: submit (taking
over what a previous run recorded for the same destination or project),
show progress, turn Ctrl-C into "pause everything and exit 130", and map
the outcome to the exit code.

One engine owns a state directory (SPEC 13). `run_cli` joins the one that
holds it (``recovery serve``, or another command: while a command's own
engine runs, it serves a loopback control channel and writes
``server.json`` for that) through `._join`; only when nobody holds the
directory does it open its own engine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import trio

from ._display import JsonLines, make_display
from .._engine import Engine, open_engine
from .._errors import RecoveryError, RefusedError, StateDirError, StateDirLocked
from .._model import Operation, Status
from .._settings import Settings, parse_setting_assignments

__all__ = ["add_common_options", "overrides_from", "run_cli", "run_specs", "setup_cli_logging"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: A command's own engine serves its loopback control channel once it has run this long: a
#: short command never pays for loading the server, a long one can be joined.
LOCAL_CHANNEL_AFTER_S = 0.5
#: How long a command waits for the engine holding the state directory to announce its
#: control channel (or to let the directory go) before giving up.
JOIN_WAIT_S = 20.0
#: How many times in a row a joined engine may go away before the command gives up.
JOIN_ATTEMPTS = 5


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for this run only (any name of the settings table)")
    parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="engine state directory (default: $RECOVERY_STATE_DIR or the user state dir); "
                             "when an engine already holds it, its operations are handed to that one")
    parser.add_argument("--json", action="store_true", help="print one JSON event per line instead of bars")


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--set`` values, each checked like a setting (a bad value is a usage error, exit 2)."""
    overrides = parse_setting_assignments(list(getattr(args, "set_", []) or []))
    Settings().updated(overrides)  # raises RefusedError naming the field and the reason
    return overrides


def setup_cli_logging(state_dir: Path | None) -> None:
    """Log to ``<state_dir>/logs/recovery.log``, never over the progress bars."""
    from ._logsetup import setup_logging
    from .._store import default_state_dir

    setup_logging(state_dir or default_state_dir())


async def _take_over(eng: Engine, op: Operation) -> Operation:
    """A rerun of the same command continues what the last run recorded."""
    if op.status is Status.PAUSED:
        return await eng.resume(op.id)
    if op.status in (Status.FAILED, Status.EXHAUSTED):
        return await eng.force_retry(op.id)  # rerunning is an explicit "try again"
    return op


async def run_specs(
    specs: Sequence[Any],
    *,
    state_dir: Path | None,
    overrides: dict[str, Any],
    json_mode: bool = False,
    engine_kwargs: dict[str, Any] | None = None,
    on_ready: Callable[[Engine], None] | None = None,
    prepare: Callable[[Engine, list[Any]], Awaitable[list[Any]]] | None = None,
    serve_local: bool = False,
) -> int:
    """Submit ``specs``, show them until each is settled, return the exit code.

    ``prepare`` (async) sees the running engine before anything is submitted
    and returns what to run instead: specs to submit, or recorded
    `Operation` views to follow as they are (e.g. a project that already
    succeeded). A `RefusedError` from it is a usage error. ``serve_local``
    serves the engine's control channel on loopback while it runs, so that
    other commands on the same state directory can join it.
    """
    from .._platform import interrupt_signals

    with trio.open_signal_receiver(*interrupt_signals()) as sigint:  # Ctrl-C; Ctrl-Break on Windows
        async with open_engine(state_dir, overrides=overrides, **(engine_kwargs or {})) as eng:
            async with trio.open_nursery() as channel:
                if serve_local:
                    channel.start_soon(_serve_locally, eng)
                try:
                    return await _run_on(eng, specs, sigint, json_mode=json_mode, on_ready=on_ready,
                                         prepare=prepare)
                finally:
                    channel.cancel_scope.cancel()
    raise AssertionError("unreachable")  # pragma: no cover - mypy: the block above returns


async def _serve_locally(eng: Engine) -> None:
    """The loopback control channel of a command's own engine (written to ``server.json``)."""
    import logging

    await trio.sleep(LOCAL_CHANNEL_AFTER_S)
    from .._server import serve_control

    try:
        # Installs are accepted: only holders of the token (this user's state directory)
        # reach it, and they are the user who may run `recovery run` anyway.
        await serve_control(eng, host="127.0.0.1", port=0, allow_installs=True)
    except OSError as exc:  # no loopback socket: the command still runs, it just cannot be joined
        logging.getLogger("engine.cli").warning("cannot serve the local control channel: %s", exc)


async def _run_on(
    eng: Engine,
    specs: Sequence[Any],
    sigint: Any,
    *,
    json_mode: bool,
    on_ready: Callable[[Engine], None] | None,
    prepare: Callable[[Engine, list[Any]], Awaitable[list[Any]]] | None,
) -> int:
    if on_ready is not None:
        on_ready(eng)
    for problem in eng.load_problems:  # found while loading, before anyone listened
        if json_mode:
            JsonLines().event({"type": "snapshot_corrupt", "ts": time.time(), "path": problem.path,
                               "reason": problem.reason})
        else:
            print(f"recovery: snapshot not loaded: {problem.path}: {problem.reason}", file=sys.stderr)
    sub = eng.subscribe_nowait() if json_mode else None
    ids: list[str] = []
    try:
        todo = list(specs) if prepare is None else await prepare(eng, list(specs))
        for spec in todo:
            op = spec if isinstance(spec, Operation) else await eng.submit(spec)
            op = await _take_over(eng, op)
            ids.append(op.id)
    except RefusedError as exc:
        field = f" (field: {exc.field})" if exc.field else ""
        print(f"recovery: {exc.code}: {exc.message}{field}", file=sys.stderr)
        return EXIT_USAGE
    interrupted = False
    async with trio.open_nursery() as nursery:

        async def watch_signal() -> None:
            nonlocal interrupted
            async for _ in sigint:
                interrupted = True
                nursery.cancel_scope.cancel()
                return

        nursery.start_soon(watch_signal)
        if sub is not None:
            await _follow_json(eng, ids, sub)
        else:
            await _follow_bars(eng, ids)
        nursery.cancel_scope.cancel()
    if interrupted:
        for op_id in ids:
            op = eng.get(op_id)
            if op.status in (Status.PENDING, Status.IN_PROGRESS, Status.RECOVERING):
                try:
                    await eng.pause(op_id)
                except RefusedError:
                    pass
        if sub is None:
            make_display().summary((eng.get(i).to_dict() for i in ids), interrupted=True)
        print("interrupted: paused; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    ops = [eng.get(i) for i in ids]
    if sub is None:
        make_display().summary(o.to_dict() for o in ops)
    return EXIT_OK if all(o.status is Status.SUCCESS for o in ops) else EXIT_FAILED


async def _follow_bars(eng: Engine, ids: list[str]) -> None:
    with make_display() as display:
        while True:
            ops = [eng.get(i) for i in ids]
            display.update(o.to_dict() for o in ops)
            if all(o.settled for o in ops):
                return
            await trio.sleep(0.1)


async def _follow_json(eng: Engine, ids: list[str], sub: Any) -> None:
    out = JsonLines()
    mine = set(ids)
    for op_id in ids:  # the current state first, so a reader knows where things stand
        out.event({"type": "status", "op_id": op_id, "status": eng.get(op_id).status.value, "previous": None,
                   "ts": time.time()})
    try:
        while not all(eng.get(i).settled for i in ids):
            with trio.move_on_after(0.5):
                event = await sub.receive()
                data = event.to_dict()
                if data.get("op_id") in mine or event.type == "breaker":
                    out.event(data)
        for event in sub.drain():
            data = event.to_dict()
            if data.get("op_id") in mine:
                out.event(data)
    finally:
        eng.unsubscribe(sub)


def run_cli(make_specs: Callable[[], Sequence[Any]], args: argparse.Namespace, **kwargs: Any) -> int:
    """Parse the common options, build the specs, run them in trio (own engine, or joined).

    ``kwargs`` go to `run_specs`, but ``join_prepare``, which plays ``prepare``'s part
    on a joined server (`._join.follow_on_server`).
    """
    try:
        overrides = overrides_from(args)
        specs = make_specs()
    except RefusedError as exc:
        field = f" (field: {exc.field})" if exc.field else ""
        print(f"recovery: {exc.message}{field}", file=sys.stderr)
        return EXIT_USAGE
    try:
        setup_cli_logging(args.state_dir)
        return trio.run(lambda: _run_or_join(specs, args, overrides, kwargs))
    except StateDirError as exc:
        print(f"recovery: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted: state preserved; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RecoveryError as exc:
        print(f"recovery: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def _run_or_join(specs: Sequence[Any], args: argparse.Namespace, overrides: dict[str, Any],
                       kwargs: dict[str, Any]) -> int:
    """Join the engine that holds the state directory, or run an own one when nobody does."""
    from ._join import ServerGone, find_server, follow_on_server
    from .._store import default_state_dir

    state_dir = Path(args.state_dir).expanduser() if args.state_dir else default_state_dir()
    join_prepare = kwargs.pop("join_prepare", None)  # the joined twin of ``prepare``
    locked_since: float | None = None
    told = False
    gone = 0
    while True:
        server = await find_server(state_dir)
        if server is not None:
            if any(isinstance(s, Operation) for s in specs):
                raise AssertionError("only specs are handed to a server")  # pragma: no cover
            try:
                return await follow_on_server(server, specs, json_mode=args.json, prepare=join_prepare)
            except ServerGone as exc:
                gone += 1
                if gone > JOIN_ATTEMPTS:  # it answers HTTP but never lets us follow: say so, do not spin
                    raise RecoveryError(f"the engine at {server.url} holds {state_dir} but cannot be "
                                        f"followed ({exc})") from None
                print(f"recovery: the engine at {server.url} stopped; continuing here", file=sys.stderr)
                locked_since, told = None, False
                continue
        try:
            return await run_specs(specs, state_dir=state_dir, overrides=overrides, json_mode=args.json,
                                   serve_local=True, **kwargs)
        except StateDirLocked as exc:
            # Held by an engine that has not announced its control channel yet (it is
            # starting), or by one that never will (an embedding program): wait a while.
            now = trio.current_time()
            locked_since = now if locked_since is None else locked_since
            if now - locked_since > JOIN_WAIT_S:
                raise StateDirLocked(f"{exc}; it serves no control channel to join") from None
            if not told and now - locked_since > 1.0:
                print(f"recovery: waiting for the engine that holds {state_dir} to accept operations…",
                      file=sys.stderr, flush=True)
                told = True
            await trio.sleep(0.1)
