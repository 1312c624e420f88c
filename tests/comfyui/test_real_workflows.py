"""``recovery import`` of every real workflow in ../shared/workflows against loopback hubs (SPEC 6.3, 7.1).

Hugging Face is a `HubServer` reached through ``HF_ENDPOINT`` (with a gated
repository and a token); civitai is a second one whose URLs replace
``https://civitai.com`` in a test copy of each workflow (and which wants
``CIVITAI_API_TOKEN``). Both redirect to one CDN that serves small bodies.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from engine._cli import main
from engine.testing import FaultServer, content_sha256
from engine.testing._hubserver import HubServer

WORKFLOWS = Path(__file__).resolve().parents[2] / ".." / "shared" / "workflows"
if not WORKFLOWS.is_dir():  # a worktree next to main: the shared folder is beside both
    WORKFLOWS = Path("/work/shared/workflows")
SIZE = 3000
HF_TOKEN = "hf_real_workflow_token"
CIVITAI_TOKEN = "civitai_key_42"
GATED = "black-forest-labs/FLUX.1-Fill-dev"
_HF_PATH = re.compile(r"^/([^/]+/[^/]+)/(?:resolve|blob)/[^/]+/(.+)$")


@attrs.define
class Hubs:
    cdn: FaultServer
    hf: HubServer
    civitai: HubServer


@pytest.fixture
def hubs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Hubs]:
    cdn = FaultServer(host="127.0.0.2")
    with cdn.run_in_thread():
        hf = HubServer(cdn=cdn, default_size=SIZE, gated={GATED: HF_TOKEN})
        civitai = HubServer(cdn=cdn, host="127.0.0.3", default_size=SIZE, civitai_token=CIVITAI_TOKEN)
        with hf.run_in_thread() as hf_url, civitai.run_in_thread() as civitai_url:
            for name in ("HUGGING_FACE_HUB_TOKEN", "RECOVERY_STATE_DIR"):
                monkeypatch.delenv(name, raising=False)
            monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
            monkeypatch.setenv("HF_ENDPOINT", hf_url)
            monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
            monkeypatch.setenv("CIVITAI_ENDPOINT", civitai_url)  # the civitai rules (token, sign-in) apply there
            monkeypatch.setenv("CIVITAI_API_TOKEN", CIVITAI_TOKEN)
            monkeypatch.setenv("COLUMNS", "200")
            yield Hubs(cdn=cdn, hf=hf, civitai=civitai)


def _nodes(graph: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from graph.get("nodes", [])
    for sub in (graph.get("definitions") or {}).get("subgraphs", []) or []:
        yield from _nodes(sub)


def expected(workflow: dict[str, Any]) -> tuple[dict[tuple[str, str], dict[str, Any]], set[tuple[str, str]]]:
    """What the workflow needs, read independently: ``{(directory, name): entry}`` and the bypassed keys."""
    needed: dict[tuple[str, str], dict[str, Any]] = {}
    inactive: dict[tuple[str, str], dict[str, Any]] = {}
    for node in _nodes(workflow):
        for entry in (node.get("properties") or {}).get("models", []) or []:
            key = (entry["directory"], entry["name"])
            (inactive if node.get("mode") in (2, 4) else needed).setdefault(key, entry)
    return needed, set(inactive) - set(needed)


def served_sha(url: str) -> str:
    """The sha256 of what the loopback hubs serve for ``url`` (seeded by its CDN path)."""
    path = urllib.parse.urlsplit(url).path
    m = _HF_PATH.match(path)
    cdn_path = f"/repos/{m[1]}/{m[2]}" if m else f"/civitai/{path.rsplit('/', 1)[-1]}"
    return content_sha256(cdn_path, SIZE)


def test_every_real_workflow_imports(hubs: Hubs, tmp_path: Path, capsys: Any) -> None:
    """Each needed model lands at models/<directory>/<name>; bypassed ones are listed, never asked for;
    entries with a hash fail E_INTEGRITY (the test bytes are not the real model); tokens reach their
    own hosts only; a second run fetches nothing."""
    state = tmp_path / "state"
    files = sorted(WORKFLOWS.glob("*.json"))
    assert len(files) == 12
    results: dict[str, tuple[int, Path, dict[str, Any]]] = {}
    for source in files:
        text = source.read_text(encoding="utf-8").replace("https://civitai.com", hubs.civitai.base_url)
        workflow = tmp_path / "workflows" / source.name
        workflow.parent.mkdir(exist_ok=True)
        workflow.write_text(text, encoding="utf-8")
        comfy = tmp_path / source.stem / "ComfyUI"
        comfy.mkdir(parents=True)
        code = main(["import", str(workflow), "--comfyui", str(comfy), "--json", "--state-dir", str(state),
                     "--set", "initial_delay_s=0.01", "--set", "max_retries=1"])
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err
        plan = json.loads(out.splitlines()[0])
        assert plan["type"] == "import_plan"
        results[source.name] = (code, comfy, plan)

        needed, bypassed = expected(json.loads(text))
        assert {(e["directory"], e["name"]) for e in plan["bypassed"]} == bypassed, source.name
        assert {(e["directory"], e["name"]) for e in plan["download"]} == set(needed), source.name
        assert plan["refused"] == [] and plan["conflicts"] == [], source.name
        hashed = [e for e in needed.values() if e.get("hash")]
        for (directory, name), entry in needed.items():
            dest = comfy / "models" / directory / name
            if hashed:
                assert not dest.exists(), f"{source.name}: {name} kept although its hash cannot match"
            else:
                assert hashlib.sha256(dest.read_bytes()).hexdigest() == served_sha(entry["url"]), name
        for directory, name in bypassed:
            assert not (comfy / "models" / directory / name).exists()
        assert not list(comfy.rglob("*.part")), source.name
        if hashed:
            assert code == 1 and "E_INTEGRITY" in out + err, source.name
        else:
            assert code == 0, f"{source.name}: {err[-2000:]}"

    # The models of bypassed nodes were never asked for; /blob/ links were fetched as /resolve/.
    asked = {path for path, _auth in hubs.hf.authorization_seen}
    assert not any("Qwen-Image-Lightning" in p for p in asked)
    assert not any("/blob/" in p for p in asked)
    hidream = results["hidream_e1_full.json"][2]
    assert all(e["url"].count("/blob/") == 0 or "/resolve/" in e["fetched_as"] for e in hidream["download"])
    flux = results["flux_fill_inpaint_example.json"][1] / "models" / "diffusion_models" / "flux1-fill-dev.safetensors"
    assert flux.stat().st_size == SIZE  # the gated model, with the token: the file, not an HTML page
    # Tokens: each hub saw its own, the CDN none.
    assert {auth for _p, auth in hubs.hf.authorization_seen} == {f"Bearer {HF_TOKEN}"}
    assert {auth for _p, auth in hubs.civitai.authorization_seen} == {f"Bearer {CIVITAI_TOKEN}"}
    assert hubs.cdn.authorization_seen and {auth for _p, auth in hubs.cdn.authorization_seen} == {None}
    civitai_files = results["lora_multiple.json"][1] / "models"
    assert sorted(p.name for p in civitai_files.rglob("*.safetensors")) == [
        "MoXinV1.safetensors", "blindbox_v1_mix.safetensors", "dreamshaper_8.safetensors"]

    # A second run of each successful import fetches nothing.
    before = (len(hubs.hf.authorization_seen), len(hubs.civitai.authorization_seen), hubs.cdn.stats.requests)
    for name, (code, comfy, plan) in results.items():
        if code != 0:
            continue
        again = main(["import", str(tmp_path / "workflows" / name), "--comfyui", str(comfy),
                      "--state-dir", str(state)])
        _out, err = capsys.readouterr()
        assert again == 0, err
        assert "nothing to download" in err, err
    after = (len(hubs.hf.authorization_seen), len(hubs.civitai.authorization_seen), hubs.cdn.stats.requests)
    assert after == before


def test_sizes_of_a_real_workflow(hubs: Hubs, tmp_path: Path, capsys: Any) -> None:
    """--sizes asks each missing model (HEAD through the hub, with the token) and totals what goes where."""
    comfy = tmp_path / "ComfyUI"
    (comfy / "models").mkdir(parents=True)
    code = main(["import", str(WORKFLOWS / "flux_fill_inpaint_example.json"), "--comfyui", str(comfy),
                 "--dry-run", "--sizes", "--json", "--state-dir", str(tmp_path / "state")])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    sizes = doc["sizes"]
    assert [m["size"] for m in sizes["models"]] == [SIZE] * 4  # the gated one too (the token is set)
    assert sizes["total_bytes"] == 4 * SIZE
    assert len(sizes["volumes"]) == 1 and sizes["volumes"][0]["fits"] is True
    assert not list(comfy.rglob("*.safetensors*"))  # nothing written
    assert {auth for _p, auth in hubs.cdn.authorization_seen} <= {None}

    os.environ.pop("HF_TOKEN")  # without the token the gated model says what to do
    code = main(["import", str(WORKFLOWS / "flux_fill_inpaint_example.json"), "--comfyui", str(comfy),
                 "--dry-run", "--sizes", "--state-dir", str(tmp_path / "state")])
    out = capsys.readouterr().out
    assert code == 0
    assert "flux1-fill-dev.safetensors: E_AUTH" in out and "HF_TOKEN" in out
    assert f"{hubs.hf.base_url}/{GATED}" in out  # the model's page, where its licence is accepted
    assert re.search(r"to download: 8\.8 KiB in 4 files and 1 of unknown size into .* \(free ", out), out
