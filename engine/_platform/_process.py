"""Process trees: start a command as a group of its own and stop all of it (SPEC sections 7, 18).

- POSIX: the command leads a new session (``start_new_session``); its
  process group is signalled as a whole (SIGTERM, then SIGKILL), and
  members are read from ``/proc`` where it exists (Linux) to tell live
  processes from zombies.
- Windows: the command starts in a new process group
  (``CREATE_NEW_PROCESS_GROUP``, so the console's Ctrl-C goes to the engine,
  not to it); "terminate" is ``CTRL_BREAK_EVENT`` to that group, "kill" is
  ``taskkill /T /F`` of the tree under the leader. The group counts as
  alive while its leader runs. The leader's creation time stands in for
  Linux's start time, so a group left by a killed engine is stopped only
  while its pid still names the same process.
- Commands: argv lists run without a shell; on Windows ``argv[0]`` is
  looked up as Windows does (``PATH`` and ``PATHEXT``, so ``pip`` finds
  ``pip.exe`` and ``setup`` finds ``setup.bat``) with `shutil.which`.

Why not ``psutil``: what is needed here is a group signal, ``/proc`` (or
two Win32 calls through ``ctypes``) and ``shutil.which``; a compiled
dependency with wheels per platform would be the heaviest part of the
install for about a hundred lines of standard library.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from typing import Any

__all__ = ["group_members", "own_group", "pid_alive", "proc_stat", "process_usage", "resolve_command",
           "signal_group", "spawn_group_kwargs"]


def process_usage() -> tuple[float, float, int | None]:
    """CPU seconds of this process, of its finished children, and its peak resident bytes.

    POSIX: ``getrusage`` (``ru_maxrss`` is KiB on Linux, bytes on macOS).
    Windows: this process's CPU time only; children and peak memory are unknown (0.0, None).
    """
    if sys.platform == "win32":
        import time

        return time.process_time(), 0.0, None
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = me.ru_maxrss if sys.platform == "darwin" else me.ru_maxrss * 1024
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime, peak


def spawn_group_kwargs() -> dict[str, Any]:
    """Keyword arguments for `subprocess.Popen`/``trio`` that make the child lead a group of its own."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def resolve_command(argv0: str, env: dict[str, str]) -> str | None:
    """The program to run for ``argv0``; None when it cannot be found (Windows) .

    On POSIX the name is passed on unchanged (``exec`` searches ``PATH``
    itself, and reports a missing program). On Windows ``CreateProcess``
    only tries ``.exe``, so the name is looked up with ``PATHEXT`` here.
    """
    if sys.platform != "win32":
        return argv0
    return shutil.which(argv0, path=env.get("PATH") or env.get("Path"))


def own_group() -> int | None:
    """This process's own group id (never to be signalled); None on Windows."""
    if sys.platform == "win32":
        return None
    return os.getpgid(0)


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, pgid, start_time)`` of ``pid``, or None if it is gone or unknown.

    Linux: from ``/proc``. Windows: ``("R", pid, creation time)`` from
    ``GetProcessTimes`` (a process group there is its leader), and
    ``("?", pid, -1)`` for a process that exists but may not be queried, so
    that a pid reused by someone else's process never passes for the
    engine's own leftover command.
    """
    if sys.platform == "win32":
        return _win_proc_stat(pid)
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()  # the command name may contain spaces and ')'
    try:
        return fields[0], int(fields[2]), int(fields[19])
    except (IndexError, ValueError):
        return None


def group_members(pgid: int) -> list[int] | None:
    """Live (not zombie) pids in process group ``pgid``; None where the system cannot tell."""
    if sys.platform == "win32":
        return [pgid] if pid_alive(pgid) else []
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass  # some member is someone else's: fall through to /proc
    if not os.path.isdir("/proc/self"):
        return None
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for name in entries:
        if not name.isdigit():
            continue
        stat = proc_stat(int(name))
        if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
            members.append(int(name))
    return members


def signal_group(pgid: int, kill: bool) -> bool:
    """Ask the group to stop (``kill=False``) or kill it; False when it no longer exists.

    Raises `PermissionError` when a member may not be signalled.
    """
    if sys.platform == "win32":
        if not pid_alive(pgid):
            return False
        if not kill:
            try:
                os.kill(pgid, signal.CTRL_BREAK_EVENT)
                return True
            except OSError:
                # Ctrl-Break only reaches a group that shares the engine's console; started
                # without one (a GUI launcher), the group can only be killed.
                pass
        subprocess.run(["taskkill", "/PID", str(pgid), "/T", "/F"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return True
    try:
        os.killpg(pgid, signal.SIGKILL if kill else signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def pid_alive(pid: int) -> bool:
    """Is process ``pid`` running (a zombie counts as gone where ``/proc`` tells)?"""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        return _win_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but it exists
    stat = proc_stat(pid)
    return stat is None or stat[0] not in ("Z", "X")


def _win_pid_alive(pid: int) -> bool:
    """OpenProcess + WaitForSingleObject: never ``os.kill(pid, 0)``, which terminates on Windows."""
    if sys.platform != "win32":  # pragma: no cover - for the type checker
        return False
    import ctypes

    synchronize, wait_timeout = 0x0010_0000, 0x0000_0102
    kernel32 = ctypes.windll.kernel32
    handle = kernel32.OpenProcess(synchronize, False, pid)
    if not handle:
        return ctypes.GetLastError() == 5  # access denied: it exists
    try:
        return bool(kernel32.WaitForSingleObject(handle, 0) == wait_timeout)
    finally:
        kernel32.CloseHandle(handle)


def _win_proc_stat(pid: int) -> tuple[str, int, int] | None:
    """OpenProcess + GetProcessTimes: the creation time identifies a process across pid reuse."""
    if sys.platform != "win32":  # pragma: no cover - for the type checker
        return None
    import ctypes
    from ctypes import wintypes

    query_limited, synchronize, wait_timeout, access_denied = 0x1000, 0x0010_0000, 0x0000_0102, 5
    kernel32 = ctypes.windll.kernel32
    handle = kernel32.OpenProcess(query_limited | synchronize, False, pid)
    if not handle:
        return ("?", pid, -1) if ctypes.GetLastError() == access_denied else None
    try:
        if kernel32.WaitForSingleObject(handle, 0) != wait_timeout:
            return None  # it has exited
        created, exited, kernel, user = (wintypes.FILETIME() for _ in range(4))
        if not kernel32.GetProcessTimes(handle, ctypes.byref(created), ctypes.byref(exited),
                                        ctypes.byref(kernel), ctypes.byref(user)):
            return ("?", pid, -1)
        return "R", pid, (created.dwHighDateTime << 32) | created.dwLowDateTime
    finally:
        kernel32.CloseHandle(handle)
