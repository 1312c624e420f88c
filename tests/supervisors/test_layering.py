"""`supervisors` is domain-free: it never imports `engine` (SPEC section 1)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import supervisors

PACKAGE_DIR = Path(supervisors.__file__).resolve().parent
MODULES = sorted(PACKAGE_DIR.rglob("*.py"))
FORBIDDEN = "engine"


def _imported_names(tree: ast.AST) -> list[str]:
    """Every absolute module name an ``import`` or ``from ... import`` statement names."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _dynamic_imports(tree: ast.AST) -> list[str]:
    """String arguments of ``importlib.import_module(...)`` / ``__import__(...)`` calls."""
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        arg = node.args[0]
        if name in ("import_module", "__import__") and isinstance(arg, ast.Constant):
            found.append(str(arg.value))
    return found


def _is_engine(name: str) -> bool:
    return name == FORBIDDEN or name.startswith(FORBIDDEN + ".")


def test_package_has_modules() -> None:
    """The walk below really sees the package's module files."""
    names = {p.name for p in MODULES}
    assert {"__init__.py", "_backoff.py", "_mailbox.py", "_sleep.py", "_supervisor.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_does_not_import_engine(path: Path) -> None:
    """No module file of supervisors imports engine, statically or by name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    offending = [n for n in _imported_names(tree) + _dynamic_imports(tree) if _is_engine(n)]
    assert offending == [], f"{path.name} imports {offending}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_relative_imports_stay_inside_the_package(path: Path) -> None:
    """Relative imports only reach supervisors' own modules (level 1), never a sibling package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            assert node.level == 1, f"{path.name}:{node.lineno} climbs out of the package"


def test_importing_supervisors_does_not_load_engine() -> None:
    """In a fresh interpreter, importing supervisors leaves no engine module in sys.modules."""
    code = (
        "import json, sys\n"
        "import supervisors\n"
        "import supervisors._backoff, supervisors._mailbox, supervisors._sleep, supervisors._supervisor\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'engine' or m.startswith('engine.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60)
    assert json.loads(out.stdout) == []


def test_public_namespace_is_complete() -> None:
    """``__all__`` is sorted and lists every public name each private module exports."""
    import importlib

    assert supervisors.__all__ == sorted(supervisors.__all__)
    exported: set[str] = set()
    for path in MODULES:
        if path.name == "__init__.py":
            continue
        module = importlib.import_module(f"supervisors.{path.stem}")
        exported.update(getattr(module, "__all__", []))
    assert set(supervisors.__all__) == exported
    for name in supervisors.__all__:
        assert getattr(supervisors, name) is not None
