"""The safety tests' helpers and fixtures live in ``_safety``, importable by the test modules too
(the suite runs with ``--import-mode=importlib``, which puts no test folder on ``sys.path``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _safety import api, faults, threaded_server  # noqa: E402,F401
