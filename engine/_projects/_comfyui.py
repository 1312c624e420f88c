"""Project import from a ComfyUI workflow (SPEC 7.1).

A ComfyUI workflow (the JSON the editor saves, and that template workflows
ship) lists the models its nodes load in ``properties.models``::

    {"nodes": [{"id": 4, "type": "CheckpointLoaderSimple",
                "properties": {"cnr_id": "comfy-core", "ver": "0.3.41",
                               "models": [{"name": "sd15.safetensors",
                                           "url": "https://.../sd15.safetensors",
                                           "directory": "checkpoints"}]}}, ...],
     "definitions": {"subgraphs": [{"id": "...", "name": "...", "nodes": [...]}]}}

`plan_import` reads every model entry (top-level nodes, subgraph
definitions, nested ones too, and the legacy top-level ``models`` list),
deduplicates them by ``(directory, name)`` and sorts them into what to
download, what is already present and what is refused. The reader is
tolerant of what real files contain (nodes without properties, notes,
groups, links, widget values, extra keys) and strict about safety:

- ``directory`` is a relative path of plain components under
  ``<comfyui>/models``; ``name`` is one plain file name. Refused: ``..`` and
  ``.``, absolute paths, backslashes, drive letters and any ``:``, NUL and
  control characters, separators in ``name``, components Windows would
  rewrite into something else (trailing dots or spaces).
- The URL must be one the download kind accepts: ``http`` or ``https`` with
  a host, no whitespace.
- A present file (non-empty, at the destination) is skipped, never touched.

The checks are lexical: a symbolic link the user made inside
``<comfyui>/models`` (a shared model drive, say) is the user's choice and is
followed, but nothing a workflow says can name a path outside the folder.

Every refusal names the node (id and type, and the subgraph it is in), so a
user can find it in the editor.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import unicodedata
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from .._download._hubs import HubEnv, hub_url
from .._download._names import redact_url, validate_url, windows_name_problem
from .._errors import RefusedError
from .._specs import DownloadSpec, ProjectSpec
from ._modelpaths import EXTRA_MODEL_PATHS, ModelFolders, load_extra_model_paths

__all__ = [
    "Conflict",
    "ImportPlan",
    "ModelEntry",
    "NodeRef",
    "RefusedEntry",
    "import_project_name",
    "load_workflow",
    "plan_import",
    "plan_lines",
    "project_from_workflow",
    "project_from_workflow_data",
]

#: Node pack of ComfyUI's built-in nodes: not reported.
CORE_PACK = "comfy-core"
#: Largest workflow file read (template workflows are well under 1 MiB).
MAX_WORKFLOW_BYTES = 64 * 1024 * 1024
_MAX_DEPTH = 32  # subgraphs inside subgraphs
_MAX_COMPONENT_BYTES = 255
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


@attrs.frozen(kw_only=True)
class NodeRef:
    """Where an entry came from: a node (id and type), and the subgraph holding it."""

    id: Any
    type: str
    subgraph: str | None = None

    def __str__(self) -> str:
        where = f" in subgraph {self.subgraph!r}" if self.subgraph else ""
        return f"node {self.id} ({self.type}){where}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "subgraph": self.subgraph}


#: The legacy top-level ``models`` list of a workflow is not on any node.
WORKFLOW_REF = NodeRef(id=None, type="workflow models list")


@attrs.frozen(kw_only=True)
class ModelEntry:
    """A model the workflow names, where it goes (``dest`` is absolute) and why.

    ``status`` is ``missing`` (to download), ``present`` (found at
    ``present_at``, wherever ComfyUI would look) or ``bypassed`` (only on
    bypassed or muted nodes; ``reason`` says which). ``fetched_as`` and
    ``note`` say when the hub rules change the URL (a Hugging Face
    ``/blob/`` link is fetched as ``/resolve/``).
    """

    node: NodeRef
    directory: str
    name: str
    url: str
    dest: str
    sha256: str | None = None
    status: str = "missing"
    reason: str = "missing"
    present_at: str | None = None
    fetched_as: str | None = None
    note: str | None = None
    verified: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node.to_dict(), "directory": self.directory, "name": self.name,
               "url": redact_url(self.url), "dest": self.dest, "sha256": self.sha256,
               "status": self.status, "reason": self.reason, "present_at": self.present_at}
        if self.fetched_as is not None:
            out["fetched_as"] = redact_url(self.fetched_as)
            out["note"] = self.note
        if self.verified:
            out["verified"] = True
        return out


@attrs.frozen(kw_only=True)
class RefusedEntry:
    """A model entry that is never downloaded, and why."""

    node: NodeRef
    reason: str
    name: Any = None
    directory: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node.to_dict(), "reason": self.reason,
                "name": _jsonable(self.name), "directory": _jsonable(self.directory)}


@attrs.frozen(kw_only=True)
class Conflict:
    """Two entries for one ``(directory, name)`` with different URLs: the first one wins."""

    node: NodeRef
    directory: str
    name: str
    url: str
    kept_node: NodeRef
    kept_url: str

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node.to_dict(), "directory": self.directory, "name": self.name,
                "url": redact_url(self.url), "kept_node": self.kept_node.to_dict(),
                "kept_url": redact_url(self.kept_url)}


@attrs.frozen(kw_only=True)
class ImportPlan:
    """What importing a workflow into a ComfyUI folder does.

    ``downloads`` are missing models, in workflow order; ``skipped`` are
    present already (``present_at`` says where); ``bypassed`` are only on
    bypassed or muted nodes, so the workflow never loads them; ``refused``
    are never downloaded; ``conflicts`` are later entries that disagreed
    with the kept one about the URL; ``node_packs`` maps each custom node
    pack (``cnr_id``) to its version; ``extra_model_paths`` is the YAML file
    whose folders were searched, if any.
    """

    comfyui_dir: str
    downloads: tuple[ModelEntry, ...]
    skipped: tuple[ModelEntry, ...]
    refused: tuple[RefusedEntry, ...]
    conflicts: tuple[Conflict, ...]
    node_packs: dict[str, str | None]
    bypassed: tuple[ModelEntry, ...] = ()
    extra_model_paths: str | None = None

    @property
    def models_dir(self) -> str:
        return str(Path(self.comfyui_dir) / "models")

    def steps(self) -> list[DownloadSpec]:
        """One download step per missing model."""
        return [DownloadSpec(url=e.url, dest=e.dest, sha256=e.sha256) for e in self.downloads]

    def project(self, name: str) -> ProjectSpec:
        """The project that downloads the missing models."""
        return ProjectSpec(name=name, steps=list(self.steps()))

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON (URLs with credentials redacted)."""
        return {
            "comfyui": self.comfyui_dir,
            "models_dir": self.models_dir,
            "extra_model_paths": self.extra_model_paths,
            "download": [e.to_dict() for e in self.downloads],
            "skip": [e.to_dict() for e in self.skipped],
            "bypassed": [e.to_dict() for e in self.bypassed],
            "refused": [e.to_dict() for e in self.refused],
            "conflicts": [c.to_dict() for c in self.conflicts],
            "node_packs": dict(self.node_packs),
        }


# --- reading --------------------------------------------------------------------------


def _bad_workflow(message: str) -> RefusedError:
    return RefusedError("E_INVALID_INPUT", message, field="workflow")


def load_workflow(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a workflow file; a file that is not a workflow object is refused."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_WORKFLOW_BYTES + 1)
    except OSError as exc:
        raise _bad_workflow(f"cannot read the workflow {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_WORKFLOW_BYTES:
        raise _bad_workflow(f"the workflow {path} is larger than {MAX_WORKFLOW_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad_workflow(f"the workflow {path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise _bad_workflow(f"the workflow {path} is nested too deeply to read") from None
    _check_shape(data, str(path))
    return data


def _check_shape(data: Any, what: str) -> None:
    if not isinstance(data, Mapping):
        raise _bad_workflow(f"the workflow {what} is not a JSON object")
    if "nodes" not in data and "models" not in data:
        if data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
            raise _bad_workflow(
                f"{what} is an API-format prompt, which does not list model URLs; "
                "save the workflow from the ComfyUI editor (Workflow > Save) instead")
        raise _bad_workflow(f"{what} is not a ComfyUI workflow: it has no 'nodes' list")
    if "nodes" in data and not isinstance(data["nodes"], list):
        raise _bad_workflow(f"{what}: 'nodes' is not a list")


#: Node modes of nodes that never run: ComfyUI's "never" (muted) and "bypass".
_INACTIVE_MODES = {2: "muted", 4: "bypassed"}


def _iter_graph_nodes(graph: Mapping[str, Any], subgraph: str | None, depth: int,
                      seen: set[int], graph_id: str | None = None
                      ) -> Iterator[tuple[Any, str | None, str | None]]:
    """``(node, subgraph label, subgraph id)`` for every node of ``graph`` and of the subgraphs it defines."""
    nodes = graph.get("nodes")
    if isinstance(nodes, list):
        for node in nodes:
            yield node, subgraph, graph_id
    definitions = graph.get("definitions")
    subgraphs = definitions.get("subgraphs") if isinstance(definitions, dict) else None
    if not isinstance(subgraphs, list) or depth >= _MAX_DEPTH:
        return
    for sub in subgraphs:
        if not isinstance(sub, dict) or id(sub) in seen:
            continue
        seen.add(id(sub))
        label = sub.get("name") if isinstance(sub.get("name"), str) and sub.get("name") else sub.get("id")
        sub_id = sub.get("id") if isinstance(sub.get("id"), str) else None
        yield from _iter_graph_nodes(sub, str(label) if label is not None else "?", depth + 1, seen, sub_id)


def _node_ref(node: Mapping[str, Any], subgraph: str | None) -> NodeRef:
    node_id = node.get("id")
    if not isinstance(node_id, (int, str)) or isinstance(node_id, bool):
        node_id = "?"
    node_type = node.get("type")
    return NodeRef(id=node_id, type=node_type if isinstance(node_type, str) and node_type else "?",
                   subgraph=subgraph)


def _node_mode(node: Mapping[str, Any]) -> str | None:
    mode = node.get("mode")
    return _INACTIVE_MODES.get(mode) if isinstance(mode, int) and not isinstance(mode, bool) else None


def _inactive_subgraphs(workflow: Mapping[str, Any]) -> set[str]:
    """Subgraph ids whose every use is a bypassed or muted node (or inside such a subgraph)."""
    uses: dict[str, list[tuple[str | None, bool]]] = {}
    for node, _label, graph_id in _iter_graph_nodes(workflow, None, 0, set()):
        if isinstance(node, dict) and isinstance(node.get("type"), str):
            uses.setdefault(node["type"], []).append((graph_id, _node_mode(node) is not None))
    memo: dict[str, bool] = {}

    def inactive(sub_id: str, stack: frozenset[str]) -> bool:
        if sub_id in memo:
            return memo[sub_id]
        found = uses.get(sub_id)
        result = bool(found) and sub_id not in stack and all(
            off or (graph is not None and inactive(graph, stack | {sub_id})) for graph, off in found or ())
        memo[sub_id] = result
        return result

    ids = {g for _n, _l, g in _iter_graph_nodes(workflow, None, 0, set()) if g is not None}
    return {sub_id for sub_id in ids if inactive(sub_id, frozenset())}


def _iter_model_entries(workflow: Mapping[str, Any]) -> Iterator[tuple[NodeRef, Any, str | None]]:
    """``(node ref, raw entry, why the node never runs or None)`` for every model entry.

    A node's ``properties.models`` that is not a list yields a `_NotAList` entry.
    """
    inactive_subs = _inactive_subgraphs(workflow)
    for node, subgraph, graph_id in _iter_graph_nodes(workflow, None, 0, set()):
        if not isinstance(node, dict):
            continue
        props = node.get("properties")
        if not isinstance(props, dict):
            continue
        models = props.get("models")
        if models is None:
            continue
        ref = _node_ref(node, subgraph)
        mode = _node_mode(node)
        off = (f"{ref} is {mode} (mode {node.get('mode')})" if mode else
               f"{ref}: every use of subgraph {subgraph!r} is bypassed or muted"
               if graph_id in inactive_subs else None)
        if not isinstance(models, list):
            yield ref, _NotAList(), off
            continue
        for entry in models:
            yield ref, entry, off
    legacy = workflow.get("models")  # older editors also listed them at the top level
    if isinstance(legacy, list):
        for entry in legacy:
            yield WORKFLOW_REF, entry, None


class _NotAList:
    """Marker: a node whose ``properties.models`` is neither a list nor null."""


def _node_packs(workflow: Mapping[str, Any]) -> dict[str, str | None]:
    packs: dict[str, str | None] = {}
    for node, _subgraph, _graph in _iter_graph_nodes(workflow, None, 0, set()):
        props = node.get("properties") if isinstance(node, dict) else None
        if not isinstance(props, dict):
            continue
        cnr_id, ver = props.get("cnr_id"), props.get("ver")
        if not isinstance(cnr_id, str) or not cnr_id.strip() or cnr_id.strip() == CORE_PACK:
            continue
        ver = ver.strip() if isinstance(ver, str) and ver.strip() else None
        if packs.get(cnr_id.strip()) is None:
            packs[cnr_id.strip()] = ver
    return dict(sorted(packs.items()))


# --- safety -----------------------------------------------------------------------


class _Unsafe(ValueError):
    pass


def _check_component(part: str, what: str) -> None:
    if part in ("", ".", ".."):
        raise _Unsafe(f"{what} contains {'an empty' if not part else f'a {part!r}'} path component")
    for ch in part:
        if ch in "/\\":
            raise _Unsafe(f"{what} contains a path separator {ch!r}")
        if ch == ":":
            raise _Unsafe(f"{what} contains ':' (a drive letter or stream name)")
        if ch == "\x00" or unicodedata.category(ch) in ("Cc", "Cf", "Cs"):
            raise _Unsafe(f"{what} contains a control character {ch!r}")
    if part.strip(". ") == "" or part.endswith((".", " ")) or part != part.strip():
        raise _Unsafe(f"{what} has a component ending in a dot or with surrounding spaces: {part!r}")
    if (problem := windows_name_problem(part)) is not None:
        raise _Unsafe(f"{what}: {problem}")
    if len(part.encode("utf-8")) > _MAX_COMPONENT_BYTES:
        raise _Unsafe(f"{what} has a component longer than {_MAX_COMPONENT_BYTES} bytes")


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise _Unsafe("the model has no file name ('name' must be a non-empty string)")
    if "/" in name or "\\" in name:
        raise _Unsafe(f"the name {name!r} contains a path separator; it must be a plain file name")
    _check_component(name, f"the name {name!r}")
    return name


def _check_directory(directory: Any) -> str:
    if not isinstance(directory, str) or not directory:
        raise _Unsafe("the model has no 'directory' (a folder under models/, e.g. 'checkpoints')")
    if directory.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", directory) or os.path.isabs(directory):
        raise _Unsafe(f"the directory {directory!r} is an absolute path; it must be a folder under models/")
    if "\\" in directory:
        raise _Unsafe(f"the directory {directory!r} contains a backslash")
    parts = directory.split("/")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # one trailing slash is harmless
    for part in parts:
        _check_component(part, f"the directory {directory!r}")
    return "/".join(parts)


def _check_url(url: Any) -> str:
    try:
        return validate_url(url)
    except RefusedError as exc:
        raise _Unsafe(exc.message) from None


def _check_sha256(entry: Mapping[str, Any]) -> str | None:
    digest, hash_type = entry.get("hash"), entry.get("hash_type")
    if digest is None or not isinstance(hash_type, str) or hash_type.strip().lower() != "sha256":
        return None  # no checksum, or one of a kind the download cannot verify
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest.strip()):
        raise _Unsafe("its sha256 'hash' is not 64 hexadecimal characters")
    return digest.strip().lower()


def _obstacle(base: Path, dest: Path) -> str | None:
    """Why ``dest`` (in the folder ``base``) cannot be written (something not a folder in the way), or None."""
    if dest.is_dir():
        return f"a folder is in the way at {dest}"
    parent = dest.parent
    while parent != base.parent and (parent == base or base in parent.parents):
        if os.path.lexists(parent) and not parent.is_dir():
            return f"{parent} exists and is not a folder"
        parent = parent.parent
    return None


def _present(dest: Path) -> bool:
    try:
        st = dest.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size > 0


# --- planning -----------------------------------------------------------------------


def same_model_url(url: str) -> str:
    """``url`` without a ``download=true`` query parameter (nor a fragment): the form two entries are compared in."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
             if not (k.lower() == "download" and v.lower() == "true")]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query), fragment=""))


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def model_folders(comfyui_dir: str | os.PathLike[str],
                  extra_model_paths: str | os.PathLike[str] | None = None) -> ModelFolders:
    """The folders ComfyUI searches: its own, and those of ``extra_model_paths`` (default: ``DIR/extra_model_paths.yaml`` when there)."""
    root = _comfyui_root(comfyui_dir)
    source: Path | None
    if extra_model_paths is not None:
        source = Path(os.path.abspath(Path(os.fspath(extra_model_paths)).expanduser()))
    else:
        source = root / EXTRA_MODEL_PATHS
        if not source.is_file():
            source = None
    extra = load_extra_model_paths(source) if source is not None else ()
    return ModelFolders(models_dir=root / "models", extra=extra, source=source)


def plan_import(workflow: Mapping[str, Any] | str | os.PathLike[str],
                comfyui_dir: str | os.PathLike[str], *, include_bypassed: bool = False,
                extra_model_paths: str | os.PathLike[str] | None = None, verify: bool = False,
                folders: ModelFolders | None = None) -> ImportPlan:
    """Read ``workflow`` (a parsed workflow or a file) and plan its import into ``comfyui_dir``.

    Entries are deduplicated by ``(directory, name)``; two URLs that differ
    only by ``?download=true`` are one model. A model only on bypassed or
    muted nodes is listed in ``bypassed`` (downloaded when
    ``include_bypassed``). A model is present wherever ComfyUI would find it
    (`ModelFolders`: aliases and ``extra_model_paths.yaml``); a missing one
    goes to ``DIR/models/<directory>/<name>``, or to the YAML's
    ``is_default`` folder. With ``verify``, a present file whose entry has a
    sha256 is hashed: a mismatch is refused (the file is left as it is).

    Raises `RefusedError` (``E_INVALID_INPUT``, field ``workflow``,
    ``comfyui`` or ``extra_model_paths``) when a file is not what it should
    be or the folder is unusable; single bad entries never raise, they are
    listed in ``refused``.
    """
    if isinstance(workflow, (str, os.PathLike)):
        data: Mapping[str, Any] = load_workflow(workflow)
    else:
        _check_shape(workflow, "the workflow")
        data = workflow
    root = _comfyui_root(comfyui_dir)
    if folders is None:
        folders = model_folders(root, extra_model_paths)
    env = HubEnv.current()

    refused: list[RefusedEntry] = []
    conflicts: list[Conflict] = []
    groups: dict[tuple[str, str], list[tuple[NodeRef, str, str | None, str | None]]] = {}
    for ref, raw, off in _iter_model_entries(data):
        if isinstance(raw, _NotAList):
            refused.append(RefusedEntry(node=ref, reason="properties.models is not a list"))
            continue
        if not isinstance(raw, dict):
            refused.append(RefusedEntry(node=ref, reason="a model entry is not an object"))
            continue
        name, directory = raw.get("name"), raw.get("directory")
        try:
            name = _check_name(name)
            directory = _check_directory(directory)
            url = _check_url(raw.get("url"))
            sha = _check_sha256(raw)
        except _Unsafe as exc:
            refused.append(RefusedEntry(node=ref, reason=str(exc), name=name, directory=directory))
            continue
        groups.setdefault((directory, name), []).append((ref, url, sha, off))

    downloads: list[ModelEntry] = []
    skipped: list[ModelEntry] = []
    bypassed: list[ModelEntry] = []
    for (directory, name), entries in groups.items():
        active = [e for e in entries if e[3] is None]
        ref, url, sha, off = (active or entries)[0]
        for other_ref, other_url, _sha, _off in entries:
            if same_model_url(other_url) != same_model_url(url):
                conflicts.append(Conflict(node=other_ref, directory=directory, name=name, url=other_url,
                                          kept_node=ref, kept_url=url))
        sha = sha or next((e[2] for e in entries if e[2] and same_model_url(e[1]) == same_model_url(url)), None)
        kind, *rest = directory.split("/")
        default = folders.default_folder(kind)
        base = default if default is not None else folders.models_dir / kind
        dest = base.joinpath(*rest, name)
        fetched, note = hub_url(url, env)
        common = ModelEntry(node=ref, directory=directory, name=name, url=url, dest=str(dest), sha256=sha,
                            fetched_as=fetched if note else None, note=note)
        if off is not None and not include_bypassed:
            bypassed.append(attrs.evolve(common, status="bypassed", reason=off))
            continue
        present = next((p for p in (f.joinpath(*rest, name) for f in [folders.models_dir / kind,
                                                                       *folders.search(kind)])
                        if _present(p)), None)
        if present is not None:
            if verify and sha:
                try:
                    matches = _sha256_of(present) == sha
                except OSError as exc:
                    refused.append(RefusedEntry(node=ref, name=name, directory=directory,
                                                reason=f"cannot read {present} to verify it: {exc.strerror or exc}"))
                    continue
                if not matches:
                    refused.append(RefusedEntry(
                        node=ref, name=name, directory=directory,
                        reason=f"{present} is present but its sha256 differs from the workflow's hash; it was "
                               "left untouched (move it away and import again to download the model)"))
                    continue
            skipped.append(attrs.evolve(common, status="present", reason=f"present at {present}",
                                        present_at=str(present), verified=bool(verify and sha)))
            continue
        obstacle = _obstacle(base, dest)
        if obstacle is not None:
            refused.append(RefusedEntry(node=ref, reason=obstacle, name=name, directory=directory))
            continue
        why = "missing" if off is None else f"missing; {off}, included by --include-bypassed"
        downloads.append(attrs.evolve(common, status="missing", reason=why))
    return ImportPlan(comfyui_dir=str(root), downloads=tuple(downloads), skipped=tuple(skipped),
                      refused=tuple(refused), conflicts=tuple(conflicts), node_packs=_node_packs(data),
                      bypassed=tuple(bypassed),
                      extra_model_paths=str(folders.source) if folders.source is not None else None)


def _comfyui_root(comfyui_dir: str | os.PathLike[str]) -> Path:
    raw = os.fspath(comfyui_dir)
    if not isinstance(raw, str) or not raw.strip() or "\x00" in raw:
        raise RefusedError("E_INVALID_INPUT", "the ComfyUI folder must be a non-empty path", field="comfyui")
    root = Path(os.path.abspath(Path(raw).expanduser()))
    if os.path.lexists(root) and not root.is_dir():
        raise RefusedError("E_INVALID_INPUT", f"{root} is not a folder", field="comfyui")
    models = root / "models"
    if os.path.lexists(models) and not models.is_dir():
        raise RefusedError("E_INVALID_INPUT", f"{models} is not a folder", field="comfyui")
    return root


# --- projects -------------------------------------------------------------------------


def import_project_name(workflow_path: str | os.PathLike[str], comfyui_dir: str | os.PathLike[str]) -> str:
    """``import:<stem>@<key>``: the same for the same workflow file and ComfyUI folder.

    The key hashes both absolute paths, so a rerun of the same import takes
    over the project it recorded, while the same file name imported into
    another folder (or another file of the same name) is another project.
    """
    wf = os.path.abspath(Path(os.fspath(workflow_path)).expanduser())
    root = os.path.abspath(Path(os.fspath(comfyui_dir)).expanduser())
    key = hashlib.sha256(f"{wf}\0{root}".encode()).hexdigest()[:10]
    return f"import:{Path(wf).stem}@{key}"


def project_from_workflow(path: str | os.PathLike[str], comfyui_dir: str | os.PathLike[str]) -> ProjectSpec:
    """The project that downloads the missing models of the workflow file ``path``.

    Refused entries are left out (see `plan_import` to list them); the name
    is `import_project_name`, stable for the same file and folder.
    """
    return plan_import(path, comfyui_dir).project(import_project_name(path, comfyui_dir))


def project_from_workflow_data(workflow: Mapping[str, Any], comfyui_dir: str | os.PathLike[str],
                               name: str) -> ProjectSpec:
    """The same from an already parsed workflow (the control channel's ``import``)."""
    return plan_import(workflow, comfyui_dir).project(name)


def plan_lines(plan: ImportPlan) -> list[str]:
    """The plan for a person: one line per model (where it goes and why), then the node packs."""
    models = Path(plan.models_dir)

    def where(path: str) -> str:
        try:
            return str(Path(path).relative_to(models))
        except ValueError:
            return path  # an extra_model_paths.yaml folder

    lines = [f"models folder: {models}"]
    if plan.extra_model_paths:
        lines.append(f"extra model folders from {plan.extra_model_paths}")
    for e in plan.downloads:
        check = ", sha256 checked" if e.sha256 else ""
        lines.append(f"  download  {where(e.dest)}  ({e.reason}{check})  <- {redact_url(e.url)}  [{e.node}]")
        if e.fetched_as:
            lines.append(f"            fetched as {redact_url(e.fetched_as)} ({e.note})")
    for e in plan.skipped:
        verified = ", sha256 verified" if e.verified else ""
        lines.append(f"  skip      {e.directory}/{e.name}  (present at {e.present_at}{verified})  [{e.node}]")
    for e in plan.bypassed:
        lines.append(f"  bypassed  {e.directory}/{e.name}  (not needed: {e.reason}; --include-bypassed fetches it)")
    for r in plan.refused:
        what = f"{r.directory}/{r.name} " if isinstance(r.directory, str) and isinstance(r.name, str) else ""
        lines.append(f"  refused   {what}{r.node}: {r.reason}")
    lines += [f"  conflict  {c.directory}/{c.name}: {c.node} gives another URL ({redact_url(c.url)}); "
              f"keeping the one from {c.kept_node}" for c in plan.conflicts]
    counts = (f"{len(plan.downloads)} to download, {len(plan.skipped)} present, "
              f"{len(plan.bypassed)} bypassed, {len(plan.refused)} refused")
    lines.append(counts + (f", {len(plan.conflicts)} conflicting" if plan.conflicts else ""))
    if plan.node_packs:
        packs = ", ".join(f"{pack} {ver}" if ver else pack for pack, ver in plan.node_packs.items())
        lines.append(f"node packs used (not installed by this command): {packs}")
    return lines


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)
