"""The install kind with real child processes (real time: process waits let a mock clock jump)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import InstallSpec, RefusedError, Settings, Status, open_engine
from engine.testing import INLINE_DISK
from engine._projects._install import InstallKind, _proc_stat, _stop_leftover

PY = sys.executable


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def alive(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie is dead)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def fast(**kw: Any) -> Settings:
    return Settings(**{"initial_delay_s": 0.05, "jitter": 0.0, "max_delay_s": 0.2, **kw})


async def settle(eng: Any, op_id: str, *statuses: Status, within: float = 10) -> Any:
    with trio.fail_after(within):
        while eng.get(op_id).status not in statuses:
            await trio.sleep(0.01)
    return eng.get(op_id)


async def read_pids(path: Path, count: int) -> list[int]:
    with trio.fail_after(10):
        while True:
            if path.exists():
                pids = [int(x) for x in path.read_text().split()]
                if len(pids) >= count:
                    return pids
            await trio.sleep(0.01)


TREE = """\
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(sys.argv[1], "w") as f:
    f.write(f"{os.getpid()} {child.pid}\\n")
print("both running", flush=True)
time.sleep(60)
"""


async def test_network_failures_in_output_are_retried_until_success(tmp_path: Path) -> None:
    """A command failing twice with "Connection reset by peer" succeeds after 2 retries."""
    counter = tmp_path / "count"
    flaky = script(tmp_path, "flaky.py", f"""\
        import sys
        from pathlib import Path
        p = Path({str(counter)!r})
        n = int(p.read_text()) if p.exists() else 0
        p.write_text(str(n + 1))
        if n < 2:
            print("Collecting torch", flush=True)
            print("ERROR: [Errno 104] Connection reset by peer", file=sys.stderr)
            sys.exit(1)
        print("Successfully installed torch")
        """)
    with trio.fail_after(20):
        async with open_engine(tmp_path / "state", fast(), disk=INLINE_DISK) as eng:
            async with eng.subscribe() as sub:
                op = await eng.submit(InstallSpec(argv=[PY, flaky]))
                final = await eng.wait(op.id)
                events = sub.drain()
    assert final.status is Status.SUCCESS and final.retries_total == 2
    assert counter.read_text() == "3"
    assert [e["error"]["code"] for e in events if e.type == "retry_scheduled"] == ["E_NET_INTERRUPTED"] * 2
    assert final.output_tail == ["Successfully installed torch"]


async def test_plain_error_fails_at_once_with_its_output(tmp_path: Path) -> None:
    """A command failing without a network cause is E_INSTALL_FAILED at once, output tail attached."""
    bad = script(tmp_path, "bad.py", """\
        import sys
        print("Building wheel for foo", flush=True)
        print("error: Microsoft Visual C++ 14.0 is required", file=sys.stderr)
        sys.exit(3)
        """)
    with trio.fail_after(20):
        async with open_engine(tmp_path / "state", fast(), disk=INLINE_DISK) as eng:
            op = await eng.submit(InstallSpec(argv=[PY, bad]))
            final = await eng.wait(op.id)
    assert final.status is Status.FAILED and final.retries_total == 0
    assert final.error is not None and final.error.code == "E_INSTALL_FAILED" and not final.error.retryable
    assert "exited with code 3" in final.error.message and "Visual C++" in final.error.message
    assert final.error.suggestion
    assert final.output_tail == ["Building wheel for foo", "error: Microsoft Visual C++ 14.0 is required"]


async def test_timeout_is_a_network_timeout(tmp_path: Path) -> None:
    """Exceeding timeout_s stops the command and is classified E_NET_TIMEOUT."""
    slow = script(tmp_path, "slow.py", "import time; print('downloading', flush=True); time.sleep(30)\n")
    started = time.monotonic()
    with trio.fail_after(20):
        async with open_engine(tmp_path / "state", fast(max_retries=0), disk=INLINE_DISK) as eng:
            op = await eng.submit(InstallSpec(argv=[PY, slow], timeout_s=0.5))
            final = await eng.wait(op.id)
    assert final.status is Status.EXHAUSTED
    assert final.error is not None and final.error.code == "E_NET_TIMEOUT"
    assert "timeout_s=0.5" in final.error.message and "downloading" in final.error.message
    assert time.monotonic() - started < 10


async def test_pause_stops_the_whole_process_group(tmp_path: Path) -> None:
    """Pausing a running install leaves no process of its group alive, grandchildren included."""
    pids_file = tmp_path / "pids"
    tree = script(tmp_path, "tree.py", TREE)
    with trio.fail_after(20):
        async with open_engine(tmp_path / "state", fast(), disk=INLINE_DISK) as eng:
            op = await eng.submit(InstallSpec(argv=[PY, tree, str(pids_file)]))
            pids = await read_pids(pids_file, 2)
            assert all(alive(pid) for pid in pids)
            t0 = trio.current_time()
            await eng.pause(op.id)
            paused = await settle(eng, op.id, Status.PAUSED)
            assert trio.current_time() - t0 < 1.0
            assert not any(alive(pid) for pid in pids)
            assert paused.output_tail == ["both running"]
            await eng.resume(op.id)  # a resumed install reruns its command
            pids_file.unlink()
            second = await read_pids(pids_file, 2)
            assert set(second).isdisjoint(pids)
            await eng.cancel(op.id)
            assert not any(alive(pid) for pid in second)


async def test_engine_shutdown_stops_the_whole_process_group(tmp_path: Path) -> None:
    """Leaving open_engine while an install runs kills its group and keeps it resumable."""
    pids_file = tmp_path / "pids"
    tree = script(tmp_path, "tree.py", TREE)
    with trio.fail_after(20):
        async with open_engine(tmp_path / "state", fast(), disk=INLINE_DISK) as eng:
            op = await eng.submit(InstallSpec(argv=[PY, tree, str(pids_file)]))
            pids = await read_pids(pids_file, 2)
        assert not any(alive(pid) for pid in pids)
        async with open_engine(tmp_path / "state", fast(), disk=INLINE_DISK) as eng:
            assert eng.get(op.id).status in (Status.PENDING, Status.IN_PROGRESS)
            pids_file.unlink(missing_ok=True)
            again = await read_pids(pids_file, 2)
            await eng.cancel(op.id)
        assert not any(alive(pid) for pid in again)


async def test_sigterm_ignored_is_killed_within_a_second(tmp_path: Path) -> None:
    """A command that ignores SIGTERM is killed with SIGKILL; the pause still takes under 1 s."""
    pids_file = tmp_path / "pids"
    stubborn = script(tmp_path, "stubborn.py", f"""\
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(pids_file)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
        """)
    with trio.fail_after(20):
        async with open_engine(tmp_path / "state", fast(), disk=INLINE_DISK) as eng:
            op = await eng.submit(InstallSpec(argv=[PY, stubborn]))
            [pid] = await read_pids(pids_file, 1)
            t0 = trio.current_time()
            await eng.pause(op.id)
            await settle(eng, op.id, Status.PAUSED)
            assert 0.4 < trio.current_time() - t0 < 1.0
            assert not alive(pid)


async def test_command_not_found_names_it(tmp_path: Path) -> None:
    """A command that cannot be found is a clear E_INSTALL_FAILED naming it."""
    with trio.fail_after(20):
        async with open_engine(tmp_path / "state", fast(), disk=INLINE_DISK) as eng:
            op = await eng.submit(InstallSpec(argv=["no-such-tool-xyz", "install"]))
            final = await eng.wait(op.id)
    assert final.status is Status.FAILED and final.retries_total == 0
    assert final.error is not None and final.error.code == "E_INSTALL_FAILED"
    assert "no-such-tool-xyz" in final.error.message and "not found" in final.error.message
    assert "no-such-tool-xyz" in final.error.suggestion


async def test_cwd_and_env_are_applied(tmp_path: Path) -> None:
    """The command runs in cwd with env merged onto the engine's environment."""
    work = tmp_path / "work"
    work.mkdir()
    show = script(tmp_path, "show.py", """\
        import os
        print(os.getcwd())
        print(os.environ["MY_FLAG"], "PATH" in os.environ)
        """)
    with trio.fail_after(20):
        async with open_engine(tmp_path / "state", fast(), disk=INLINE_DISK) as eng:
            op = await eng.submit(InstallSpec(argv=[PY, show], cwd=str(work), env={"MY_FLAG": "on"}))
            final = await eng.wait(op.id)
    assert final.status is Status.SUCCESS
    assert final.output_tail == [str(work), "on True"]
    assert final.spec["env"] == ["MY_FLAG"] and final.spec["cwd"] == str(work)


async def test_missing_cwd_fails_clearly(tmp_path: Path) -> None:
    """A working directory that does not exist (yet) fails the attempt naming it."""
    with trio.fail_after(20):
        async with open_engine(tmp_path / "state", fast(), disk=INLINE_DISK) as eng:
            op = await eng.submit(InstallSpec(argv=[PY, "-c", "pass"], cwd=str(tmp_path / "nope")))
            final = await eng.wait(op.id)
    assert final.error is not None and final.error.code == "E_INSTALL_FAILED"
    assert str(tmp_path / "nope") in final.error.message


async def test_output_tail_keeps_the_last_200_lines(tmp_path: Path) -> None:
    """Only the last 200 lines are kept, and a carriage-return progress bar keeps its last frame."""
    chatty = script(tmp_path, "chatty.py", """\
        import sys
        for i in range(500):
            print(f"line {i}")
        sys.stdout.write("progress 10%\\rprogress 50%\\rprogress 100%\\n")
        sys.stdout.write("no newline at the end")
        """)
    with trio.fail_after(20):
        async with open_engine(tmp_path / "state", fast(), disk=INLINE_DISK) as eng:
            op = await eng.submit(InstallSpec(argv=[PY, chatty]))
            final = await eng.wait(op.id)
    tail = final.output_tail
    assert len(tail) == 200 and tail[0] == "line 302" and tail[-2:] == ["progress 100%", "no newline at the end"]


def test_validation_refuses_shell_strings_and_bad_fields(tmp_path: Path) -> None:
    """A shell string, an empty argv, a bad timeout or env are refused naming the field."""
    kind, settings = InstallKind(), Settings()
    cases = [
        (InstallSpec(argv="pip install torch"), "argv"),  # type: ignore[arg-type]
        (InstallSpec(argv=[]), "argv"),
        (InstallSpec(argv=["pip", 3]), "argv"),  # type: ignore[list-item]
        (InstallSpec(argv=["pip"], timeout_s=0), "timeout_s"),
        (InstallSpec(argv=["pip"], timeout_s=float("nan")), "timeout_s"),
        (InstallSpec(argv=["pip"], env={"A=B": "x"}), "env"),
        (InstallSpec(argv=["pip"], env={"A": 1}), "env"),  # type: ignore[dict-item]
        (InstallSpec(argv=["pip"], scope=""), "scope"),
    ]
    for spec, field in cases:
        with pytest.raises(RefusedError) as info:
            kind.validate(spec, settings)
        assert info.value.field == field and info.value.code == "E_INVALID_INPUT"
    checked = kind.validate(InstallSpec(argv=["pip"], cwd="rel"), settings)
    assert checked.cwd == os.path.join(os.getcwd(), "rel")
    assert kind.validate(InstallSpec(argv=["pip"]), settings).cwd == os.getcwd()


def test_describe_shows_env_names_only_and_redacts_argv() -> None:
    """describe never shows env values, and credentials in argv URLs are dropped."""
    kind = InstallKind()
    spec = kind.validate(InstallSpec(argv=["pip", "install", "--index-url", "https://u:s3cret@host/simple",
                                           "--token=abc123"], env={"HF_TOKEN": "hf_xyz"}, scope="pypi"),
                         Settings())
    shown = kind.describe(spec)
    text = repr(shown)
    assert "hf_xyz" not in text and "s3cret" not in text and "abc123" not in text
    assert shown["env"] == ["HF_TOKEN"] and shown["scope"] == "pypi" and shown["timeout_s"] is None
    assert kind.scope(spec, {}) == "pypi" and kind.scope(attrs_evolve(spec, scope=None), {}) is None


def attrs_evolve(spec: Any, **kw: Any) -> Any:
    import attrs

    return attrs.evolve(spec, **kw)


async def test_same_command_in_the_same_folder_is_one_operation(tmp_path: Path) -> None:
    """Submitting the same argv and cwd while it runs returns the live operation."""
    with trio.fail_after(20):
        async with open_engine(tmp_path / "state", fast(), disk=INLINE_DISK) as eng:
            spec = InstallSpec(argv=[PY, "-c", "import time; time.sleep(30)"], cwd=str(tmp_path))
            first = await eng.submit(spec)
            second = await eng.submit(spec)
            other = await eng.submit(InstallSpec(argv=[PY, "-c", "pass"], cwd=str(tmp_path)))
            assert second.id == first.id and other.id != first.id
            await eng.cancel(first.id)


async def test_a_group_left_by_a_killed_engine_is_stopped_first() -> None:
    """The next attempt stops the group a crashed engine left running, and only that group."""
    proc = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        stat = _proc_stat(proc.pid)
        assert stat is not None
        with trio.fail_after(10):
            await _stop_leftover({"pgid": proc.pid, "leader_start": stat[2] + 1})  # not ours: untouched
            assert proc.poll() is None
            state = {"pgid": proc.pid, "leader_start": stat[2]}
            await _stop_leftover(state)
            while proc.poll() is None:
                await trio.sleep(0.01)
        assert state == {}
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
