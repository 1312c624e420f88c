"""The architecture, read from the imports themselves (AST, no execution).

Rules (README "Module map"):

- no import cycle between any two modules of `engine`, wherever the import
  stands: module level, under ``TYPE_CHECKING``, or inside a function;
- the core (the modules at the top of ``engine/`` and ``engine/_platform/``)
  never imports the faces (``_cli``, ``_server``, ``_embed``, ``embed``) or
  the test helpers (``testing``);
- ``engine/_download/`` never imports ``engine/_projects/`` (projects use
  downloads, not the other way round);
- no product module imports or looks for ``trio.testing``: the way disk work
  runs is given to the engine (``engine._disk``), never detected.

`supervisors` never importing `engine` is checked in tests/supervisors.

The last tests plant each kind of violation in a throw-away package and check
that the same functions catch it, so a rule that silently stopped working
would fail here.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

import engine

ENGINE_DIR = Path(engine.__file__).resolve().parent
FACES = ("engine._cli", "engine._server", "engine._embed", "engine.embed", "engine.testing")


def _module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def _modules(root: Path, package: str) -> dict[str, Path]:
    return {_module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name ``from <level dots><target>`` means inside ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _imports(module: str, path: Path, known: set[str]) -> set[tuple[str, int]]:
    """Every module of ``known`` that ``module`` imports anywhere in its file, with the line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[tuple[str, int]] = set()

    def add(name: str, line: int) -> None:
        # `import a.b.c` needs a.b.c; report the deepest known module named
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add((name, line))

    for node in ast.walk(tree):  # every statement: functions and TYPE_CHECKING blocks included
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base, node.lineno)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0].value
            if name in ("import_module", "__import__") and isinstance(arg, str):
                anchor = module if is_package else module.rpartition(".")[0]
                level = len(arg) - len(arg.lstrip("."))
                add(_resolve(anchor + ".x", False, level, arg.lstrip(".") or None) if level else arg,
                    node.lineno)
    return found


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """``{module: {imported module: line}}`` over the package's own modules."""
    mods = _modules(root, package)
    known = set(mods)
    return {m: dict(sorted(_imports(m, p, known))) for m, p in mods.items()}


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _is_core(name: str, package: str, graph: dict[str, dict[str, int]]) -> bool:
    """A module file at the top of the package (faces and entry point aside), or the platform layer."""
    if _within(name, f"{package}._platform"):
        return True
    rest = name[len(package) + 1:] if name != package else ""
    is_package = any(other.startswith(name + ".") for other in graph)
    return rest not in ("", "embed", "__main__") and "." not in rest and not is_package


def layering_violations(graph: dict[str, dict[str, int]], package: str = "engine") -> list[str]:
    """Every import that breaks a rule of the module docstring, as ``a -> b (line n)``."""
    faces = [f.replace("engine", package, 1) for f in FACES]
    bad = []
    for mod, imported in graph.items():
        for target, line in imported.items():
            if _is_core(mod, package, graph) and any(_within(target, f) for f in faces):
                bad.append(f"core {mod} -> {target} (line {line})")
            if _within(mod, f"{package}._download") and _within(target, f"{package}._projects"):
                bad.append(f"{mod} -> {target} (line {line}): downloads never import projects")
    return bad


def trio_testing_users(root: Path, package: str) -> list[str]:
    """Product modules that import or name ``trio.testing`` (the test helpers excepted)."""
    users = []
    for mod, path in _modules(root, package).items():
        if _within(mod, f"{package}.testing"):
            continue
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        for node in ast.walk(tree):
            named = (isinstance(node, ast.Import) and any(_within(a.name, "trio.testing") for a in node.names)) \
                or (isinstance(node, ast.ImportFrom) and node.module and _within(node.module, "trio.testing")) \
                or (isinstance(node, ast.Constant) and node.value == "trio.testing") \
                or (isinstance(node, ast.Attribute) and node.attr in ("MockClock", "testing")
                    and isinstance(node.value, ast.Name) and node.value.id == "trio")
            if named:
                users.append(f"{mod} (line {getattr(node, 'lineno', '?')})")
    return users


# -- the real package -------------------------------------------------------------------------

GRAPH = import_graph(ENGINE_DIR, "engine")


def test_the_graph_sees_the_packages() -> None:
    """The walk really reads the subpackages and their relative imports."""
    for name in ("engine._engine", "engine._download._kind", "engine._projects._comfyui",
                 "engine._cli._main", "engine._server", "engine.testing._faultserver", "engine._disk"):
        assert name in GRAPH, name
    assert "engine._download._part" in GRAPH["engine._download._kind"]
    assert "engine._disk" in GRAPH["engine._writer"]


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


def test_layers() -> None:
    assert layering_violations(GRAPH) == []


def test_no_product_module_detects_trio_testing() -> None:
    assert trio_testing_users(ENGINE_DIR, "engine") == []


# -- proof that the rules bite ----------------------------------------------------------------

def _plant(tmp_path: Path, files: dict[str, str]) -> tuple[Path, str]:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text), encoding="utf-8")
    return root, "pkg"


@pytest.mark.parametrize("how", ["module level", "TYPE_CHECKING", "inside a function", "import_module"])
def test_a_planted_cycle_is_found(tmp_path: Path, how: str) -> None:
    back = {
        "module level": "from . import _a\n",
        "TYPE_CHECKING": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._a import x\n",
        "inside a function": "def f():\n    from ._a import x\n    return x\n",
        "import_module": "import importlib\ndef f():\n    return importlib.import_module('._a', __package__)\n",
    }[how]
    root, name = _plant(tmp_path, {
        "__init__.py": "",
        "_a.py": "from ._sub import _b\nx = 1\n",
        "_sub/__init__.py": "",
        "_sub/_b.py": back.replace("from . import _a", "from .. import _a").replace("from ._a", "from .._a")
                          .replace("'._a'", "'.._a'"),
    })
    graph = import_graph(root, name)
    assert cycles(graph) == [["pkg._a", "pkg._sub._b"]]


def test_planted_layer_breaks_are_found(tmp_path: Path) -> None:
    root, name = _plant(tmp_path, {
        "__init__.py": "",
        "_core.py": "def f():\n    from ._cli import _main\n",
        "_cli/__init__.py": "", "_cli/_main.py": "",
        "_download/__init__.py": "", "_download/_kind.py": "from .._projects._file import y\n",
        "_projects/__init__.py": "", "_projects/_file.py": "y = 1\n",
        "_sneaky.py": "import sys\ndef mock():\n    return sys.modules.get('trio.testing')\n",
    })
    graph = import_graph(root, name)
    assert cycles(graph) == []
    bad = layering_violations(graph, "pkg")
    assert any(b.startswith("core pkg._core -> pkg._cli._main") for b in bad), bad
    assert any(b.startswith("pkg._download._kind -> pkg._projects._file") for b in bad), bad
    assert trio_testing_users(root, "pkg") == ["pkg._sneaky (line 3)"]
