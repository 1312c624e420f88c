"""Operation kinds are registered handlers.

A kind turns a spec into attempts. The engine owns everything around an
attempt (statuses, retries, breaker, snapshots, events); a kind only has to

- ``validate`` a spec (raise `RefusedError` naming the field),
- name the breaker ``scope`` and the ``resource_key`` (for example the
  destination path, so two submissions never write one file),
- run one ``attempt``: return on success, raise `AttemptFailed` (or any
  exception, which the engine classifies) on failure, keeping ``ctx.state``
  consistent with what is durable at every moment,
- ``discard`` partial results on cancel.

A kind may also offer ``view_fields(spec, state) -> dict`` (``step``,
``steps_done``, ``steps_total``) for the operation's view before its first
progress report, e.g. right after a restart.

An attempt may also return `CONTINUE`: "a unit of work is done and durable;
run the next attempt now". The engine then frees the concurrency slot, asks
for one again and asks the breaker about ``scope`` again, without counting
a retry. A project uses it at a step boundary where the next step talks to
another host.

Download, install and project register into the same `KindRegistry` an
embedding application can use for its own kinds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import attrs

from ._disk import THREADS, DiskWork
from ._errors import RefusedError

if TYPE_CHECKING:
    import httpx

    from ._settings import Settings

__all__ = ["CONTINUE", "AttemptContext", "Continue", "Kind", "KindRegistry"]


class Continue:
    """The type of `CONTINUE` (see the module docstring)."""

    _instance: "Continue | None" = None

    def __new__(cls) -> "Continue":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "CONTINUE"


#: Returned by `Kind.attempt`: run the next attempt now, through slot and breaker again.
CONTINUE = Continue()


@runtime_checkable
class Kind(Protocol):
    """The interface of an operation kind (see the module docstring)."""

    name: str
    spec_type: type

    def validate(self, spec: Any, settings: "Settings") -> Any: ...
    def scope(self, spec: Any, state: dict[str, Any]) -> str | None: ...
    def resource_key(self, spec: Any) -> str | None: ...
    def describe(self, spec: Any) -> dict[str, Any]: ...
    async def attempt(self, ctx: "AttemptContext") -> "Continue | None": ...
    def discard(self, spec: Any, state: dict[str, Any]) -> None: ...


@attrs.define(eq=False)
class AttemptContext:
    """What one attempt of one operation may see and do.

    ``state`` is the kind's private, resumable state (msgpack-able values
    only). It is written into the snapshot by `checkpoint` and at every status
    change, so a kind must only record there what is already durable.
    """

    op_id: str
    spec: Any
    state: dict[str, Any]
    attempt: int
    http: "httpx.AsyncClient"
    _settings: Callable[[], "Settings"]
    _on_progress: Callable[..., None]
    _on_checkpoint: Callable[[], Any]
    _on_step_finished: Callable[[], None]
    _on_output: Callable[[list[str]], None]
    _checkpoint_clock: Callable[[], float]
    _last_checkpoint: float = 0.0
    bytes_received: int = 0
    durable_bytes: int = 0
    bytes_discarded: int = 0
    #: where blocking file-system work runs (the engine's choice; see `engine._disk`)
    disk: DiskWork = THREADS

    @property
    def settings(self) -> "Settings":
        """The settings in force now (they may change while an attempt runs)."""
        return self._settings()

    def progress(self, bytes_done: int, bytes_total: int | None, **extra: Any) -> None:
        """Report progress for display; the engine throttles and computes rate/ETA."""
        self._on_progress(bytes_done, bytes_total, extra)

    def received(self, nbytes: int) -> None:
        """Count bytes that arrived from the network in this attempt."""
        self.bytes_received += nbytes

    def made_durable(self, nbytes: int) -> None:
        """Count bytes that became durable in this attempt (drives the progress reset)."""
        self.durable_bytes += nbytes

    def discarded(self, nbytes: int) -> None:
        """Count bytes thrown away (a server that ignored Range, a changed file)."""
        self.bytes_discarded += nbytes

    def set_output_tail(self, lines: list[str]) -> None:
        """Publish the last lines of a command's output on the operation."""
        self._on_output(lines)

    def checkpoint_due(self) -> bool:
        """True once `checkpoint_interval_s` has passed since the last checkpoint."""
        return self._checkpoint_clock() - self._last_checkpoint >= self.settings.checkpoint_interval_s

    async def checkpoint(self) -> None:
        """Write the snapshot now. Make the data durable (fsync) before calling."""
        self._last_checkpoint = self._checkpoint_clock()
        await self._on_checkpoint()

    def step_finished(self) -> None:
        """A project step is durably done: the next step gets a fresh retry budget."""
        self._on_step_finished()


@attrs.define(eq=False)
class KindRegistry:
    """Kinds by name. ``open_engine`` starts from the built-ins; add your own."""

    _kinds: dict[str, Kind] = attrs.Factory(dict)

    def register(self, kind: Kind, *, replace: bool = False) -> None:
        if kind.name in self._kinds and not replace:
            raise ValueError(f"kind {kind.name!r} is already registered")
        self._kinds[kind.name] = kind

    def get(self, name: str) -> Kind:
        try:
            return self._kinds[name]
        except KeyError:
            raise RefusedError("E_INVALID_INPUT", f"unknown operation kind {name!r}", field="kind") from None

    def for_spec(self, spec: Any) -> Kind:
        for kind in self._kinds.values():
            if isinstance(spec, kind.spec_type):
                return kind
        raise RefusedError("E_INVALID_INPUT", f"no registered kind runs a {type(spec).__name__}",
                           field="kind")

    def names(self) -> list[str]:
        return sorted(self._kinds)
