"""The project's own cattrs converter (never the global one).

Snapshots, events and the API all go through `converter`. Specs are stored
with their ``kind`` tag so a snapshot can be read back into the right class,
including kinds an embedding application registered itself.
"""

from __future__ import annotations

from typing import Any

from cattrs.preconf.msgpack import make_converter

from ._specs import DownloadSpec, InstallSpec, StepSpec

__all__ = ["converter", "structure_step", "unstructure_step"]

converter = make_converter(forbid_extra_keys=True)

_STEP_TYPES: dict[str, type] = {"download": DownloadSpec, "install": InstallSpec}


def unstructure_step(step: Any) -> dict[str, Any]:
    data = converter.unstructure(step)
    return {"kind": step.kind, **data}


def structure_step(data: Any, _type: Any = None) -> Any:
    if not isinstance(data, dict) or data.get("kind") not in _STEP_TYPES:
        raise ValueError("a step needs kind = 'download' or 'install'")
    body = {k: v for k, v in data.items() if k != "kind"}
    return converter.structure(body, _STEP_TYPES[data["kind"]])


converter.register_unstructure_hook(StepSpec, unstructure_step)  # type: ignore[arg-type]
converter.register_structure_hook(StepSpec, structure_step)  # type: ignore[arg-type]
