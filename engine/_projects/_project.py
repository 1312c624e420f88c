"""The built-in ``project`` kind: ordered download and install steps as one operation.

A project is one operation (SPEC section 7): its steps are not operations of
their own. One attempt runs the steps from the first unfinished one, each
with its own kind (looked up in the engine's registry), through a context
that forwards to the project's.

Resumable state (``ctx.state``, written into the snapshot):

``done``         how many steps are finished (steps finish in order)
``step_state``   the running step's own kind-private state (a download's
                 offset and validators, an install's process group)

Durability: when a step returns, ``done`` moves on and ``step_state`` is
cleared in one checkpoint, *then* ``ctx.step_finished()`` gives the next step
a fresh retry budget. So after a failure, a pause or a killed process the
project continues at its first unfinished step, with that step's own
progress (a download resumes from its offset). A crash between a step's end
and that checkpoint reruns the step: a download then finds its recorded
completion and finishes at once; an install reruns its command, which must
be idempotent (SPEC section 7).

What the engine sees is the running step: its errors are the project's
(the message says which step), so the status, ``Attempt n/N`` and
classification are the step's; each step has its own retry budget. Progress
events carry the step's own fields plus ``step`` (the running step's number,
1-based, as shown "step 3/5"), ``steps_done`` and ``steps_total``. Field
names in refusals index the list from 0, like the file: ``steps[2].url``.

The breaker is asked when an attempt starts, for the step it starts with
(``scope``). Consecutive steps of the same scope run in the same attempt; at
a step boundary where the scope changes the attempt ends with `CONTINUE`,
and the engine asks the next scope's breaker (and for a slot) before the
next step starts. A failed step is retried by a new attempt that starts at
that step, so its retries go through its own scope.

Cancel stops the running step and discards only its partial data (a
download's ``.part``); files finished by earlier steps stay. The resource
key is ``project:<name>``: submitting a project with the name of a live one
returns the live one.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import attrs
import trio

from .._errors import AttemptFailed, RefusedError, classify_exception
from .._kinds import CONTINUE, AttemptContext, Continue, Kind, KindRegistry
from .._settings import Settings
from .._specs import DownloadSpec, InstallSpec, ProjectSpec

__all__ = ["STEP_KINDS", "ProjectKind", "step_context"]

log = logging.getLogger("engine.project")

#: The kinds a project step may be.
STEP_KINDS: dict[str, type] = {"download": DownloadSpec, "install": InstallSpec}


def _refuse(field: str, message: str) -> RefusedError:
    return RefusedError("E_INVALID_INPUT", message, field=field)


def step_context(ctx: AttemptContext, step: Any, state: dict[str, Any],
                 on_progress: Callable[[int, int | None, dict[str, Any]], None]) -> AttemptContext:
    """A context for one step that reports through the project's ``ctx``.

    Progress goes to ``on_progress`` (which adds the step fields); checkpoints
    write the project's snapshot (which holds ``state``); byte counters are
    added to the project's context by `fold_counters`.
    """

    async def on_checkpoint() -> None:
        await ctx.checkpoint()

    return AttemptContext(
        ctx.op_id, step, state, ctx.attempt, ctx.http, lambda: ctx.settings, on_progress, on_checkpoint,
        lambda: None, ctx.set_output_tail, trio.current_time, trio.current_time(), disk=ctx.disk,
    )


def fold_counters(into: AttemptContext, step_ctx: AttemptContext) -> None:
    """Add a step's byte counters to the project's (statistics, breaker, progress reset)."""
    into.received(step_ctx.bytes_received)
    into.made_durable(step_ctx.durable_bytes)
    into.discarded(step_ctx.bytes_discarded)


def _done(state: dict[str, Any], total: int) -> int:
    done = state.get("done", 0)
    return done if isinstance(done, int) and 0 <= done <= total else 0


def _step_state(state: dict[str, Any]) -> dict[str, Any]:
    step_state = state.get("step_state")
    if not isinstance(step_state, dict):
        step_state = state["step_state"] = {}
    return step_state


@attrs.define(eq=False)
class ProjectKind:
    """Runs a `ProjectSpec`'s steps in order, resuming at the first unfinished one."""

    registry: KindRegistry
    name: str = attrs.field(default="project", init=False)
    spec_type: type = attrs.field(default=ProjectSpec, init=False)

    def _kind_of(self, step: Any) -> Kind:
        return self.registry.get(step.kind)

    def validate(self, spec: Any, settings: Settings) -> ProjectSpec:
        """Validate every step with its own kind; a refusal names the step: ``steps[2].url``."""
        if not isinstance(spec, ProjectSpec):
            raise _refuse("kind", f"a project needs a ProjectSpec, not {type(spec).__name__}")
        if not isinstance(spec.name, str) or not spec.name.strip():
            raise _refuse("name", "the project needs a non-empty name")
        if not isinstance(spec.steps, (list, tuple)) or not spec.steps:
            raise _refuse("steps", "the project needs at least one step")
        steps: list[Any] = []
        dests: dict[str, int] = {}
        for i, step in enumerate(spec.steps):
            if not isinstance(step, tuple(STEP_KINDS.values())):
                raise _refuse(f"steps[{i}]", f"steps[{i}]: a step is a DownloadSpec or an InstallSpec, "
                                             f"not {type(step).__name__}")
            try:
                checked = self._kind_of(step).validate(step, settings)
            except RefusedError as exc:
                field = f"steps[{i}].{exc.field}" if exc.field else f"steps[{i}]"
                raise RefusedError(exc.code, f"steps[{i}]: {exc.message}", field=field) from None
            if isinstance(checked, DownloadSpec) and checked.dest is not None:
                if checked.dest in dests:
                    raise _refuse(f"steps[{i}].dest", f"steps[{i}]: the destination {checked.dest} is "
                                                      f"already written by steps[{dests[checked.dest]}]")
                dests[checked.dest] = i
            steps.append(checked)
        return attrs.evolve(spec, name=spec.name.strip(), steps=steps)

    def scope(self, spec: ProjectSpec, state: dict[str, Any]) -> str | None:
        """The breaker scope of the step that runs next (a download's host, an install's scope)."""
        done = _done(state, len(spec.steps))
        if done >= len(spec.steps):
            return None
        step = spec.steps[done]
        return self._kind_of(step).scope(step, _step_state(state))

    def resource_key(self, spec: ProjectSpec) -> str | None:
        return f"project:{spec.name}"

    def view_fields(self, spec: ProjectSpec, state: dict[str, Any]) -> dict[str, Any]:
        """Step counters for the operation's view before any progress is reported
        (a new project, or one loaded after a restart)."""
        total = len(spec.steps)
        done = _done(state, total)
        return {"step": min(done + 1, total), "steps_done": done, "steps_total": total}

    def describe(self, spec: ProjectSpec) -> dict[str, Any]:
        """Name and steps, each described by its own kind (no credentials)."""
        return {
            "name": spec.name,
            "steps": [{"kind": step.kind, **self._kind_of(step).describe(step)} for step in spec.steps],
        }

    def discard(self, spec: ProjectSpec, state: dict[str, Any]) -> None:
        """Discard only the running step's partial data; finished steps' files stay."""
        done = _done(state, len(spec.steps))
        if done < len(spec.steps):
            step = spec.steps[done]
            self._kind_of(step).discard(step, _step_state(state))
        state.clear()

    async def attempt(self, ctx: AttemptContext) -> Continue | None:
        """Run the unfinished steps in order, recording each durably before the next.

        At a step boundary where the next step has another breaker scope, the
        attempt ends with `CONTINUE`, so the engine asks that scope's breaker.
        """
        spec: ProjectSpec = ctx.spec
        total = len(spec.steps)
        done = _done(ctx.state, total)
        ctx.state["done"] = done
        last: tuple[int, int | None] = (0, None)
        for i in range(done, total):
            step = spec.steps[i]
            kind = self._kind_of(step)
            extra = {"step": i + 1, "steps_done": i, "steps_total": total}

            def on_progress(bytes_done: int, bytes_total: int | None, fields: dict[str, Any],
                            extra: dict[str, Any] = extra) -> None:
                nonlocal last
                last = (bytes_done, bytes_total)
                ctx.progress(bytes_done, bytes_total, **{**fields, **extra})

            sub = step_context(ctx, step, _step_state(ctx.state), on_progress)
            on_progress(0, None, {})
            try:
                await kind.attempt(sub)
            except AttemptFailed as exc:
                raise _in_step(exc, i, total, step) from exc
            except Exception as exc:  # noqa: BLE001 - classified here to name the step
                failed = classify_exception(exc)
                if failed.error.code == "E_INTERNAL":
                    log.exception("op %s: step %d raised an unexpected error", ctx.op_id, i + 1)
                raise _in_step(failed, i, total, step) from exc
            finally:
                fold_counters(ctx, sub)
            ctx.state["done"] = i + 1
            ctx.state["step_state"] = {}
            await ctx.checkpoint()
            if i + 1 < total:
                ctx.step_finished()  # the next step gets a fresh retry budget
            log.info("op %s: step %d/%d (%s) finished", ctx.op_id, i + 1, total, step.kind)
            if i + 1 < total:
                # the view moves to the next step now, not at its first progress report
                ctx.progress(0, None, step=i + 2, steps_done=i + 1, steps_total=total)
                following = spec.steps[i + 1]
                if (self._kind_of(following).scope(following, {})
                        != kind.scope(step, {})):
                    # The next step talks to another breaker scope: let the engine
                    # ask that scope's breaker (and a slot) before it starts.
                    return CONTINUE
        ctx.progress(*last, step=total, steps_done=total, steps_total=total)
        return None


def _in_step(exc: AttemptFailed, index: int, total: int, step: Any) -> AttemptFailed:
    """The step's failure as the project's: same code and suggestion, the step named."""
    err = exc.error
    named = attrs.evolve(err, message=f"step {index + 1}/{total} ({step.kind}): {err.message}")
    return AttemptFailed(named, retry_after_s=exc.retry_after_s)
