"""The state directory and its crash-safe msgpack snapshots (SPEC section 8).

Every write is atomic: a temp file in the same directory, fsync, rename,
fsync of the directory. A snapshot that cannot be decoded is moved aside
to ``<id>.msgpack.corrupt`` and reported; one with a newer ``schema`` is left
untouched and reported; the rest load normally. One engine owns a state
directory at a time (the lock of ``engine._platform``: flock, msvcrt or portable).
Platform calls (fsync, directory sync, the lock) go through ``engine._platform``.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

import attrs
import msgpack

from . import _platform
from ._convert import converter
from ._errors import StateDirError, StateDirLocked

__all__ = ["SCHEMA", "OpSnapshot", "SnapshotProblem", "SnapshotStore", "atomic_write", "default_state_dir",
           "fsync_dir_fd", "write_temp"]

#: Version of the snapshot format written by this code.
SCHEMA = 1


def default_state_dir() -> Path:
    """``$RECOVERY_STATE_DIR``, else the platform's user state dir (``platformdirs``)."""
    return _platform.default_state_dir()


@attrs.frozen(kw_only=True)
class OpSnapshot:
    """Everything needed to bring one operation back after a restart."""

    id: str
    kind: str
    seq: int
    spec: dict[str, Any]
    status: str
    error: dict[str, Any] | None = None
    retries: int = 0
    retries_total: int = 0
    integrity_retry_used: bool = False
    state: dict[str, Any] = attrs.Factory(dict)
    bytes_done: int = 0
    bytes_total: int | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    first_failure_at: float | None = None
    output_tail: list[str] = attrs.Factory(list)
    timeline: list[dict[str, Any]] = attrs.Factory(list)  # absent in older snapshots
    # the settings in force when it was written, for a report read from the state dir (SPEC 10.2)
    settings: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class SnapshotProblem:
    """A snapshot that was not loaded, and why."""

    path: str
    reason: str
    moved_to: str | None


def write_temp(path: Path, data: bytes, *, mode: int = 0o600, fsync: bool = True) -> Path:
    """Write ``data`` to a new temp file beside ``path`` and return it (removed on failure).

    The first half of every atomic write here; the caller renames it into
    place once it is durable (``fsync`` now, or one ``syncfs`` for a batch).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            _platform.fsync_file(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def fsync_dir_fd(dir_fd: int | None, path: Path) -> None:
    """fsync a directory by its open descriptor, or open ``path`` for it (a no-op on Windows)."""
    _platform.fsync_dir(path, dir_fd)


def atomic_write(path: Path, data: bytes, *, dir_fd: int | None = None, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old or the new file, never half."""
    os.replace(write_temp(path, data, mode=mode), path)
    fsync_dir_fd(dir_fd, path.parent)


def remove_leftover_temps(root: Path) -> None:
    """Delete ``.<name>.<hex>.tmp`` files a crash left anywhere in the state directory.

    They are only ever written by `write_temp` and renamed at once; while the
    directory lock is held nobody else writes them. Links are not followed.
    """
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            if _TEMP_NAME.fullmatch(name):
                try:
                    os.unlink(os.path.join(dirpath, name))
                except OSError:
                    pass


_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


def _ensure_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.chmod(path, 0o700)
    except PermissionError:  # pragma: no cover - a dir we don't own; use it as it is
        pass


@attrs.define(eq=False)
class SnapshotStore:
    """The state directory: lock, operation snapshots, statistics."""

    root: Path
    _lock: _platform.StateLock | None = None
    _ops_fd: int | None = None

    @property
    def ops_dir(self) -> Path:
        return self.root / "operations"

    def open(self) -> None:
        """Create the directories (0700) and take the lock.

        Raises `StateDirLocked` when another engine holds it, `StateDirError`
        when the directory cannot be made or used (naming it and the reason).
        """
        try:
            _ensure_private_dir(self.root)
            _ensure_private_dir(self.ops_dir)
            _ensure_private_dir(self.root / "logs")
            lock = _platform.acquire_lock(str(self.root))
        except _platform.LockHeld as held:
            raise StateDirLocked(
                f"another engine (pid {held.holder}) is already using the state directory {self.root}; "
                "stop it or choose another --state-dir"
            ) from None
        except OSError as exc:
            raise StateDirError(
                f"cannot use the state directory {self.root}: {exc.strerror or exc}; "
                "choose another with --state-dir or $RECOVERY_STATE_DIR"
            ) from exc
        self._lock = lock
        self._ops_fd = _platform.open_dir(self.ops_dir)
        remove_leftover_temps(self.root)

    def close(self) -> None:
        _platform.close_dir(self._ops_fd)
        self._ops_fd = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def ops_fd(self) -> int | None:
        """An open descriptor of ``operations/`` (for fsync and syncfs); None where directories can't be synced."""
        if self._lock is None:
            raise RuntimeError("the snapshot store is not open")
        return self._ops_fd

    def path_for(self, op_id: str) -> Path:
        return self.ops_dir / f"{op_id}.msgpack"

    @staticmethod
    def encode(snap: OpSnapshot) -> bytes:
        """The bytes of a snapshot file (writes go through `SnapshotWriter`)."""
        return msgpack.packb({"schema": SCHEMA, "operation": converter.unstructure(snap)}, use_bin_type=True)

    def delete(self, op_id: str) -> None:
        try:
            self.path_for(op_id).unlink()
        except FileNotFoundError:
            return
        if self._ops_fd is not None:
            _platform.fsync_dir(self.ops_dir, self._ops_fd)

    def load_all(self) -> tuple[list[OpSnapshot], list[SnapshotProblem]]:
        """Every readable snapshot, plus the problems with the others."""
        snaps: list[OpSnapshot] = []
        problems: list[SnapshotProblem] = []
        for entry in sorted(os.scandir(self.ops_dir), key=lambda e: e.name):
            if not entry.name.endswith(".msgpack") or entry.name.startswith("."):
                if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                    os.unlink(entry.path)  # a write interrupted by a crash
                continue
            path = Path(entry.path)
            try:
                with open(path, "rb") as f:
                    payload = msgpack.unpackb(f.read(), raw=False)
                if not isinstance(payload, dict) or not isinstance(payload.get("schema"), int):
                    raise ValueError("no schema version")
                if payload["schema"] > SCHEMA:
                    problems.append(SnapshotProblem(
                        str(path), f"written by a newer version (schema {payload['schema']} > {SCHEMA}); "
                        "left untouched", None))
                    continue
                snap = converter.structure(payload["operation"], OpSnapshot)
                if snap.id + ".msgpack" != entry.name:
                    raise ValueError(f"file name does not match operation id {snap.id!r}")
                snaps.append(snap)
            except Exception as exc:  # noqa: BLE001 - any decode failure means "corrupt"
                moved = path.with_name(path.name + ".corrupt")
                os.replace(path, moved)
                problems.append(SnapshotProblem(str(path), f"cannot be decoded: {exc}", str(moved)))
        return snaps, problems

    def write_stats(self, record: dict[str, Any]) -> None:
        atomic_write(self.root / "stats.msgpack",
                     msgpack.packb({"schema": SCHEMA, "stats": record}, use_bin_type=True))

    def read_stats(self) -> dict[str, Any]:
        try:
            data = msgpack.unpackb((self.root / "stats.msgpack").read_bytes(), raw=False)
            stats = data.get("stats") if isinstance(data, dict) else None
            return stats if isinstance(stats, dict) else {}
        except FileNotFoundError:
            return {}
        except Exception:  # noqa: BLE001 - statistics are not worth refusing to start over
            return {}
