"""The recovery engine: crash-safe, resumable downloads, installs and projects.

Embed it with `open_engine` (trio), or see `engine.embed` for asyncio and
threads. Everything public is re-exported here; implementation modules are
private.
"""

from ._errors import AttemptFailed as AttemptFailed
from ._errors import ErrorInfo as ErrorInfo
from ._errors import RecoveryError as RecoveryError
from ._errors import RefusedError as RefusedError
from ._errors import StateDirLocked as StateDirLocked
from ._errors import ERRORS as ERRORS
from ._errors import classify_exception as classify_exception
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
from ._specs import ProjectSpec as ProjectSpec
from ._stats import Statistics as Statistics

__all__ = [
    "ERRORS",
    "TRANSITIONS",
    "AttemptContext",
    "AttemptFailed",
    "BreakerState",
    "DownloadSpec",
    "Engine",
    "ErrorInfo",
    "Event",
    "InstallSpec",
    "Kind",
    "KindRegistry",
    "Operation",
    "ProjectSpec",
    "RecoveryError",
    "RefusedError",
    "Settings",
    "StateDirLocked",
    "Statistics",
    "Status",
    "Subscription",
    "classify_exception",
    "error",
    "failure",
    "open_engine",
]
