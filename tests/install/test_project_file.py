"""Project files (TOML): the schema of SPEC section 7, paths relative to the file, precise refusals."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from engine import DownloadSpec, InstallSpec, ProjectSpec, RefusedError
from engine._projects._file import load_project, parse_project


def write(tmp_path: Path, text: str, name: str = "project.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def refusal(tmp_path: Path, text: str) -> RefusedError:
    with pytest.raises(RefusedError) as info:
        load_project(write(tmp_path, text))
    assert info.value.code == "E_INVALID_INPUT"
    return info.value


def test_the_spec_example_loads_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    """The SPEC's example file gives download and install specs with absolute paths in its folder."""
    folder = tmp_path / "proj"
    folder.mkdir()
    spec = load_project(write(folder, """\
        name = "my-project"

        [[steps]]
        kind = "download"
        url = "https://example.org/model.safetensors"
        dest = "models/checkpoints/model.safetensors"
        sha256 = "...."            # optional

        [[steps]]
        kind = "install"
        argv = ["python", "-m", "pip", "install", "-r", "requirements.txt"]
        cwd = "ComfyUI"           # optional
        timeout_s = 600           # optional
        scope = "package-index"   # optional circuit-breaker scope
        """))
    assert spec == ProjectSpec(name="my-project", steps=[
        DownloadSpec(url="https://example.org/model.safetensors",
                     dest=str(folder / "models" / "checkpoints" / "model.safetensors"), sha256="....", headers={}),
        InstallSpec(argv=["python", "-m", "pip", "install", "-r", "requirements.txt"], cwd=str(folder / "ComfyUI"),
                    env=None, timeout_s=600.0, scope="package-index"),
    ])


def test_defaults_cwd_is_the_folder_and_dest_takes_the_url_name(tmp_path: Path) -> None:
    """Without cwd an install runs in the file's folder; without dest a download lands there by URL name."""
    spec = load_project(write(tmp_path, """\
        name = "p"
        [[steps]]
        kind = "download"
        url = "https://example.org/a/vae.safetensors"
        headers = { Authorization = "Bearer x" }
        [[steps]]
        kind = "download"
        url = "https://example.org/b.bin"
        dest = "models/"
        [[steps]]
        kind = "install"
        argv = ["git", "clone", "https://example.org/app.git"]
        env = { GIT_TERMINAL_PROMPT = "0" }
        [[steps]]
        kind = "install"
        argv = ["true"]
        cwd = "/opt/elsewhere"
        """))
    download, folder_dest, install, absolute = spec.steps
    assert isinstance(download, DownloadSpec) and download.dest == str(tmp_path) + os.sep
    assert download.headers == {"Authorization": "Bearer x"}
    assert isinstance(folder_dest, DownloadSpec) and folder_dest.dest == str(tmp_path / "models") + os.sep
    assert isinstance(install, InstallSpec) and install.cwd == str(tmp_path) and install.env == {"GIT_TERMINAL_PROMPT": "0"}
    assert isinstance(absolute, InstallSpec) and absolute.cwd == "/opt/elsewhere"


@pytest.mark.parametrize(("text", "field", "message"), [
    ('name = "p"\n[[steps]]\nkind = "download"\nurll = "https://x/y"\n', "steps[0].urll",
     "steps[0]: unknown field 'urll'"),
    ('name = "p"\n[[steps]]\nkind = "install"\nargv = ["a"]\n[[steps]]\nkind = "download"\nurl = "https://x"\n'
     'argv = ["b"]\n', "steps[1].argv", "steps[1]: unknown field 'argv'"),
    ('name = "p"\n[[steps]]\nkind = "download"\n', "steps[0].url", "steps[0]: missing field 'url'"),
    ('name = "p"\n[[steps]]\nurl = "https://x"\n', "steps[0].kind", "steps[0]: missing field 'kind'"),
    ('name = "p"\n[[steps]]\nkind = "shell"\n', "steps[0].kind", "steps[0]: unknown kind 'shell'"),
    ('name = "p"\n[[steps]]\nkind = "install"\nargv = "pip install torch"\n', "steps[0].argv",
     "steps[0].argv: must be an array of strings, not a shell string"),
    ('name = "p"\n[[steps]]\nkind = "install"\nargv = ["pip", 3]\n', "steps[0].argv", "non-empty array of strings"),
    ('name = "p"\n[[steps]]\nkind = "install"\nargv = ["pip"]\ntimeout_s = "10"\n', "steps[0].timeout_s",
     "positive number"),
    ('name = "p"\n[[steps]]\nkind = "install"\nargv = ["pip"]\nenv = { A = 1 }\n', "steps[0].env",
     "the value of 'A' must be a string"),
    ('name = "p"\n[[steps]]\nkind = "download"\nurl = "https://x"\nsha256 = 5\n', "steps[0].sha256",
     "must be a string, not a number"),
    ('name = "p"\n', "steps", "add at least one [[steps]]"),
    ('[[steps]]\nkind = "install"\nargv = ["a"]\n', "name", "missing field 'name'"),
    ('name = "p"\nnmae = "q"\n[[steps]]\nkind = "install"\nargv = ["a"]\n', "nmae", "unknown field 'nmae'"),
    ('name = "p"\nsteps = ["a"]\n', "steps", "array of tables"),
])
def test_refusals_name_the_step_and_field(tmp_path: Path, text: str, field: str, message: str) -> None:
    """Unknown, missing and mistyped fields are refused naming steps[i] and the field."""
    refused = refusal(tmp_path, text)
    assert refused.field == field
    assert message in refused.message and refused.message.startswith(str(tmp_path / "project.toml"))


def test_unreadable_files_are_refused_clearly(tmp_path: Path) -> None:
    """A missing file, a directory and broken TOML are refused naming the file."""
    for path, words in ((tmp_path / "nope.toml", "no such project file"), (tmp_path, "is a directory")):
        with pytest.raises(RefusedError, match=words):
            load_project(path)
    refused = refusal(tmp_path, 'name = "p"\n[[steps]\n')
    assert "invalid TOML" in refused.message and "line 2" in refused.message
    (tmp_path / "bin.toml").write_bytes(b"name = \"\xff\"\n")
    with pytest.raises(RefusedError, match="not UTF-8"):
        load_project(tmp_path / "bin.toml")


def test_parse_project_takes_already_parsed_data(tmp_path: Path) -> None:
    """parse_project builds the same spec from a mapping and a base folder."""
    spec = parse_project({"name": "p", "steps": [{"kind": "install", "argv": ["x"], "cwd": "sub"}]}, tmp_path)
    assert spec.steps == [InstallSpec(argv=["x"], cwd=str(tmp_path / "sub"))]
