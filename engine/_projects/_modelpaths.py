"""Where ComfyUI looks for models: its folder aliases and ``extra_model_paths.yaml`` (SPEC 7.1).

ComfyUI (``folder_paths.py``) searches several folders for one kind of
model, and an import must find a model wherever ComfyUI itself would, or it
downloads tens of gigabytes the user already has:

- built-in aliases: ``text_encoders`` also searches ``models/clip`` (its
  older name), ``diffusion_models`` also ``models/unet``, ``controlnet``
  also ``models/t2i_adapter``; a workflow that says ``clip`` or ``unet``
  means the same folder kind (ComfyUI's ``map_legacy``);
- ``extra_model_paths.yaml`` (``DIR/extra_model_paths.yaml``, or the file
  given with ``--extra-model-paths``), in ComfyUI's format::

      my_drive:
          base_path: /mnt/models        # relative: to the YAML file's folder
          is_default: true              # optional: these folders come first,
                                        # and new files go there
          checkpoints: checkpoints      # relative to base_path
          text_encoders: |              # several folders, one per line
              text_encoders
              clip

  Each group's folders are added after ComfyUI's own (``is_default``:
  before them, and that folder is where a missing model is put).
  ``base_path`` and the folders may use ``~`` and environment variables.

A file that is not such a YAML document is refused with a message naming
the file, the group and the key; nothing of it is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs

from .._errors import RefusedError

__all__ = ["EXTRA_MODEL_PATHS", "ModelFolders", "canonical_folder", "load_extra_model_paths"]

#: The file ComfyUI reads from its own folder at start.
EXTRA_MODEL_PATHS = "extra_model_paths.yaml"
#: Largest YAML file read.
_MAX_YAML_BYTES = 1024 * 1024
#: ComfyUI's ``map_legacy``: old folder names that mean a newer folder kind.
_LEGACY = {"unet": "diffusion_models", "clip": "text_encoders"}
#: ComfyUI's built-in folders (under ``models/``) for the kinds that have more than one, in its order.
_BUILTIN = {
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("unet", "diffusion_models"),
    "controlnet": ("controlnet", "t2i_adapter"),
}
#: Keys of a group that are not folder kinds.
_SPECIAL = ("base_path", "is_default")


def canonical_folder(key: str) -> str:
    """The folder kind ComfyUI means by ``key`` (``clip`` -> ``text_encoders``)."""
    return _LEGACY.get(key, key)


@attrs.frozen(kw_only=True)
class ExtraFolder:
    """One folder of ``extra_model_paths.yaml``."""

    kind: str
    path: Path
    is_default: bool
    group: str


@attrs.frozen(kw_only=True)
class ModelFolders:
    """The folders ComfyUI searches per folder kind, and where a new model goes."""

    models_dir: Path
    extra: tuple[ExtraFolder, ...] = ()
    #: The YAML file the extra folders came from, or None.
    source: Path | None = None

    def search(self, kind: str) -> list[Path]:
        """Every folder of ``kind`` in ComfyUI's search order (``is_default`` ones first)."""
        kind = canonical_folder(kind)
        folders = [self.models_dir / name for name in _BUILTIN.get(kind, (kind,))]
        for extra in self.extra:
            if extra.kind != kind or extra.path in folders:
                if extra.kind == kind and extra.is_default:  # ComfyUI moves it to the front
                    folders.remove(extra.path)
                    folders.insert(0, extra.path)
                continue
            if extra.is_default:
                folders.insert(0, extra.path)
            else:
                folders.append(extra.path)
        return folders

    def default_folder(self, kind: str) -> Path | None:
        """The ``is_default`` folder for ``kind`` (where ComfyUI puts new files), or None."""
        first = self.search(kind)[0]
        kind = canonical_folder(kind)
        if any(e.kind == kind and e.is_default and e.path == first for e in self.extra):
            return first
        return None


def _refused(path: Path, message: str) -> RefusedError:
    return RefusedError("E_INVALID_INPUT", f"{path}: {message}", field="extra_model_paths")


def _expand(value: str) -> str:
    return os.path.expandvars(os.path.expanduser(value))


def _truthy(value: Any) -> bool:
    if isinstance(value, str):  # the ComfyUI desktop app writes is_default: "true"
        return value.strip().lower() in ("true", "yes", "on", "1")
    return bool(value)


def load_extra_model_paths(path: str | os.PathLike[str]) -> tuple[ExtraFolder, ...]:
    """The folders an ``extra_model_paths.yaml`` adds, in file order (see the module docstring)."""
    import yaml

    path = Path(os.path.abspath(Path(os.fspath(path)).expanduser()))
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise _refused(path, f"cannot read it: {exc.strerror or exc}") from None
    if len(raw) > _MAX_YAML_BYTES:
        raise _refused(path, f"larger than {_MAX_YAML_BYTES} bytes")
    try:
        doc = yaml.safe_load(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise _refused(path, "not UTF-8 text") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise _refused(path, f"not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise _refused(path, "nested too deeply to read") from None
    if doc is None:
        return ()
    if not isinstance(doc, dict):
        raise _refused(path, "must be a mapping of groups (name: {base_path: ..., checkpoints: ...})")
    here = path.parent
    found: list[ExtraFolder] = []
    for group, conf in doc.items():
        if conf is None:
            continue  # ComfyUI skips an empty group
        if not isinstance(conf, dict):
            raise _refused(path, f"group {group!r} must be a mapping of folder kinds to paths")
        base: Path | None = None
        if "base_path" in conf:
            value = conf["base_path"]
            if not isinstance(value, str) or not value.strip():
                raise _refused(path, f"group {group!r}: base_path must be a path")
            base = Path(_expand(value.strip()))
            if not base.is_absolute():
                base = here / base
        is_default = _truthy(conf.get("is_default", False))
        for key, value in conf.items():
            if key in _SPECIAL:
                continue
            if not isinstance(key, str) or not key:
                raise _refused(path, f"group {group!r}: a folder kind must be a name, not {key!r}")
            if isinstance(value, str):
                lines = value.split("\n")
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                lines = list(value)
            else:
                raise _refused(path, f"group {group!r}, {key}: the folders must be text, one path per line")
            for line in lines:
                line = line.strip()
                if not line:
                    continue
                if "\x00" in line:
                    raise _refused(path, f"group {group!r}, {key}: a path contains a NUL byte")
                folder = Path(_expand(line))
                if not folder.is_absolute():
                    folder = (base if base is not None else here) / folder
                found.append(ExtraFolder(kind=canonical_folder(key), path=Path(os.path.normpath(folder)),
                                         is_default=is_default, group=str(group)))
    return tuple(found)
