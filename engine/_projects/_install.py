"""The built-in ``install`` kind: a command run as its own process group (SPEC section 7).

One attempt runs ``spec.argv`` (a list, never a shell string) in ``spec.cwd``
with ``spec.env`` merged onto the engine's environment, as the leader of a
new session (``start_new_session=True``; on Windows a new process group), so the
command and everything it spawns can be stopped as a whole (``engine._platform``).

- Output: stdout and stderr are merged and read as they come; the last 200
  lines are the operation's ``output_tail`` (a ``\\r`` progress bar keeps only
  its latest frame) and travel with a failure as its evidence.
- Stopping: pause, cancel and engine shutdown cancel the attempt; the group
  gets SIGTERM, then SIGKILL 0.5 s later if anything in it is still alive,
  in a shielded, bounded scope, so no grandchild outlives the attempt and a
  pause stays under a second. The group is also stopped when the command
  exits on its own: an install's leftovers do not outlive it.
- After a crash: the group's id is checkpointed when the command starts. The
  next attempt first stops a group it finds still running from the killed
  engine (checked against the leader's start time), so a rerun never races
  the orphan of the last one.
- Classification: exit 0 is success; otherwise `classify_install` reads the
  exit and the output (a network cause is retried as the network code, the
  rest is ``E_INSTALL_FAILED``). A command that cannot be found, or run, is
  ``E_INSTALL_FAILED`` naming it; exceeding ``timeout_s`` is ``E_NET_TIMEOUT``
  (a hung install is almost always a stalled network).

Resource key: the same ``argv`` in the same ``cwd`` is one operation at a
time: submitting it again while one is live returns the live one (two pips
writing one environment at once can break it). After it has finished, the
same command may run again. ``env`` is not part of the key.

Resumable state (``ctx.state``): ``pgid`` and ``leader_start`` of the running
group, only while it runs. A retried install reruns its command from the
start, so commands must be idempotent.
"""

from __future__ import annotations

import codecs
import collections
import logging
import math
import os
import shlex
import subprocess
from typing import Any

import attrs
import trio

from .. import _platform
from .._errors import AttemptFailed, RefusedError, _redact, classify_install, error, failure
from .._kinds import AttemptContext
from .._settings import Settings
from .._specs import InstallSpec

__all__ = ["OUTPUT_TAIL_LINES", "InstallKind", "group_members", "stop_group"]

log = logging.getLogger("engine.install")

#: Lines of output kept on the operation.
OUTPUT_TAIL_LINES = 200
_KILL_AFTER_S = 0.5  # SIGTERM, then SIGKILL this much later (SPEC section 7)
_STOP_BOUND_S = 3.0  # the whole stop, shielded, never takes longer than this
_DRAIN_S = 1.0  # output still arriving after the group was stopped
_POLL_S = 0.01
_MAX_LINE = 4096  # a line without newline is cut (and shown) at this many characters
_PUBLISH_S = 0.2  # output_tail refreshes at most this often while running


def _refuse(field: str, message: str) -> RefusedError:
    return RefusedError("E_INVALID_INPUT", message, field=field)


# --- process groups ----------------------------------------------------------------


_proc_stat = _platform.proc_stat
group_members = _platform.group_members


def _group_alive(pgid: int) -> bool:
    members = group_members(pgid)
    return members is None or bool(members)


def _signal_group(pgid: int, kill: bool) -> bool:
    """Stop (SIGTERM / Ctrl-Break) or kill the group; False when it no longer exists."""
    try:
        return _platform.signal_group(pgid, kill)
    except PermissionError as exc:  # pragma: no cover - a member changed its uid
        log.warning("could not signal process group %d: %s", pgid, exc)
    return True


async def stop_group(pgid: int, leader: trio.Process | None = None) -> None:
    """SIGTERM the group, SIGKILL it after 0.5 s if anything is left, reap the leader.

    Shielded and bounded: it runs to the end even inside a cancelled scope
    (pause, cancel, shutdown) and never takes more than a few seconds.
    """
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + _STOP_BOUND_S
        if pgid == _platform.own_group():  # pragma: no cover - never signal our own group
            return
        if _signal_group(pgid, kill=False):
            with trio.move_on_after(_KILL_AFTER_S):
                while (leader is not None and leader.poll() is None) or _group_alive(pgid):
                    await trio.sleep(_POLL_S)
            if (leader is not None and leader.poll() is None) or _group_alive(pgid):
                _signal_group(pgid, kill=True)
        if leader is not None:
            await leader.wait()
        while _group_alive(pgid):  # SIGKILL is not instant for a process in the kernel
            await trio.sleep(_POLL_S)
    if scope.cancelled_caught:  # pragma: no cover - a process stuck in uninterruptible sleep
        log.warning("process group %d did not stop within %.0f s", pgid, _STOP_BOUND_S)


async def _stop_leftover(state: dict[str, Any]) -> None:
    """Stop the group a killed engine left running (same leader start time, or leader gone)."""
    pgid, start = state.pop("pgid", None), state.pop("leader_start", None)
    if not isinstance(pgid, int) or pgid <= 1 or pgid == _platform.own_group():
        return
    leader = _proc_stat(pgid)
    if leader is not None and leader[0] not in ("Z", "X") and (leader[1] != pgid or leader[2] != start):
        return  # that pid is another process now: not ours to stop
    members = group_members(pgid)
    if not members:
        return  # gone, or /proc cannot confirm it is ours
    log.warning("stopping process group %d left running by a previous run (%d processes)",
                pgid, len(members))
    await stop_group(pgid)


# --- output ------------------------------------------------------------------------


@attrs.define(eq=False)
class _Tail:
    """The last lines of a command's output, ``\\r``-aware, published to the operation."""

    ctx: AttemptContext
    lines: collections.deque[str] = attrs.Factory(lambda: collections.deque(maxlen=OUTPUT_TAIL_LINES))
    partial: str = ""
    _decoder: codecs.IncrementalDecoder = attrs.Factory(lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    _published: float = -math.inf

    def feed(self, data: bytes | bytearray) -> None:
        text = self.partial + self._decoder.decode(data)
        *complete, self.partial = text.split("\n")
        for line in complete:
            self._add(line)
        if len(self.partial) > _MAX_LINE:
            self._add(self.partial)
            self.partial = ""
        now = trio.current_time()
        if now - self._published >= _PUBLISH_S:
            self.publish()

    def _add(self, line: str) -> None:
        line = line.rstrip("\r")
        line = line.rsplit("\r", 1)[-1]  # a progress bar: only the last frame
        self.lines.append(line[:_MAX_LINE])

    def finish(self) -> list[str]:
        rest = self.partial + self._decoder.decode(b"", final=True)
        if rest.rstrip("\r"):
            self._add(rest)
        self.partial = ""
        return self.publish()

    def publish(self) -> list[str]:
        self._published = trio.current_time()
        shown = list(self.lines)
        if self.partial.strip():
            shown.append(self.partial.rsplit("\r", 1)[-1][:_MAX_LINE])
        shown = shown[-OUTPUT_TAIL_LINES:]
        self.ctx.set_output_tail(shown)
        return shown


async def _pump(stream: trio.abc.ReceiveStream, tail: _Tail) -> None:
    async with stream:
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            tail.feed(data)


# --- the kind ------------------------------------------------------------------------


def _not_found(argv0: str, cwd: str, env: dict[str, str]) -> AttemptFailed:
    if os.sep in argv0 or (os.altsep and os.altsep in argv0):
        where = f"no such file (relative to {cwd})" if not os.path.isabs(argv0) else "no such file"
        hint = f"Check the path {argv0!r} in argv."
    else:
        where = "not found on PATH"
        hint = (f"Install {argv0!r}, or put its folder on PATH (env PATH), or give its full path "
                f"as argv[0].")
    return AttemptFailed(error("E_INSTALL_FAILED", f"command not found: {argv0!r} ({where})",
                               suggestion=hint))


def _describe_argv(argv: list[str]) -> list[str]:
    return [_redact(arg) for arg in argv]


@attrs.define(eq=False)
class InstallKind:
    """Commands run as a child process group, output captured, stopped as a whole."""

    name: str = attrs.field(default="install", init=False)
    spec_type: type = attrs.field(default=InstallSpec, init=False)

    def validate(self, spec: Any, settings: Settings) -> InstallSpec:
        """Check the spec; return it with an absolute ``cwd`` (the working directory when unset)."""
        if not isinstance(spec, InstallSpec):
            raise _refuse("kind", f"an install needs an InstallSpec, not {type(spec).__name__}")
        argv = spec.argv
        if isinstance(argv, (str, bytes)):
            raise _refuse("argv", "argv must be a list of arguments, not a shell string "
                                  f"(for example {shlex.split(argv) if isinstance(argv, str) else []!r})")
        if not isinstance(argv, (list, tuple)) or not argv:
            raise _refuse("argv", "argv must be a non-empty list of strings")
        for i, arg in enumerate(argv):
            if not isinstance(arg, str):
                raise _refuse("argv", f"argv[{i}] must be a string, not {type(arg).__name__}")
            if "\x00" in arg:
                raise _refuse("argv", f"argv[{i}] contains a NUL character")
        if not argv[0].strip():
            raise _refuse("argv", "argv[0] (the command) must not be empty")
        cwd = self._cwd(spec.cwd)
        env = self._env(spec.env)
        timeout = spec.timeout_s
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
                    or timeout <= 0:
                raise _refuse("timeout_s", "timeout_s must be a positive number of seconds")
            timeout = float(timeout)
        scope = spec.scope
        if scope is not None and (not isinstance(scope, str) or not scope.strip()):
            raise _refuse("scope", "scope must be a non-empty string (or omitted)")
        return attrs.evolve(spec, argv=list(argv), cwd=cwd, env=env, timeout_s=timeout, scope=scope)

    @staticmethod
    def _cwd(cwd: Any) -> str:
        if cwd is None:
            return os.getcwd()
        if not isinstance(cwd, (str, os.PathLike)):
            raise _refuse("cwd", "cwd must be a path")
        raw = os.fspath(cwd)
        if not isinstance(raw, str) or not raw.strip() or "\x00" in raw:
            raise _refuse("cwd", "cwd must be a non-empty path")
        # Not required to exist yet: an earlier project step may create it.
        return os.path.abspath(os.path.expanduser(raw))

    @staticmethod
    def _env(env: Any) -> dict[str, str] | None:
        if env is None:
            return None
        if not isinstance(env, dict):
            raise _refuse("env", "env must be a mapping of names to string values")
        for key, value in env.items():
            if not isinstance(key, str) or not key or "=" in key or "\x00" in key:
                raise _refuse("env", f"env: {key!r} is not a valid variable name")
            if not isinstance(value, str) or "\x00" in value:
                raise _refuse("env", f"env: the value of {key} must be a string")
        return dict(env)

    def scope(self, spec: InstallSpec, state: dict[str, Any]) -> str | None:
        """The spec's breaker scope; None keeps the install away from the breaker."""
        return spec.scope

    def resource_key(self, spec: InstallSpec) -> str | None:
        return f"install:{spec.cwd}:{shlex.join(spec.argv)}"

    def describe(self, spec: InstallSpec) -> dict[str, Any]:
        """The spec as shown: environment variable names only (their values may be secrets)."""
        return {
            "argv": _describe_argv(spec.argv),
            "cwd": spec.cwd,
            "timeout_s": spec.timeout_s,
            "scope": spec.scope,
            "env": sorted(spec.env or {}),
        }

    def discard(self, spec: InstallSpec, state: dict[str, Any]) -> None:
        """Nothing to delete: a cancelled attempt's group is already stopped."""

    async def attempt(self, ctx: AttemptContext) -> None:
        """Run the command once: return on exit 0, else raise the classified failure."""
        spec: InstallSpec = ctx.spec
        await _stop_leftover(ctx.state)
        cwd = spec.cwd or os.getcwd()
        argv0 = spec.argv[0]
        if not os.path.isdir(cwd):
            raise AttemptFailed(error(
                "E_INSTALL_FAILED", f"cannot run {argv0!r}: the working directory {cwd} does not exist",
                suggestion="Check cwd; an earlier step that creates it must run first."))
        env = {**os.environ, **(spec.env or {})}
        program = _platform.resolve_command(argv0, env)  # PATHEXT lookup on Windows
        if program is None:
            raise _not_found(argv0, cwd, env)
        try:
            proc = await trio.lowlevel.open_process(
                [program, *spec.argv[1:]], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, **_platform.spawn_group_kwargs(),
            )
        except FileNotFoundError:
            raise _not_found(argv0, cwd, env) from None
        except PermissionError as exc:
            raise AttemptFailed(error(
                "E_INSTALL_FAILED", f"cannot run {argv0!r}: permission denied ({exc.strerror})",
                suggestion=f"Make {argv0!r} executable, or run it through its interpreter.")) from None
        except OSError as exc:
            raise AttemptFailed(error("E_INSTALL_FAILED", f"cannot run {argv0!r}: {exc}")) from None
        pgid = proc.pid  # the session leader's pid is its group's id
        log.info("op %s: started %s (pid %d) in %s", ctx.op_id, shlex.join(_describe_argv(spec.argv)),
                 proc.pid, cwd)
        tail = _Tail(ctx)
        timed_out = False
        try:
            async with trio.open_nursery() as nursery:
                assert proc.stdout is not None
                nursery.start_soon(_pump, proc.stdout, tail)
                try:
                    await self._record_group(ctx, pgid)
                    with trio.move_on_after(spec.timeout_s if spec.timeout_s is not None else math.inf) as timer:
                        await proc.wait()
                    timed_out = timer.cancelled_caught
                finally:
                    await stop_group(pgid, proc)
                    ctx.state.pop("pgid", None)
                    ctx.state.pop("leader_start", None)
                    nursery.cancel_scope.deadline = trio.current_time() + _DRAIN_S
        finally:
            lines = tail.finish()
        returncode = proc.returncode
        if timed_out:
            last = next((s for s in reversed(lines) if s.strip()), None)
            raise failure("E_NET_TIMEOUT", f"{argv0!r} was still running after timeout_s={spec.timeout_s:g} s "
                                           "and was stopped" + (f"; last output: {last.strip()[:300]}" if last else ""))
        if returncode == 0:
            return
        raise AttemptFailed(classify_install(returncode, lines, argv0))

    @staticmethod
    async def _record_group(ctx: AttemptContext, pgid: int) -> None:
        """Checkpoint the group's id, so a rerun after a crash can stop what is left of it."""
        stat = _proc_stat(pgid)
        ctx.state["pgid"] = pgid
        if stat is not None:
            ctx.state["leader_start"] = stat[2]
        await ctx.checkpoint()

