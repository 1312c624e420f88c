"""``python -m engine`` and the ``recovery`` console script.

The first thing either does is take Ctrl-C (and Ctrl-Break on Windows) in
hand: from here on a SIGINT (SIGBREAK) is only remembered until the command
has loaded (`engine._cli._main.StartupGuard` says why), and ``entry`` acts on
what arrived meanwhile. ``_signal`` is the
interpreter's built-in module: importing it runs no Python code, so there is no
import for a Ctrl-C to land in before the handler is in place.
"""

try:
    import _signal

    _early: list[int] = []
    for _signum in (_signal.SIGINT, getattr(_signal, "SIGBREAK", None)):  # Ctrl-Break: Windows only
        if _signum is not None:
            _signal.signal(_signum, lambda signum, frame: _early.append(signum))
    from ._cli import entry
except KeyboardInterrupt:  # in the few instructions before the handler: nothing started
    raise SystemExit(130) from None


def run() -> None:
    """The console script's entry point."""
    entry(_early)


if __name__ == "__main__":
    run()
