"""Windows file sharing, emulated on Linux: a file this process has open can be neither deleted nor
renamed, through any of its names (``PermissionError``, WinError 32, as for ``os.open`` on Windows).

With that rule in force, the download kind must still publish its verified ``.part`` (closing it first
where `engine._platform.open_files_can_be_renamed` says so), replace a file with overwrite, and leave no
empty ``.part`` after a 404. Without the platform's answer the same download fails: the emulation bites.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import _platform
from engine._platform import _select
from engine._download._kind import DownloadKind
from engine._settings import Settings
from engine._specs import DownloadSpec
from engine.testing import FaultServer

SIZE = 300_000


def _kind_tests() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "engine" / "test_download_kind.py"
    spec = importlib.util.spec_from_file_location("_download_kind_tests_for_rename", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_kt = _kind_tests()
Runner, client, server = _kt.Runner, _kt.client, _kt.server


def _open_here(path: str | os.PathLike[str]) -> bool:
    """Does this process hold a descriptor of the file named ``path``?"""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    for fd in os.listdir("/proc/self/fd"):
        try:
            other = os.stat(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino) and not os.path.isdir(f"/proc/self/fd/{fd}"):
            return True
    return False


@pytest.fixture
def windows_sharing(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """os.unlink/remove/replace/rename refuse a file this process has open; the refusals are recorded."""
    refused: list[str] = []

    def guard(name: str) -> None:
        real = getattr(os, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            for path in args[:2]:
                if isinstance(path, (str, os.PathLike)) and _open_here(path):
                    refused.append(f"{name} {path}")
                    raise PermissionError(13, "The process cannot access the file because it is being used by "
                                              "another process", str(path))
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, call)

    for name in ("unlink", "remove", "replace", "rename"):
        guard(name)
    yield refused


@pytest.fixture
def closing_first() -> Iterator[None]:
    """The platform says open files cannot be renamed (as on Windows)."""
    before = set(_select._forced)
    _platform.force_fallback(*before, "openrename")
    yield
    _platform.force_fallback(*before)


@pytest.fixture
def make(client: Any, tmp_path: Path) -> Callable[..., Any]:
    def build(url: str, **spec_fields: Any) -> Any:
        cfg = Settings(download_root=str(tmp_path / "root"))
        spec = DownloadKind().validate(DownloadSpec(url=url, dest="model.safetensors", **spec_fields), cfg)
        return Runner(client, spec, cfg)

    return build


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_publish_closes_first_where_open_files_cannot_be_renamed(
        server: FaultServer, make: Callable[..., Any], windows_sharing: list[str], closing_first: None) -> None:
    """Under Windows sharing rules a download lands exact, with no .part and no staging name left."""
    file = server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin", sha256=file.sha256)
    await run.run()
    assert hashlib.sha256(run.dest.read_bytes()).hexdigest() == file.sha256
    assert _names(run.dest.parent) == ["model.safetensors"] and os.stat(run.dest).st_nlink == 1
    assert windows_sharing == []


async def test_overwrite_replaces_where_open_files_cannot_be_renamed(
        server: FaultServer, make: Callable[..., Any], windows_sharing: list[str], closing_first: None) -> None:
    """With overwrite, the user's file is replaced by the verified download; nothing else is left."""
    file = server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin", overwrite=True)
    run.dest.parent.mkdir(parents=True, exist_ok=True)
    run.dest.write_bytes(b"old model")
    await run.run()
    assert run.dest.read_bytes() == file.read()
    assert _names(run.dest.parent) == ["model.safetensors"] and windows_sharing == []


async def test_existing_file_is_still_e_exists_where_open_files_cannot_be_renamed(
        server: FaultServer, make: Callable[..., Any], windows_sharing: list[str], closing_first: None) -> None:
    """A file that appears at dest during the transfer is never replaced: E_EXISTS, the file untouched."""
    from engine.testing import Faults

    server.add_file("/m.bin", size=SIZE, faults=Faults(rate_bps=2_000_000))
    run = make(server.base_url + "/m.bin")
    real_publish_link = os.link

    def link(src: Any, dst: Any, **kw: Any) -> None:
        if str(dst) == str(run.dest) and not os.path.exists(run.dest):
            Path(run.dest).write_bytes(b"the user's file, saved meanwhile")
        real_publish_link(src, dst, **kw)

    import engine._download._safefile as safefile

    safefile.os.link = link  # type: ignore[assignment]
    try:
        exc, _ = await run.fail()
    finally:
        safefile.os.link = real_publish_link  # type: ignore[assignment]
    assert exc.error.code == "E_EXISTS"
    assert run.dest.read_bytes() == b"the user's file, saved meanwhile"


async def test_404_leaves_no_empty_part_where_open_files_cannot_be_deleted(
        server: FaultServer, make: Callable[..., Any], windows_sharing: list[str], closing_first: None) -> None:
    """A request that never produced a byte leaves no empty .part, closing it before removing it."""
    run = make(server.base_url + "/missing.bin")
    exc, _ = await run.fail()
    assert exc.error.code == "E_HTTP_CLIENT"
    assert not os.path.lexists(run.part) and windows_sharing == []


async def test_the_emulation_bites_when_the_platform_answer_is_ignored(
        server: FaultServer, make: Callable[..., Any], windows_sharing: list[str]) -> None:
    """Sanity: renaming the open .part (the POSIX order) is refused under the emulated rule."""
    if not _platform.open_files_can_be_renamed():
        pytest.skip("the run forces the Windows order already")
    server.add_file("/m.bin", size=SIZE)
    run = make(server.base_url + "/m.bin")
    exc, _ = await run.fail()
    assert exc.error.code == "E_PERMISSION" and windows_sharing
