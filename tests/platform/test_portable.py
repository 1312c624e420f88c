"""The platform package is the only door to POSIX-only calls, and the engine runs without them."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_MODULES = {"fcntl", "termios", "resource", "msvcrt"}
_NAMES = {"killpg", "syncfs", "O_DIRECTORY", "SO_RCVLOWAT", "pread", "pwrite"}


def _offences(path: Path) -> list[str]:
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in _MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in _MODULES \
                and node.level == 0:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr in _NAMES and not (
                isinstance(node.value, ast.Name) and node.value.id == "_platform"):
            found.append(f".{node.attr}")
        elif isinstance(node, ast.Constant) and node.value in (_MODULES - {"resource"}) | _NAMES:  # a field may be "resource"
            found.append(repr(node.value))
    return [f"{path.relative_to(ROOT)}:{o}" for o in found]


def test_no_platform_calls_outside_the_platform_package() -> None:
    """No module of engine/ or supervisors/ outside engine/_platform imports fcntl/termios/resource/msvcrt
    or touches killpg, syncfs, O_DIRECTORY, SO_RCVLOWAT, pread or pwrite."""
    files = [p for pkg in ("engine", "supervisors") for p in (ROOT / pkg).rglob("*.py")
             if "_platform" not in p.relative_to(ROOT).parts]
    assert len(files) > 40
    offences = [o for p in files for o in _offences(p)]
    assert offences == []


def test_the_scan_catches_an_offence(tmp_path: Path) -> None:
    """The scanner itself finds each kind of offence (so an empty result above means something)."""
    bad = ROOT / "engine" / "_scan_probe_tmp.py"
    bad.write_text("import fcntl\nimport os\nos.killpg(1, 9)\nx = getattr(os, 'O_DIRECTORY')\n")
    try:
        assert _offences(bad) == [f"engine/_scan_probe_tmp.py:{o}" for o in ("import fcntl", ".killpg", "'O_DIRECTORY'")]
    finally:
        bad.unlink()


_BLOCKED_RUN = textwrap.dedent('''
    import importlib, importlib.abc, pkgutil, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("fcntl", "termios", "resource"):
                raise ImportError(f"{name} is blocked (as on Windows)")
            return None

    sys.meta_path.insert(0, Block())
    for name in ("fcntl", "termios", "resource"):
        sys.modules.pop(name, None)
    import engine
    names = [m.name for m in pkgutil.walk_packages(engine.__path__, "engine.") if not m.name.endswith("__main__")]
    for name in names:
        importlib.import_module(name)
    assert not {"fcntl", "termios", "resource"} & set(sys.modules), sorted(sys.modules)
    from engine import _platform
    assert _platform.lock_kind() == "portable"
    # The rest of the portable paths too: per-file fsync (no syncfs), no SO_RCVLOWAT, no directory
    # fsync, no pread (as on Windows); the download below must still end exact.
    _platform.force_fallback("lock", "syncfs", "rcvlowat", "dirsync", "pread")
    assert not (_platform.has_syncfs() or _platform.rcvlowat_supported() or _platform.dir_sync_supported())
    import os
    fsynced = []
    real_fsync = os.fsync
    os.fsync = lambda fd: (fsynced.append(fd), real_fsync(fd))[1]

    import hashlib, trio
    from pathlib import Path
    from engine import DownloadSpec, Settings, Status, open_engine
    from engine.testing import FaultServer, Faults

    async def main(tmp):
        srv = FaultServer()
        async with srv.running():
            f = srv.add_file("/m.bin", size=3_000_000, faults=Faults(drop_after=1_000_000, drop_times=1))
            settings = Settings(initial_delay_s=0.05, jitter=0.0, download_root=str(tmp / "dl"))
            async with open_engine(state_dir=tmp / "state", settings=settings) as eng:
                assert (tmp / "state" / "lock.owner").exists()
                op = await eng.submit(DownloadSpec(url=srv.base_url + "/m.bin", dest="m.bin", sha256=f.sha256))
                final = await eng.wait(op.id)
            assert final.status is Status.SUCCESS, final.error
            assert hashlib.sha256((tmp / "dl" / "m.bin").read_bytes()).hexdigest() == f.sha256
            assert not (tmp / "state" / "lock.owner").exists()
        assert fsynced, "nothing was fsynced"
        print("imported", len(names), "modules; download ok")

    trio.run(main, Path(sys.argv[1]))
''')


def test_engine_imports_and_downloads_without_fcntl_termios_resource(tmp_path: Path) -> None:
    """With fcntl, termios and resource unimportable (a meta-path blocker, as on Windows), every engine
    module imports and a download that drops once resumes to the exact file through the portable paths
    (portable lock, per-file fsync, no SO_RCVLOWAT, no directory fsync, no pread)."""
    proc = subprocess.run([sys.executable, "-c", _BLOCKED_RUN, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "download ok" in proc.stdout
    assert int(proc.stdout.split()[1]) > 60


def test_forced_fallbacks_reach_this_process_and_the_ones_it_starts(request: Any) -> None:
    """What --platform-fallback forces (all of them with 'all': no syncfs, no SO_RCVLOWAT, the portable
    lock, no directory fsync, no pread) is in force here and in every engine process a test starts; without
    the option nothing is forced anywhere."""
    from engine import _platform
    from engine._platform import _select

    raw = request.config.getoption("--platform-fallback")
    expected = sorted(_platform.FALLBACKS.keys() - {"case"}) if raw == "all" else sorted(n for n in raw.split(",") if n)
    assert sorted(_select._forced) == expected
    probe = ("from engine import _platform; from engine._platform import _select; "
             "print('|'.join([','.join(sorted(_select._forced)), _platform.lock_kind(), str(_platform.has_syncfs()), "
             "str(_platform.rcvlowat_supported()), str(_platform.dir_sync_supported())]))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    forced, lock, syncfs, rcvlowat, dirsync = proc.stdout.strip().split("|")
    assert sorted(n for n in forced.split(",") if n) == expected
    assert (lock == "portable") is ("lock" in expected)
    assert (syncfs == "False") is ("syncfs" in expected or "dirsync" in expected)
    assert (rcvlowat == "False") is ("rcvlowat" in expected)
    assert (dirsync == "False") is ("dirsync" in expected)
