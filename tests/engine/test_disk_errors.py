"""Disk full and permission errors through the engine, at the OS boundary.

Where the tests may mount (root or CAP_SYS_ADMIN), the destination is a real
tiny tmpfs: the kernel says ENOSPC and EROFS, and statvfs reports the real free
space. Elsewhere (or with ``RECOVERY_TEST_NO_MOUNT=1``) the download kind's
``write`` and ``statvfs`` seams play the file system, and the same assertions run.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Callable

import attrs
import msgpack
import pytest

from engine import DownloadSpec, RefusedError, Settings, Status, open_engine
from engine.testing import INLINE_DISK
from engine._download._kind import DownloadKind
from engine.testing import FaultServer, Faults

MIB = 1024 * 1024


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    srv = FaultServer()
    async with srv.running():
        yield srv


def _mount(*args: str) -> bool:
    if os.environ.get("RECOVERY_TEST_NO_MOUNT"):
        return False
    try:
        subprocess.run(["mount", *args], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


@attrs.define(eq=False)
class Disk:
    """A small destination file system: a real tmpfs, or the kind's seams when mounting is not allowed."""

    path: Path
    real: bool
    room: int | None = None  # seam only: bytes the "disk" still takes; None is unlimited
    denied: bool = False  # seam only: every write fails with EACCES

    def kind(self) -> DownloadKind:
        """The download kind to run: the built-in one on a real mount, else one with a failing writer."""
        if self.real:
            return DownloadKind()
        return DownloadKind(write=self._write, statvfs=self._statvfs)

    def _write(self, fd: int, data: Any) -> int:
        if self.denied:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        if self.room is not None:
            if self.room <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = data[: self.room]
        n = os.write(fd, data)
        if self.room is not None:
            self.room -= n
        return n

    def _statvfs(self, path: str) -> os.statvfs_result:
        real = os.statvfs(path)
        if self.room is None:
            return real
        blocks = self.room // 4096
        return os.statvfs_result((4096, 4096, 512, blocks, blocks, 100, 50, 50, 0, 255))

    def free_bytes(self) -> int:
        st = self.kind()._statvfs(str(self.path))
        return int(st.f_bavail) * int(st.f_frsize)

    def grow(self) -> None:
        """Make room: remount the tmpfs at 16 MiB, or lift the seam's limit."""
        if self.real:
            assert _mount("-o", "remount,size=16m", str(self.path))
        else:
            self.room = None


def small_disk(tmp_path: Path, options: str) -> Iterator[Disk]:
    path = tmp_path / "disk"
    path.mkdir()
    if not _mount("-t", "tmpfs", "-o", options, "tmpfs", str(path)):
        disk = Disk(path, real=False)
        if "ro" in options.split(","):
            disk.denied = True
        else:
            disk.room = 2 * MIB
        yield disk
        return
    try:
        yield Disk(path, real=True)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=10)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    yield from small_disk(tmp_path, "size=2m,mode=0755")


@pytest.fixture
def ro_disk(tmp_path: Path) -> Iterator[Disk]:
    yield from small_disk(tmp_path, "ro,size=1m")


def settings_for(disk: Disk) -> Settings:
    return Settings(initial_delay_s=1.0, jitter=0.0, download_root=str(disk.path))


def snapshot_state(state_dir: Path, op_id: str) -> dict[str, Any]:
    payload = msgpack.unpackb((state_dir / "operations" / f"{op_id}.msgpack").read_bytes(), raw=False)
    op: dict[str, Any] = payload["operation"]
    return op


async def run_one(
    disk: Disk, state_dir: Path, spec: DownloadSpec, then: Callable[[Any, Any], Any] | None = None
) -> Any:
    async with open_engine(state_dir=state_dir, settings=settings_for(disk), kinds=[disk.kind()], disk=INLINE_DISK) as eng:
        op = await eng.submit(spec)
        final = await eng.wait(op.id)
        if then is not None:
            return await then(eng, final)
        return final


async def test_disk_full_while_writing_then_force_retry_resumes(
    server: FaultServer, disk: Disk, tmp_path: Path, autojump_clock: Any
) -> None:
    """ENOSPC mid-body fails with E_DISK_FULL keeping the .part; retry_now is refused, force_retry resumes."""
    # No Content-Length, so the free-space check cannot see it coming: the disk fills mid-write.
    file = server.add_file("/big.bin", size=4 * MIB, faults=Faults(no_length=True))
    spec = DownloadSpec(url=server.base_url + "/big.bin", dest="big.bin", sha256=file.sha256)
    part = disk.path / "big.bin.part"
    state_dir = tmp_path / "state"

    async def after_failure(eng: Any, failed: Any) -> Any:
        assert failed.status is Status.FAILED, failed
        assert failed.error.code == "E_DISK_FULL" and not failed.error.retryable
        assert str(part) in failed.error.message and "disk" in failed.error.suggestion.lower()
        kept = part.stat().st_size
        assert 0 < kept < file.size
        assert snapshot_state(state_dir, failed.id)["state"]["offset"] == kept
        assert part.read_bytes() == file.read(0, kept)
        with pytest.raises(RefusedError) as refused:
            await eng.retry_now(failed.id)
        assert refused.value.code == "E_NOT_RETRYABLE" and "force" in refused.value.message
        assert eng.get(failed.id).status is Status.FAILED
        disk.grow()
        await eng.force_retry(failed.id)
        return kept, await eng.wait(failed.id)

    kept, final = await run_one(disk, state_dir, spec, after_failure)
    assert final.status is Status.SUCCESS, final.error
    dest = disk.path / "big.bin"
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == file.sha256 and not part.exists()
    first, second = server.stats.paths["/big.bin"].records
    assert first.range_start == 0
    assert second.status == 206 and second.range_start == kept and second.bytes_sent == file.size - kept


async def test_too_little_free_space_is_refused_before_writing(
    server: FaultServer, disk: Disk, tmp_path: Path, autojump_clock: Any
) -> None:
    """A known size larger than the free space fails with E_DISK_FULL naming both numbers, writing nothing."""
    file = server.add_file("/huge.bin", size=4 * MIB)
    free = disk.free_bytes()
    assert 0 < free < file.size
    final = await run_one(disk, tmp_path / "state", DownloadSpec(url=server.base_url + "/huge.bin", dest="huge.bin"))
    assert final.status is Status.FAILED and final.error.code == "E_DISK_FULL"
    message = final.error.message
    assert f"({free} bytes)" in message and f"({file.size} bytes)" in message, message
    part = disk.path / "huge.bin.part"
    assert not os.path.lexists(part)  # no empty .part left (SPEC 6.1: disk full before the first byte)
    assert not (disk.path / "huge.bin").exists()


async def test_read_only_destination_is_a_permission_error(
    server: FaultServer, ro_disk: Disk, tmp_path: Path, autojump_clock: Any
) -> None:
    """A read-only file system (EROFS; EACCES on the seam) fails at once with E_PERMISSION, not retried."""
    server.add_file("/m.bin", size=MIB)
    final = await run_one(ro_disk, tmp_path / "state", DownloadSpec(url=server.base_url + "/m.bin", dest="m.bin"))
    assert final.status is Status.FAILED, final
    assert final.error.code == "E_PERMISSION" and not final.error.retryable
    assert "m.bin.part" in final.error.message and "permission" in final.error.suggestion.lower()
    assert final.retries_total == 0
    assert not (ro_disk.path / "m.bin").exists()
