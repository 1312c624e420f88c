"""Test-only: force engine._platform fallbacks in subprocesses the suite starts.

tests/conftest.py puts this folder on PYTHONPATH when the suite runs with
``--platform-fallback``; the product never reads this variable. A finder
waits for ``engine._platform`` to be imported and forces the fallbacks then,
so processes that never import the engine are left as they are.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

_NAMES = [n for n in os.environ.get("RECOVERY_TEST_PLATFORM_FALLBACK", "").split(",") if n]


class _ForceOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname != "engine._platform":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module):  # type: ignore[no-untyped-def]
            original(module)
            module.force_fallback(*_NAMES)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if _NAMES:
    sys.meta_path.insert(0, _ForceOnImport())
