"""Installs, projects and the ComfyUI import (SPEC section 7).

Owns: the ``install`` kind (`_install`), the ``project`` kind (`_project`),
project files in TOML (`_file`) and the import of a ComfyUI workflow's models
(`_comfyui`).

May import: the core of ``engine`` and `engine._download` (names and
destinations). Never the command line, the control channel or `engine.testing`.
"""

from __future__ import annotations

import os

from .._specs import ProjectSpec as ProjectSpec
from .._specs import register_workflow_reader


def _read_comfyui_workflow(path: str | os.PathLike[str], comfyui_dir: str | os.PathLike[str]) -> ProjectSpec:
    # Loaded when a workflow is read: the engine loads this package for its
    # kinds, and a download has no use for the importer.
    from ._comfyui import project_from_workflow

    return project_from_workflow(path, comfyui_dir)


# ``ProjectSpec.from_comfyui_workflow`` reads workflows with this package's reader;
# the arrow runs from here to the spec records, never back.
register_workflow_reader("comfyui", _read_comfyui_workflow)

__all__ = ["ProjectSpec"]
