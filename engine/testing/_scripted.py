"""A scripted operation kind for tests, demos and benchmarks.

Each attempt plays the next entry of the spec's ``script`` (the last entry
repeats). An entry is actions joined by ``+``:

- ``ok``: succeed;  ``fail:CODE`` or ``fail:CODE:RETRY_AFTER_S``: fail, classified;
- ``progress:N``: make N bytes of durable progress;  ``sleep:S``: take S seconds;
- ``hang``: run until cancelled;  ``crash``: raise an unexpected exception;
- ``gate``: wait until `ScriptedKind.open_gate` is called for this spec's name;
- ``explode``: raise `ScriptedExplosion`, which no ``except Exception`` catches:
  a stand-in for the engine itself crashing.

The kind records what happened (attempts started, cancellations) so tests
can assert on the work itself, not only on statuses.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from .._errors import RefusedError, failure
from .._kinds import AttemptContext

__all__ = ["ScriptedExplosion", "ScriptedKind", "ScriptedSpec"]


class ScriptedExplosion(BaseException):
    """Raised by the ``explode`` action: escapes every ``except Exception`` in the engine."""


@attrs.frozen(kw_only=True)
class ScriptedSpec:
    name: str
    script: list[str] = attrs.Factory(lambda: ["ok"])
    scope: str | None = None
    size: int | None = None

    kind = "scripted"


@attrs.define(eq=False)
class ScriptedKind:
    name: str = "scripted"
    spec_type: type = ScriptedSpec
    started: dict[str, int] = attrs.Factory(dict)
    cancelled: dict[str, list[float]] = attrs.Factory(dict)
    discarded: list[str] = attrs.Factory(list)
    _gates: dict[str, trio.Event] = attrs.Factory(dict)

    def validate(self, spec: ScriptedSpec, settings: Any) -> ScriptedSpec:
        if not spec.script:
            raise RefusedError("E_INVALID_INPUT", "script: must not be empty", field="script")
        return spec

    def scope(self, spec: ScriptedSpec, state: dict[str, Any]) -> str | None:
        return spec.scope

    def resource_key(self, spec: ScriptedSpec) -> str | None:
        return f"scripted:{spec.name}"

    def describe(self, spec: ScriptedSpec) -> dict[str, Any]:
        return {"name": spec.name, "script": list(spec.script), "scope": spec.scope}

    def discard(self, spec: ScriptedSpec, state: dict[str, Any]) -> None:
        self.discarded.append(spec.name)

    def open_gate(self, name: str) -> None:
        self._gates.setdefault(name, trio.Event()).set()

    async def attempt(self, ctx: AttemptContext) -> None:
        spec: ScriptedSpec = ctx.spec
        n = ctx.state.get("attempt", 0)
        ctx.state["attempt"] = n + 1
        self.started[spec.name] = self.started.get(spec.name, 0) + 1
        entry = spec.script[min(n, len(spec.script) - 1)]
        try:
            for action in entry.split("+"):
                await self._act(ctx, spec, action.strip())
        except trio.Cancelled:
            self.cancelled.setdefault(spec.name, []).append(trio.current_time())
            raise

    async def _act(self, ctx: AttemptContext, spec: ScriptedSpec, action: str) -> None:
        verb, _, arg = action.partition(":")
        if verb == "ok":
            await trio.lowlevel.checkpoint()
        elif verb == "fail":
            code, _, retry_after = arg.partition(":")
            await trio.lowlevel.checkpoint()
            raise failure(code, f"scripted failure {code} (attempt {ctx.state['attempt']})",
                          retry_after_s=float(retry_after) if retry_after else None)
        elif verb == "progress":
            nbytes = int(arg)
            done = ctx.state.get("done", 0) + nbytes
            ctx.received(nbytes)
            ctx.made_durable(nbytes)
            ctx.state["done"] = done
            ctx.progress(done, spec.size)
            await ctx.checkpoint()
        elif verb == "sleep":
            await trio.sleep(float(arg))
        elif verb == "hang":
            await trio.sleep_forever()
        elif verb == "gate":
            await self._gates.setdefault(spec.name, trio.Event()).wait()
        elif verb == "explode":
            await trio.lowlevel.checkpoint()
            raise ScriptedExplosion(f"scripted explosion in {spec.name}")
        elif verb == "crash":
            await trio.lowlevel.checkpoint()
            raise RuntimeError(f"scripted crash in {spec.name}")
        else:
            raise ValueError(f"unknown scripted action {action!r}")
