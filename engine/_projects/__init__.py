"""Installs, projects and the ComfyUI import (SPEC section 7).

Owns: the ``install`` kind (`_install`), the ``project`` kind (`_project`),
project files in TOML (`_file`) and the import of a ComfyUI workflow's models
(`_comfyui`).

May import: the core of ``engine`` and `engine._download` (names and
destinations). Never the command line, the control channel or `engine.testing`.
"""
