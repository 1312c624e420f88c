"""The public face of each package: complete, importable, lazily loaded."""

from __future__ import annotations

import subprocess
import sys

import engine
import supervisors


def test_engine_exports_resolve() -> None:
    """Every name in engine.__all__ resolves, and __all__ is sorted."""
    assert engine.__all__ == sorted(engine.__all__)
    for name in engine.__all__:
        assert getattr(engine, name) is not None, name


def test_supervisors_exports_resolve() -> None:
    """Every name in supervisors.__all__ resolves, and __all__ is sorted."""
    assert supervisors.__all__ == sorted(supervisors.__all__)
    for name in supervisors.__all__:
        assert getattr(supervisors, name) is not None, name


def test_importing_engine_is_cheap() -> None:
    """`import engine` loads no third-party library, so the CLI owns Ctrl-C from the start."""
    code = "import sys, engine; print(sorted(m for m in ('trio', 'httpx', 'rich', 'cattrs') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
