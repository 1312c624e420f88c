"""What a user asks for: the specs of the built-in operation kinds.

Specs are frozen, keyword-only attrs classes. They say *what* to do; the
kinds (``_download.py``, ``_install.py``, ``_project.py``) say *how*.
Validation that needs the settings (download root, URL scheme) lives in the
kind's ``validate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Union

import attrs

__all__ = ["DownloadSpec", "InstallSpec", "ProjectSpec", "StepSpec", "is_credential_header", "redact_headers",
           "register_workflow_reader"]

# Header names whose values are credentials: never logged, shown or evented,
# and dropped on a redirect to another host. This is the one list.
SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key",
                               "x-auth-token", "api-key", "token", "x-hf-token"})
_SENSITIVE_WORDS = ("token", "secret", "auth", "key", "cookie", "session", "password", "credential")


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``headers`` safe to show: credential values replaced by ``***``."""
    return {k: ("***" if is_credential_header(k) else v) for k, v in headers.items()}


def is_credential_header(name: str) -> bool:
    """Whether a header of this name carries a credential (see `SENSITIVE_HEADERS`)."""
    low = name.lower()
    return low in SENSITIVE_HEADERS or any(word in low for word in _SENSITIVE_WORDS)


@attrs.frozen(kw_only=True)
class DownloadSpec:
    """Fetch ``url`` into ``dest`` (a file path; a directory or None takes the URL's name)."""

    url: str
    dest: str | None = None
    sha256: str | None = None
    headers: dict[str, str] = attrs.field(factory=dict)
    #: Replace a file already at ``dest`` that this engine did not write (SPEC 6.1).
    overwrite: bool = False
    #: At most this many connections for this download (None: the engine decides; SPEC 6.2).
    connections: int | None = None
    #: This download's receive rate in bytes per second (None or 0: unlimited).
    rate_limit_bps: int | None = None
    #: Other URLs of the same file, tried when ``url`` fails (SPEC 6.2).
    mirrors: list[str] = attrs.field(factory=list)

    kind = "download"


@attrs.frozen(kw_only=True)
class InstallSpec:
    """Run ``argv`` (never a shell string) as a child process group."""

    argv: list[str]
    cwd: str | None = None
    env: dict[str, str] | None = None
    timeout_s: float | None = None
    scope: str | None = None

    kind = "install"


StepSpec = Union[DownloadSpec, InstallSpec]

#: Workflow readers by format, registered by the package that implements them
#: (`engine._projects` registers ``comfyui``), so the records here import none.
_WORKFLOW_READERS: dict[str, Callable[[str | Path, str | Path], "ProjectSpec"]] = {}


def register_workflow_reader(fmt: str, reader: Callable[[str | Path, str | Path], "ProjectSpec"]) -> None:
    """Make ``ProjectSpec.from_<fmt>_workflow`` use ``reader``."""
    _WORKFLOW_READERS[fmt] = reader


@attrs.frozen(kw_only=True)
class ProjectSpec:
    """A named, ordered list of download and install steps run as one operation."""

    name: str
    steps: list[StepSpec]

    kind = "project"

    @classmethod
    def from_comfyui_workflow(cls, path: str | Path, comfyui_dir: str | Path) -> "ProjectSpec":
        """The project that fetches the models a ComfyUI workflow needs (SPEC 7.1)."""
        try:
            reader = _WORKFLOW_READERS["comfyui"]
        except KeyError:
            raise RuntimeError("no ComfyUI workflow reader: import ProjectSpec from engine") from None
        return reader(path, comfyui_dir)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "steps": len(self.steps)}
