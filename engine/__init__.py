"""The recovery engine: crash-safe, resumable downloads, installs and projects.

Embed it with `open_engine` (trio), or see `engine.embed` for asyncio and
threads. Everything public is re-exported here; implementation modules are
private.
"""

from __future__ import annotations

import importlib

# Not `from typing import TYPE_CHECKING`: importing typing takes a few milliseconds
# in which a Ctrl-C would still print a traceback (mypy knows this name either way).
TYPE_CHECKING = False

# Names resolve on first use, so that `recovery` (and `python -m engine`) can take
# charge of Ctrl-C before trio, httpx and rich are imported.
_EXPORTS: dict[str, str] = {
    "AttemptContext": "._kinds",
    "AttemptFailed": "._errors",
    "BreakerState": "._breaker",
    "DownloadSpec": "._specs",
    "ERRORS": "._errors",
    "Engine": "._engine",
    "ErrorInfo": "._errors",
    "Event": "._events",
    "InstallSpec": "._specs",
    "Kind": "._kinds",
    "KindRegistry": "._kinds",
    "Operation": "._model",
    "ProjectSpec": "._projects",  # the package that registers its workflow reader
    "RecoveryError": "._errors",
    "RefusedError": "._errors",
    "Settings": "._settings",
    "StateDirError": "._errors",
    "StateDirLocked": "._errors",
    "Statistics": "._stats",
    "Status": "._model",
    "Subscription": "._events",
    "TRANSITIONS": "._model",
    "classify_exception": "._errors",
    "tune_gc": "._gc",
    "error": "._errors",
    "failure": "._errors",
    "open_engine": "._engine",
}

if TYPE_CHECKING:
    from typing import Any

    from ._errors import AttemptFailed as AttemptFailed
    from ._errors import ErrorInfo as ErrorInfo
    from ._errors import RecoveryError as RecoveryError
    from ._errors import RefusedError as RefusedError
    from ._errors import StateDirError as StateDirError
    from ._errors import StateDirLocked as StateDirLocked
    from ._errors import ERRORS as ERRORS
    from ._errors import classify_exception as classify_exception
    from ._gc import tune_gc as tune_gc
    from ._errors import error as error
    from ._errors import failure as failure
    from ._engine import Engine as Engine
    from ._engine import open_engine as open_engine
    from ._events import Event as Event
    from ._events import Subscription as Subscription
    from ._kinds import AttemptContext as AttemptContext
    from ._kinds import Kind as Kind
    from ._kinds import KindRegistry as KindRegistry
    from ._model import Operation as Operation
    from ._model import Status as Status
    from ._model import TRANSITIONS as TRANSITIONS
    from ._breaker import BreakerState as BreakerState
    from ._settings import Settings as Settings
    from ._specs import DownloadSpec as DownloadSpec
    from ._specs import InstallSpec as InstallSpec
    from ._projects import ProjectSpec as ProjectSpec
    from ._stats import Statistics as Statistics

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'engine' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
