"""The console's interrupt signals: what Ctrl-C (and Ctrl-Break) arrive as.

POSIX: ``SIGINT``. Windows: Ctrl-C (``CTRL_C_EVENT``) arrives as ``SIGINT``
and Ctrl-Break (``CTRL_BREAK_EVENT``) as ``SIGBREAK``; both mean "stop".
The CLI listens for all of them.
"""

from __future__ import annotations

import signal
import sys

__all__ = ["interrupt_signals", "terminate_signals"]


def interrupt_signals() -> tuple[signal.Signals, ...]:
    """The signals a user's Ctrl-C / Ctrl-Break are delivered as here."""
    if sys.platform == "win32":
        return (signal.SIGINT, signal.SIGBREAK)
    return (signal.SIGINT,)


def terminate_signals() -> tuple[signal.Signals, ...]:
    """The signals a service manager stops a server with (``SIGTERM``; Windows has none to catch)."""
    if sys.platform == "win32":
        return ()
    return (signal.SIGTERM,)
