"""Workflow fixtures, with ``http://SERVER`` standing for the fault server's base URL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

WORKFLOWS = Path(__file__).parent / "workflows"


def _load(name: str, **replace: str) -> dict[str, Any]:
    text = (WORKFLOWS / name).read_text()
    for key, value in replace.items():
        if key == "SERVER":  # the fixtures spell the URLs "http://SERVER/files/..."
            value = value.split("://", 1)[-1]
        text = text.replace(key, value)
    return json.loads(text)


@pytest.fixture
def load_fixture() -> Callable[..., dict[str, Any]]:
    """A fixture workflow with each ``KEY`` placeholder in its text replaced."""
    return _load


@pytest.fixture
def write_workflow(tmp_path: Path) -> Callable[..., Path]:
    """Write a fixture (placeholders replaced) into ``tmp_path`` and return its path."""

    def write(name: str, dest: str | None = None, **replace: str) -> Path:
        path = tmp_path / (dest or name)
        path.write_text(json.dumps(_load(name, **replace), indent=1))
        return path

    return write


def _tree(root: Path) -> dict[str, tuple[int, int] | None]:
    out: dict[str, tuple[int, int] | None] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink() or path.is_file():
            st = path.lstat()
            out[rel] = (st.st_size, st.st_mtime_ns)
        else:
            out[rel] = None
    return out


@pytest.fixture
def tree() -> Callable[[Path], dict[str, tuple[int, int] | None]]:
    """Every path under a root: files with (size, mtime_ns), folders with None."""
    return _tree
