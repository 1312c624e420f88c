"""Reading ComfyUI workflows into an import plan: models, node packs, safety."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine import DownloadSpec, ProjectSpec, RefusedError
from engine._projects._comfyui import (
    WORKFLOW_REF,
    NodeRef,
    import_project_name,
    plan_import,
    project_from_workflow,
    project_from_workflow_data,
)

S = "http://127.0.0.1:9"


def _node(node_id: Any, node_type: str, *models: dict[str, Any], **props: Any) -> dict[str, Any]:
    properties: dict[str, Any] = dict(props)
    if models:
        properties["models"] = list(models)
    return {"id": node_id, "type": node_type, "properties": properties, "widgets_values": []}


_DEFAULT = object()


def _model(name: Any, directory: Any = "checkpoints", url: Any = _DEFAULT) -> dict[str, Any]:
    return {"name": name, "url": f"{S}/files/{name}" if url is _DEFAULT else url, "directory": directory}


def test_loopback_workflow_plan(load_fixture: Any, tmp_path: Path) -> None:
    """Top-level and subgraph models are collected once each, in order, with absolute destinations."""
    comfy = tmp_path / "ComfyUI"
    present = comfy / "models" / "upscale_models" / "4x_present.pth"
    present.parent.mkdir(parents=True)
    present.write_bytes(b"x" * 10)
    plan = plan_import(load_fixture("loopback_models.json", SERVER=S), comfy)
    models = comfy / "models"
    assert [(e.directory, e.name) for e in plan.downloads] == [
        ("checkpoints", "sd15_base.safetensors"),
        ("vae", "vae-ft-mse-840000-ema-pruned.safetensors"),
        ("loras", "detail_tweaker.safetensors"),
        ("diffusion_models", "flux1-tiny.safetensors"),
        ("text_encoders", "clip_l.safetensors"),
    ]
    assert [e.dest for e in plan.downloads] == [str(models / e.directory / e.name) for e in plan.downloads]
    assert [e.dest for e in plan.skipped] == [str(present)]
    assert plan.refused == ()
    assert plan.downloads[3].node == NodeRef(id=1, type="UNETLoader", subgraph="Flux loaders")
    assert str(plan.downloads[3].node) == "node 1 (UNETLoader) in subgraph 'Flux loaders'"
    assert plan.node_packs == {"comfyui-custom-scripts": "1.2.5", "comfyui-kjnodes": "1.1.2"}


def test_conflicting_duplicate_keeps_the_first(load_fixture: Any, tmp_path: Path) -> None:
    """The same directory+name with another URL keeps the first URL and reports the conflict."""
    plan = plan_import(load_fixture("loopback_models.json", SERVER=S), tmp_path)
    (conflict,) = plan.conflicts
    assert (conflict.directory, conflict.name) == ("vae", "vae-ft-mse-840000-ema-pruned.safetensors")
    assert conflict.node == NodeRef(id=3, type="VAELoaderKJ", subgraph="Flux loaders")
    assert conflict.kept_node == NodeRef(id=10, type="VAELoader")
    vae = next(e for e in plan.downloads if e.directory == "vae")
    assert vae.url == conflict.kept_url and "another-vae" in conflict.url


def test_template_hash_and_legacy_models_list(load_fixture: Any, tmp_path: Path) -> None:
    """A sha256 ``hash`` becomes the step's checksum; the workflow-level ``models`` list is read too."""
    plan = plan_import(load_fixture("template_flux_schnell.json"), tmp_path)
    by_name = {e.name: e for e in plan.downloads}
    assert set(by_name) == {"flux1-schnell-fp8.safetensors", "ae.safetensors"}
    assert by_name["flux1-schnell-fp8.safetensors"].sha256 == (
        "ead426278b49030e9da5df862994f25ce94ab2ee4df38b556ddddb3db093bf72")
    assert by_name["ae.safetensors"].node == WORKFLOW_REF
    assert by_name["ae.safetensors"].sha256 is None
    assert plan.node_packs == {"comfyui_essentials": "9d9f4bedfc9f0321c19faf71855e228c93bd0dc9"}
    steps = plan.project("p").steps
    assert steps[0] == DownloadSpec(url=by_name["flux1-schnell-fp8.safetensors"].url,
                                    dest=str(tmp_path / "models" / "checkpoints" / "flux1-schnell-fp8.safetensors"),
                                    sha256=by_name["flux1-schnell-fp8.safetensors"].sha256)


def test_hostile_fixture_refused_naming_nodes(load_fixture: Any, tmp_path: Path) -> None:
    """Every hostile entry of the fixture is refused naming its node; the safe one is planned."""
    plan = plan_import(load_fixture("hostile.json", SERVER=S, ABSOLUTE_DIR=str(tmp_path / "outside")),
                       tmp_path / "ComfyUI")
    assert [e.name for e in plan.downloads] == ["safe.safetensors"]
    refused = [(r.node.id, r.node.type) for r in plan.refused]
    assert refused == [(1, "CheckpointLoaderSimple"), (2, "LoraLoader"), (3, "VAELoader"),
                       (4, "UpscaleModelLoader"), (5, "CLIPLoader")] + [(6, "ControlNetLoader")] * 4
    reasons = [r.reason for r in plan.refused]
    assert "'..'" in reasons[0] and "separator" in reasons[1] and "absolute" in reasons[2]
    assert "separator" in reasons[3] and "file" in reasons[4]


@pytest.mark.parametrize("name", [
    "a/b.safetensors", "..", ".", "", "a\\b", "C:evil", "nul\x00.bin", "bell\x07", "trailing.", "...",
    " lead", "x" * 256, None, 7,
])
def test_unsafe_names_refused(name: Any, tmp_path: Path) -> None:
    """Names that are not one plain file name are refused, naming the node."""
    plan = plan_import({"nodes": [_node(8, "LoraLoader", _model(name, "loras", f"{S}/files/x"))]}, tmp_path)
    assert plan.downloads == () and len(plan.refused) == 1
    assert plan.refused[0].node == NodeRef(id=8, type="LoraLoader")


@pytest.mark.parametrize("directory", [
    "../../.ssh", "..", "checkpoints/../../x", "/etc", "\\\\server\\share", "C:\\Windows", "c:/models",
    "checkpoints\\sub", "a//b", "./checkpoints", "", None, ["checkpoints"], "vae\x00",
])
def test_unsafe_directories_refused(directory: Any, tmp_path: Path) -> None:
    """Directories that are not a relative path of plain components are refused."""
    plan = plan_import({"nodes": [_node(2, "VAELoader", _model("ae.safetensors", directory))]}, tmp_path)
    assert plan.downloads == () and len(plan.refused) == 1
    assert "node 2 (VAELoader)" in str(plan.refused[0].node)


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://example.org/a.bin", "javascript:alert(1)", "http:///nohost", "", None,
    "https://example.org/a b", "//example.org/x",
])
def test_bad_urls_refused(url: Any, tmp_path: Path) -> None:
    """Only http(s) URLs with a host are accepted."""
    plan = plan_import({"nodes": [_node(3, "CLIPLoader", _model("c.safetensors", "clip", url))]}, tmp_path)
    assert plan.downloads == () and len(plan.refused) == 1


def test_nested_directory_and_trailing_slash(tmp_path: Path) -> None:
    """A relative sub-folder is allowed; one trailing slash names the same folder."""
    plan = plan_import({"nodes": [
        _node(1, "A", _model("m.safetensors", "checkpoints/sd15/")),
        _node(2, "B", _model("m.safetensors", "checkpoints/sd15")),
    ]}, tmp_path)
    (entry,) = plan.downloads
    assert entry.dest == str(tmp_path / "models" / "checkpoints" / "sd15" / "m.safetensors")
    assert plan.conflicts == ()


def test_tolerates_what_real_files_contain(tmp_path: Path) -> None:
    """Odd but harmless shapes are skipped quietly; a bad models value is refused, naming the node."""
    workflow = {
        "nodes": [
            "not a node", {"id": 1}, {"id": 2, "type": "Note", "properties": None},
            {"id": 3, "type": "X", "properties": {"models": None}},
            {"id": 4, "type": "Y", "properties": {"models": []}, "extra_key": {"a": 1}},
            {"id": 5, "type": "Z", "properties": {"models": "oops"}},
            {"id": 6, "type": "W", "properties": {"models": ["oops", _model("ok.safetensors")]}},
            {"id": 7, "type": "V", "properties": {"cnr_id": 5, "ver": ["x"]}},
            {"id": 8, "type": "U", "properties": {"cnr_id": "pack-a"}},
        ],
        "definitions": {"subgraphs": ["junk", {"id": "abc", "nodes": None}]},
        "groups": [{"title": "g"}], "links": [[1, 2, 0, 3, 0, "X"]],
    }
    plan = plan_import(workflow, tmp_path)
    assert [e.name for e in plan.downloads] == ["ok.safetensors"]
    assert [(r.node.id, r.reason) for r in plan.refused] == [
        (5, "properties.models is not a list"), (6, "a model entry is not an object")]
    assert plan.node_packs == {"pack-a": None}


def test_nested_subgraph_definitions(tmp_path: Path) -> None:
    """A subgraph defined inside a subgraph definition is read too, labelled by its id without a name."""
    inner = {"id": "inner-id", "nodes": [_node(1, "UNETLoader", _model("deep.safetensors", "unet"))]}
    outer = {"id": "o", "name": "Outer", "nodes": [_node(5, "VAELoader", _model("v.safetensors", "vae"))],
             "definitions": {"subgraphs": [inner]}}
    plan = plan_import({"nodes": [], "definitions": {"subgraphs": [outer]}}, tmp_path)
    assert [(e.name, e.node.subgraph) for e in plan.downloads] == [("v.safetensors", "Outer"),
                                                                   ("deep.safetensors", "inner-id")]


def test_hash_other_types_ignored_bad_sha_refused(tmp_path: Path) -> None:
    """Only ``hash_type`` sha256 is used; a malformed sha256 refuses the entry."""
    plan = plan_import({"nodes": [_node(1, "A",
        {**_model("a.bin"), "hash": "abc", "hash_type": "blake3"},
        {**_model("b.bin"), "hash": "abc", "hash_type": "sha256"})]}, tmp_path)
    assert [(e.name, e.sha256) for e in plan.downloads] == [("a.bin", None)]
    assert "sha256" in plan.refused[0].reason


def test_present_check(tmp_path: Path) -> None:
    """A non-empty file is skipped, an empty one downloaded, a folder or file in the way refused."""
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "full.bin").write_bytes(b"1")
    (models / "checkpoints" / "empty.bin").write_bytes(b"")
    (models / "checkpoints" / "dir.bin").mkdir()
    (models / "blocked").write_bytes(b"a file where a folder should be")
    plan = plan_import({"nodes": [_node(1, "A", _model("full.bin"), _model("empty.bin"), _model("dir.bin"),
                                        _model("x.bin", "blocked/sub"))]}, tmp_path)
    assert [e.name for e in plan.skipped] == ["full.bin"]
    assert [e.name for e in plan.downloads] == ["empty.bin"]
    assert ["folder is in the way" in r.reason or "not a folder" in r.reason for r in plan.refused] == [True, True]


def test_not_a_workflow_refused(tmp_path: Path) -> None:
    """Files that are not UI-format workflows are refused with a usable message."""
    api = tmp_path / "api.json"
    api.write_text(json.dumps({"3": {"class_type": "KSampler", "inputs": {}}}))
    with pytest.raises(RefusedError, match="API-format"):
        plan_import(api, tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RefusedError, match="not valid JSON"):
        plan_import(bad, tmp_path)
    with pytest.raises(RefusedError, match="cannot read"):
        plan_import(tmp_path / "missing.json", tmp_path)
    with pytest.raises(RefusedError, match="not a JSON object"):
        plan_import([1, 2], tmp_path)  # type: ignore[arg-type]
    with pytest.raises(RefusedError, match="not a folder"):
        plan_import({"nodes": []}, api)


def test_project_from_workflow(write_workflow: Any, tmp_path: Path) -> None:
    """The project has one download step per missing model and a name stable per file and folder."""
    path = write_workflow("loopback_models.json", SERVER=S)
    comfy = tmp_path / "ComfyUI"
    project = ProjectSpec.from_comfyui_workflow(path, comfy)
    assert project == project_from_workflow(str(path), str(comfy))
    assert project.name == import_project_name(path, comfy)
    assert project.name.startswith("import:loopback_models@")
    assert import_project_name(path, tmp_path / "other") != project.name
    assert len(project.steps) == 6  # six distinct models, none present yet
    assert all(isinstance(s, DownloadSpec) and Path(s.dest).is_absolute() for s in project.steps)
    data = project_from_workflow_data(json.loads(path.read_text()), comfy, name="from-api")
    assert data.name == "from-api" and data.steps == project.steps


def test_plan_to_dict_is_json(load_fixture: Any, tmp_path: Path) -> None:
    """The plan serialises to JSON with redacted URLs."""
    wf = {"nodes": [_node(1, "A", _model("a.bin", url=f"{S}/files/a.bin?token=SECRET"))]}
    doc = json.loads(json.dumps(plan_import(wf, tmp_path).to_dict()))
    assert doc["download"][0]["url"].endswith("token=***")
    assert "SECRET" not in json.dumps(doc)
    assert set(doc) == {"comfyui", "models_dir", "extra_model_paths", "download", "skip", "bypassed", "refused",
                        "conflicts", "node_packs"}
