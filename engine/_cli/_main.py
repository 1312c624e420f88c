"""The ``recovery`` command line (SPEC section 13): one dispatcher, commands in modules.

Each command module of this package adds its subcommands with ``add_parsers(sub)``;
a subcommand sets ``func`` (taking the parsed args, returning an exit code).
Exit codes: 0 success, 1 some failed/exhausted or a control refused,
2 usage error, 3 no server reachable, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import signal
import sys
from typing import Any, Sequence

__all__ = ["COMMANDS", "build_parser", "main"]

_COMMAND_MODULES = ("_download", "_project", "_serve", "_client", "_report")

# The module that adds each command. A command line that names one loads only
# that module (and what it imports): `recovery download` never loads the
# server, the client, the project importer or the report. A test checks this
# table against the parsers the modules add.
COMMANDS: dict[str, str] = {
    "download": "_download", "demo": "_download",
    "run": "_project", "import": "_project",
    "serve": "_serve",
    "list": "_client", "status": "_client", "pause": "_client", "resume": "_client", "cancel": "_client",
    "cancel-recovery": "_client", "retry": "_client", "stats": "_client", "settings": "_client",
    "report": "_report", "history": "_report",
}

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_SERVER, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _version() -> str:
    """The installed distribution's version (the source tree's when run from a checkout)."""
    from importlib import metadata

    try:
        return metadata.version("recovery-engine")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """``--version``, looking the version up only when asked (importlib.metadata is slow to load)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str = "show program's version number and exit") -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"recovery {_version()}")
        parser.exit()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with a known ``command``, only the module that adds it is loaded."""
    parser = _Parser(
        prog="recovery",
        description="Crash-safe, resumable downloads, installs and projects for model launchers.",
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules = (COMMANDS[command],) if command in COMMANDS else _COMMAND_MODULES
    for name in modules:
        importlib.import_module(f"engine._cli.{name}").add_parsers(sub)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command when it comes first (anything else, ``-h`` included, gets every command)."""
    return argv[0] if argv and argv[0] in COMMANDS else None


class StartupGuard:
    """Holds Ctrl-C back while the command's modules load, then hands it on.

    Python turns SIGINT into ``KeyboardInterrupt`` wherever the main thread is at
    that moment. During start-up that is deep inside the import machinery: there
    it can be swallowed ("Exception ignored in ... _get_module_lock", and the
    download then runs on as if no key was pressed), leave a module half
    imported, or mark the interpreter so that it ends by SIGINT whatever exit
    code we return. So while the command loads, a SIGINT is only remembered;
    `release` puts Python's own handler back first and only then looks whether
    one came, so none can fall between the two.
    """

    def __init__(self, pending: list[int] | None = None) -> None:
        self.pending = pending if pending is not None else []
        self._installed = False

    def _remember(self, signum: int, frame: Any) -> None:
        self.pending.append(signum)

    def install(self) -> None:
        try:
            for signum in _interrupts():
                signal.signal(signum, self._remember)
        except ValueError:  # not the main thread (embedded): Ctrl-C is not ours to handle
            return
        self._installed = True

    def release(self) -> bool:
        """Restore Python's Ctrl-C handling; True if Ctrl-C was pressed meanwhile.

        Ctrl-Break (Windows) is handled as Ctrl-C from here on too: both raise
        ``KeyboardInterrupt`` until the command's own receiver takes them.
        """
        if self._installed:
            for signum in _interrupts():
                signal.signal(signum, signal.default_int_handler)
            self._installed = False
        return bool(self.pending)


def _interrupts() -> tuple[int, ...]:
    """Ctrl-C, and Ctrl-Break where the console has it (Windows' ``SIGBREAK``).

    Read from `signal` itself rather than engine._platform, which this module
    must not load before the command needs it (start-up cost).
    """
    brk = getattr(signal, "SIGBREAK", None)
    return (signal.SIGINT,) if brk is None else (signal.SIGINT, brk)


def main(argv: Sequence[str] | None = None, *, guard: StartupGuard | None = None) -> int:
    guard = guard or StartupGuard()
    try:
        from .._gc import tune_gc

        tune_gc()  # our own process: full collections would stall every operation
        try:
            argv = sys.argv[1:] if argv is None else list(argv)
            parser = build_parser(_command_of(argv))
            args = parser.parse_args(argv)
        finally:
            if guard.release():
                raise KeyboardInterrupt
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return int(args.func(args))
    except KeyboardInterrupt:
        # Ctrl-C before the engine took charge of it: nothing was started yet,
        # or the engine's shutdown already checkpointed what ran.
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry(early: list[int] | None = None) -> None:
    """The console script: `main`, then exit with its code, whatever Ctrl-C does meanwhile.

    A SIGINT can still be on its way when the command has finished: trio hands a
    signal its receiver never consumed back to Python's handler as the receiver
    closes, and a key pressed twice lands after the first one was handled. A
    ``KeyboardInterrupt`` raised outside `main`'s own handler would make CPython
    end the process by SIGINT (status -2, no exit code, and a traceback if it
    lands in the interpreter's shutdown). So a late one still means "interrupted",
    and once the exit code is known further Ctrl-C is ignored. ``early`` holds the
    SIGINTs ``python -m engine`` remembered before this module was loaded.
    """
    guard = StartupGuard(early)
    guard.install()
    try:
        code = main(guard=guard)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    try:
        for signum in _interrupts():
            signal.signal(signum, signal.SIG_IGN)
    except (ValueError, OSError):  # not the main thread (embedded): nothing to protect
        pass
    # The process ends here. Without this, the interpreter's last collection
    # walks and frees every object the command loaded (a quarter of a second
    # of a short download on a busy 2-core machine) for memory the OS takes
    # back anyway. Everything that must reach a file is closed by now (the
    # engine on its way out, the log at exit), and standard output and error
    # are still flushed.
    gc.freeze()
    sys.exit(code)
