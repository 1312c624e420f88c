"""engine._platform's pieces, native and fallback, on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import DownloadSpec, StateDirLocked, _platform
from engine._download._kind import DownloadKind
from engine._platform import _select
from engine._store import SnapshotStore


@pytest.fixture
def forcing() -> Iterator[Any]:
    """force_fallback for one test; whatever the run forced (--platform-fallback) comes back after."""
    before = set(_select._forced)
    yield _platform.force_fallback
    _platform.force_fallback(*before)


def test_portable_lock_refuses_a_second_engine_and_takes_over_a_dead_one(tmp_path: Path, forcing: Any) -> None:
    """The portable lock says who holds the directory, and a pid file left by a dead process is taken over."""
    forcing("lock")
    first = SnapshotStore(tmp_path)
    first.open()
    with pytest.raises(StateDirLocked, match=f"pid {os.getpid()}"):
        SnapshotStore(tmp_path).open()
    first.close()
    assert not (tmp_path / "lock.owner").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "lock.owner").write_text(dead.stdout)  # a SIGKILLed engine's leftover
    again = SnapshotStore(tmp_path)
    again.open()
    assert (tmp_path / "lock.owner").read_text().strip() == str(os.getpid())
    again.close()


def test_flock_is_the_native_lock_here(tmp_path: Path, forcing: Any) -> None:
    """On Linux the lock is flock, and the refused engine reads the holder's pid from the lock file."""
    forcing()
    assert _platform.lock_kind() == "flock"
    held = _platform.acquire_lock(str(tmp_path))
    with pytest.raises(_platform.LockHeld) as info:
        _platform.acquire_lock(str(tmp_path))
    assert info.value.holder == str(os.getpid())
    held.release()
    _platform.acquire_lock(str(tmp_path)).release()


def test_without_syncfs_each_snapshot_of_a_batch_is_fsynced(tmp_path: Path, forcing: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """syncfs makes a batch durable with no per-file fsync; without it every temp file is fsynced."""
    from engine._store import OpSnapshot
    from engine._writer import SnapshotWriter

    calls: list[int] = []
    real = _platform.fsync_file
    monkeypatch.setattr(_platform, "fsync_file", lambda fd: (calls.append(fd), real(fd))[1])
    store = SnapshotStore(tmp_path)
    store.open()
    try:
        snaps = [(f"op{i}", store.encode(OpSnapshot(id=f"op{i}", kind="k", seq=i, spec={}, status="pending")))
                 for i in range(5)]
        forcing()
        SnapshotWriter(store)._commit(snaps)
        native = len(calls)
        forcing("syncfs")
        SnapshotWriter(store)._commit(snaps)
        assert (native, len(calls) - native) == (0, 5)
        forcing("dirsync", "syncfs")  # as on Windows: files fsynced, no directory descriptor at all
        assert _platform.open_dir(tmp_path) is None and not _platform.has_syncfs()
        store.delete("op0")
        assert sorted(p.name for p in store.ops_dir.iterdir()) == [f"op{i}.msgpack" for i in range(1, 5)]
    finally:
        store.close()


def test_pread_fallback_leaves_the_position_alone(tmp_path: Path, forcing: Any) -> None:
    """Without pread (Windows) reads and writes at an offset seek back to where the file was."""
    forcing("pread")
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"0123456789")
        assert _platform.pread(fd, 3, 2) == b"234"
        assert _platform.pwrite(fd, b"AB", 0) == 2
        assert os.lseek(fd, 0, os.SEEK_CUR) == 10
        assert _platform.pread(fd, 10, 0) == b"AB23456789"
    finally:
        os.close(fd)


def test_case_is_detected_per_folder_and_folds_destinations(tmp_path: Path, forcing: Any) -> None:
    """This file system tells Model from model; forced case-insensitive, two such downloads are one resource."""
    forcing()
    (tmp_path / "models").mkdir()
    assert _platform.case_insensitive(tmp_path / "models" / "not-yet" / "deeper") is False
    assert not [p for p in (tmp_path / "models").iterdir()]  # the probe file is gone
    kind = DownloadKind()
    a = kind.resource_key(DownloadSpec(url="https://x/a", dest=str(tmp_path / "models" / "Model.safetensors")))
    b = kind.resource_key(DownloadSpec(url="https://x/b", dest=str(tmp_path / "models" / "model.safetensors")))
    assert a != b
    forcing("case")
    a = kind.resource_key(DownloadSpec(url="https://x/a", dest=str(tmp_path / "models" / "Model.safetensors")))
    b = kind.resource_key(DownloadSpec(url="https://x/b", dest=str(tmp_path / "models" / "model.safetensors")))
    assert a == b


def test_rcvlowat_and_paths_on_linux(forcing: Any) -> None:
    """SO_RCVLOWAT is offered on Linux unless forced off; long paths and commands pass through unchanged here."""
    forcing()
    assert _platform.rcvlowat_supported() is True
    forcing("rcvlowat")
    assert _platform.rcvlowat_supported() is False
    with pytest.raises(OSError):
        _platform.set_rcvlowat(object(), 1024)
    assert _platform.long_path("/a" * 200) == "/a" * 200
    assert _platform.resolve_command("pip", {"PATH": ""}) == "pip"
    assert _platform.spawn_group_kwargs() == {"start_new_session": True}
    with pytest.raises(ValueError, match="unknown platform fallback"):
        _platform.force_fallback("nope")


def test_default_state_dir_follows_platformdirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$RECOVERY_STATE_DIR wins; otherwise XDG_STATE_HOME (platformdirs' Linux convention)."""
    monkeypatch.delenv("RECOVERY_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert _platform.default_state_dir() == tmp_path / "recovery-engine"
    monkeypatch.setenv("RECOVERY_STATE_DIR", str(tmp_path / "mine"))
    assert _platform.default_state_dir() == tmp_path / "mine"


def test_pid_alive_tells_a_running_process_from_a_reaped_one() -> None:
    """pid_alive: this process is alive, a finished and reaped child is not."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert _platform.pid_alive(os.getpid()) is True
    assert _platform.pid_alive(int(done.stdout)) is False


async def test_engine_treats_case_variants_as_one_file_where_the_folder_ignores_case(
        tmp_path: Path, forcing: Any, autojump_clock: Any) -> None:
    """Forced case-insensitive: Model/model downloads are one operation, and find() folds case."""
    from engine import open_engine
    from engine.testing import INLINE_DISK, FaultServer, Faults

    forcing("case")
    (tmp_path / "models").mkdir()
    server = FaultServer()
    async with server.running():
        url = server.url("/files/m.bin", size=4096, faults=Faults(stall_after=1024, stall_s=600))
        async with open_engine(tmp_path / "state", disk=INLINE_DISK) as eng:
            first = await eng.submit(DownloadSpec(url=url, dest=str(tmp_path / "models" / "Model.safetensors")))
            again = await eng.submit(DownloadSpec(url=url, dest=str(tmp_path / "models" / "model.safetensors")))
            assert again.id == first.id
            found = eng.find(str(tmp_path / "models" / "MODEL.SAFETENSORS"))
            assert found is not None and found.id == first.id
            await eng.cancel(first.id)
