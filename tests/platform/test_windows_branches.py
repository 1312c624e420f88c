"""engine._platform's Windows branches, run on Linux with the Windows calls replaced by recorders.

The module under test sees ``sys.platform == "win32"`` (its own ``sys`` is swapped, nothing else in
the process is); the Windows-only constants are given their Windows values. What is proven is the
decision each helper makes there: which flags, which signal, which command, which process to spare.
"""

from __future__ import annotations

import signal
import subprocess
import types
from typing import Any

import pytest

from engine._platform import _console, _process
from engine._projects import _install

CREATE_NEW_PROCESS_GROUP, CTRL_BREAK_EVENT, SIGBREAK = 0x200, 1, 21


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> Any:
    """engine._platform's process and console modules believe they run on Windows."""
    fake_sys = types.SimpleNamespace(platform="win32")
    for module in (_process, _console):
        monkeypatch.setattr(module, "sys", fake_sys)
    monkeypatch.setattr(subprocess, "CREATE_NEW_PROCESS_GROUP", CREATE_NEW_PROCESS_GROUP, raising=False)
    monkeypatch.setattr(signal, "CTRL_BREAK_EVENT", CTRL_BREAK_EVENT, raising=False)
    monkeypatch.setattr(signal, "SIGBREAK", SIGBREAK, raising=False)
    return monkeypatch


def test_installs_start_in_a_new_process_group_and_ctrl_c_includes_ctrl_break(windows: Any) -> None:
    """A Windows install gets CREATE_NEW_PROCESS_GROUP (not a POSIX session); Ctrl-C and Ctrl-Break both
    stop the CLI; there is no own group and no SIGTERM to catch."""
    assert _process.spawn_group_kwargs() == {"creationflags": CREATE_NEW_PROCESS_GROUP}
    assert _console.interrupt_signals() == (signal.SIGINT, SIGBREAK)
    assert _console.terminate_signals() == ()
    assert _process.own_group() is None


def test_stop_is_ctrl_break_to_the_group_and_kill_is_taskkill_of_the_tree(windows: Any) -> None:
    """Terminate sends CTRL_BREAK_EVENT to the group (never os.killpg); kill runs taskkill /T /F on the
    leader's tree without a shell; a group whose leader is gone is not signalled at all."""
    sent: list[tuple[int, int]] = []
    ran: list[Any] = []
    alive = {4242}
    windows.setattr(_process, "_win_pid_alive", lambda pid: pid in alive)
    windows.setattr(_process.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    windows.setattr(_process.os, "killpg", lambda *a: pytest.fail("os.killpg on Windows"))
    windows.setattr(_process.subprocess, "run", lambda argv, **kw: ran.append((argv, kw.get("shell", False))))
    assert _process.signal_group(4242, kill=False) is True
    assert sent == [(4242, CTRL_BREAK_EVENT)] and ran == []
    assert _process.signal_group(4242, kill=True) is True
    assert ran == [(["taskkill", "/PID", "4242", "/T", "/F"], False)]
    assert _process.group_members(4242) == [4242]
    alive.clear()
    assert _process.signal_group(4242, kill=False) is False and _process.group_members(4242) == []
    assert len(sent) == 1 and len(ran) == 1


def test_commands_are_looked_up_with_the_environments_path(windows: Any) -> None:
    """argv[0] is resolved with shutil.which on the command's own PATH (PATHEXT finds pip.exe, setup.bat);
    a name that is not found is None, so the install fails naming it."""
    asked: list[tuple[str, str | None]] = []
    found = {"pip": r"C:\Py\Scripts\pip.EXE", "setup": r"C:\proj\setup.BAT"}
    windows.setattr(_process.shutil, "which", lambda name, path=None: asked.append((name, path)) or found.get(name))
    assert _process.resolve_command("pip", {"Path": r"C:\Py\Scripts"}) == found["pip"]
    assert _process.resolve_command("setup", {"PATH": r"C:\proj"}) == found["setup"]
    assert _process.resolve_command("nope", {"PATH": r"C:\proj"}) is None
    assert asked == [("pip", r"C:\Py\Scripts"), ("setup", r"C:\proj"), ("nope", r"C:\proj")]


@pytest.mark.parametrize("now,stopped", [(("R", 4242, 111), True), (("R", 4242, 999), False),
                                         (("?", 4242, -1), False), (None, False)],
                         ids=["same process", "pid reused", "not ours to query", "gone"])
async def test_leftover_group_is_stopped_only_while_its_pid_is_the_same_process(
        windows: Any, autojump_clock: Any, now: Any, stopped: bool) -> None:
    """After a crash, the install a killed engine left is stopped only if the pid still has the recorded
    creation time; a reused pid (another program), a process we may not query, or a gone one is spared."""
    calls: list[tuple[int, bool]] = []
    alive = {4242} if now is not None else set()
    windows.setattr(_process, "_win_proc_stat", lambda pid: now)
    windows.setattr(_process, "_win_pid_alive", lambda pid: pid in alive)

    def signal_group(pgid: int, kill: bool) -> bool:
        calls.append((pgid, kill))
        alive.discard(pgid)
        return True

    windows.setattr(_install._platform, "signal_group", signal_group)
    state: dict[str, Any] = {"pgid": 4242, "leader_start": 111}
    await _install._stop_leftover(state)
    assert (calls == [(4242, False)]) is stopped and (calls == []) is not stopped
    assert state == {}


def test_the_leader_start_recorded_on_windows_is_its_creation_time(windows: Any) -> None:
    """proc_stat on Windows is the creation time of GetProcessTimes (what _record_group checkpoints)."""
    windows.setattr(_process, "_win_proc_stat", lambda pid: ("R", pid, 133_000_000_000_000_000))
    assert _process.proc_stat(77) == ("R", 77, 133_000_000_000_000_000)


def test_long_paths_get_the_extended_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past Windows' 260-character limit a path gets \\\\?\\ (\\\\?\\UNC\\ for a share); short or already
    prefixed paths are unchanged."""
    import ntpath
    import os

    from engine._platform import _paths

    monkeypatch.setattr(_paths, "sys", types.SimpleNamespace(platform="win32"))
    monkeypatch.setattr(_paths, "os", types.SimpleNamespace(fspath=os.fspath, path=ntpath))
    deep = "C:\\ComfyUI\\models\\" + "\\".join(["checkpoints"] * 25) + "\\model.safetensors"
    assert len(deep) > 260
    assert _paths.long_path(deep) == "\\\\?\\" + deep
    share = "\\\\nas\\models\\" + "x" * 260 + ".safetensors"
    assert _paths.long_path(share) == "\\\\?\\UNC\\nas\\models\\" + "x" * 260 + ".safetensors"
    assert _paths.long_path("C:\\ComfyUI\\models\\vae\\ae.safetensors") == "C:\\ComfyUI\\models\\vae\\ae.safetensors"
    assert _paths.long_path("\\\\?\\" + deep) == "\\\\?\\" + deep


def test_without_a_shared_console_stop_falls_back_to_taskkill(windows: Any) -> None:
    """Ctrl-Break cannot reach a group when the engine has no console (a GUI launcher): the stop is then
    taskkill of the tree, never a silent no-op that leaves the install running."""
    ran: list[Any] = []
    windows.setattr(_process, "_win_pid_alive", lambda pid: True)

    def no_console(pid: int, sig: int) -> None:
        raise OSError(6, "The handle is invalid")

    windows.setattr(_process.os, "kill", no_console)
    windows.setattr(_process.subprocess, "run", lambda argv, **kw: ran.append(argv))
    assert _process.signal_group(4242, kill=False) is True
    assert ran == [["taskkill", "/PID", "4242", "/T", "/F"]]


def test_ctrl_break_is_held_at_start_up_like_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where SIGBREAK exists, the start-up guard remembers it like SIGINT and hands both to KeyboardInterrupt."""
    import os

    from engine._cli._main import StartupGuard

    stand_in = signal.SIGUSR1  # Linux has no SIGBREAK: a signal nothing else uses here plays it
    monkeypatch.setattr(signal, "SIGBREAK", stand_in, raising=False)
    before = signal.getsignal(stand_in), signal.getsignal(signal.SIGINT)
    guard = StartupGuard()
    try:
        guard.install()
        os.kill(os.getpid(), stand_in)  # Ctrl-Break while the command loads: remembered, nothing raised
        assert guard.pending == [stand_in]
        assert guard.release() is True
        assert signal.getsignal(stand_in) is signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(stand_in, before[0])
        signal.signal(signal.SIGINT, before[1])
