"""The engine: owns the operations, the shared services and the public API.

`open_engine` takes the state directory's lock, loads the snapshots, starts
a supervisor nursery with the breaker actor and one actor per live
operation, and hands out an `Engine`. Leaving the block cancels every actor;
each writes its snapshot on the way out, so the next start resumes.
"""

from __future__ import annotations

import builtins
import collections
import logging
import os
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Mapping

import attrs
import httpx
import trio

from supervisors import ActorGone, Supervisor, open_supervisor

from ._breaker import BreakerActor, BreakerState
from . import _platform
from ._disk import THREADS, DiskWork
from ._convert import converter
from ._errors import ErrorInfo, RefusedError
from ._events import EventBus, Subscription
from ._history import History, HistoryBucket, Timeline
from ._kinds import AttemptContext, Kind, KindRegistry
from ._model import ACTIVE, FINISHED, TERMINAL, Control, Operation, Status, check_transition, refuse_control
from ._operation import OpActor
from ._scheduler import Scheduler
from ._settings import Settings, load_settings, save_settings
from ._stats import Statistics, StatsCounter
from ._store import OpSnapshot, SnapshotStore, default_state_dir
from ._writer import SnapshotWriter

__all__ = ["Engine", "builtin_kinds", "open_engine"]

log = logging.getLogger("engine")


def _first_mention(described: Mapping[str, Any]) -> str:
    """What the log says of an operation the first time: its (redacted) URL and destination."""
    url, dest = described.get("url"), described.get("dest")
    if url or dest:
        fetched = described.get("fetched_as")  # SPEC 6.3: the log says what is really fetched, too
        also = f" (fetched as {fetched}: {described.get('note')})" if fetched else ""
        return f"{url or '?'} -> {dest or '?'}{also}"
    name = described.get("name") or described.get("argv") or ""
    return str(name)[:200]

_STATS_FLUSH_S = 1.0


class _TLSOnDemand(httpx.AsyncBaseTransport):
    """The engine's own transport: plain ``http`` never waits for a TLS context.

    An ``httpx.AsyncHTTPTransport`` builds its TLS context when it is created,
    and loading the CA bundle into it costs tens of milliseconds: a large part
    of a short ``recovery download`` of an ``http://`` URL. So ``http``
    requests get a pool whose context trusts no certificate (no bundle to
    load; it is never used for a handshake, and would fail one closed), and
    the verifying pool for every other scheme is made by the first request
    that needs it, a redirect to ``https`` included.
    """

    def __init__(self, *, limits: httpx.Limits) -> None:
        self._limits = limits
        self._plain: httpx.AsyncHTTPTransport | None = None
        self._tls: httpx.AsyncHTTPTransport | None = None

    def _for(self, request: httpx.Request) -> httpx.AsyncHTTPTransport:
        if request.url.scheme == "http":
            if self._plain is None:
                import ssl

                self._plain = httpx.AsyncHTTPTransport(verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
                                                       limits=self._limits)
            return self._plain
        if self._tls is None:
            self._tls = httpx.AsyncHTTPTransport(limits=self._limits)
        return self._tls

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._for(request).handle_async_request(request)

    async def aclose(self) -> None:
        plain, tls = self._plain, self._tls
        try:
            if plain is not None:
                await plain.aclose()
        finally:
            if tls is not None:
                await tls.aclose()


def builtin_kinds(state_dir: Path | None = None) -> KindRegistry:
    """A registry with the built-in download, install and project kinds.

    With ``state_dir``, downloads use its ``credentials.toml`` (SPEC 6.3).
    """
    from ._download._credentials import CredentialStore
    from ._download._kind import DownloadKind
    from ._projects._install import InstallKind
    from ._projects._project import ProjectKind

    registry = KindRegistry()
    store = CredentialStore.in_state_dir(state_dir) if state_dir is not None else None
    registry.register(DownloadKind(credentials=store))
    registry.register(InstallKind())
    registry.register(ProjectKind(registry))
    return registry


def _seed_view(op: OpActor) -> None:
    """Fields a kind can tell before any progress report (``Kind.view_fields``, optional)."""
    view_fields = getattr(op.kind, "view_fields", None)
    if view_fields is not None:
        op.extra.update(view_fields(op.spec, op.state))


def _new_id() -> str:
    return f"{int(time.time() * 1000):x}-{secrets.token_hex(3)}"


@attrs.define(eq=False)
class Engine:
    """The embedded engine (SPEC section 12). Get one from `open_engine`."""

    state_dir: Path
    _settings: Settings
    _file_settings: Settings
    _store: SnapshotStore
    _kinds: KindRegistry
    _http: httpx.AsyncClient
    _disk: DiskWork = THREADS
    _events: EventBus = attrs.Factory(EventBus)
    _stats: StatsCounter = attrs.Factory(StatsCounter)
    _live_attempts: dict[int, AttemptContext] = attrs.Factory(dict)  # running attempts, for live counters
    _history: History = attrs.Factory(History)
    _ops: dict[str, OpActor] = attrs.Factory(dict)
    _by_resource: dict[str, str] = attrs.Factory(dict)
    _supervisor: Supervisor | None = None
    _scheduler: Scheduler = attrs.field(init=False)
    _breaker: BreakerActor = attrs.field(init=False)
    _writer: SnapshotWriter = attrs.field(init=False)
    _seq: int = 0
    _stats_dirty: bool = False
    _closed: bool = False
    load_problems: builtins.list[Any] = attrs.Factory(builtins.list)
    # recently cancelled operations, so get()/wait() can still say "cancelled"
    _cancelled: collections.OrderedDict[str, Operation] = attrs.Factory(collections.OrderedDict)
    _succeeded: dict[str, None] = attrs.Factory(dict)  # success ops, oldest first
    _services: "_ActorServices" = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._services = _ActorServices(self)
        self._writer = SnapshotWriter(self._store, disk=self._disk)
        self._scheduler = Scheduler(lambda: (self._settings.max_concurrent, self._settings.max_per_host))
        self._breaker = BreakerActor(
            settings=lambda: (self._settings.breaker_failure_threshold, self._settings.breaker_reset_timeout_s,
                              self._settings.breaker_half_open_probes, self._settings.max_delay_s),
            on_transition=self._breaker_transition,
        )

    # -- reading ------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The settings in force."""
        return self._settings

    @property
    def kinds(self) -> KindRegistry:
        return self._kinds

    def get(self, op_id: str) -> Operation:
        """One operation's current view; `RefusedError` ``E_NOT_FOUND`` if unknown."""
        gone = self._cancelled.get(op_id)
        return gone if gone is not None else self._actor(op_id).view()

    def list(self) -> builtins.list[Operation]:
        """Every known operation, oldest first (finished ones are kept as history)."""
        return [op.view() for op in sorted(self._ops.values(), key=lambda o: o.seq)]

    def statistics(self) -> Statistics:
        """The statistics of SPEC section 10."""
        active = sum(1 for op in self._ops.values() if op.status in ACTIVE)
        failed = sum(1 for op in self._ops.values() if op.status in (Status.FAILED, Status.EXHAUSTED))
        in_flight = sum(ctx.bytes_received for ctx in self._live_attempts.values())
        return self._stats.snapshot(active, failed_now=failed, bytes_in_flight=in_flight)

    def history(self, hours: int = 24) -> builtins.list[HistoryBucket]:
        """The hourly history of SPEC 10.1 for the last ``hours`` hours (1..720), oldest first."""
        return self._history.buckets(hours)

    def failure_totals(self) -> dict[tuple[str, str], int]:
        """All-time failures by (code, host), for counters that never go down."""
        return dict(self._history.failures_total)

    async def breakers(self) -> builtins.list[BreakerState]:
        """Each breaker scope's state (scopes appear once an operation used them)."""
        return await self._breaker.states()

    def find(self, resource: str) -> Operation | None:
        """The operation that owns ``resource`` (e.g. a destination path), if any.

        A path is matched as the kinds key it: case-folded where its folder's file
        system ignores case (``Model.safetensors`` finds ``model.safetensors`` there).
        """
        op_id = self._by_resource.get(resource)
        if op_id is None:
            op_id = self._by_resource.get(_platform.resource_path(resource))
        return self._ops[op_id].view() if op_id in self._ops else None

    # -- submitting and controlling -----------------------------------------------

    async def submit(self, spec: Any) -> Operation:
        """Start an operation. A spec whose resource (e.g. destination) a live
        operation already owns returns that operation instead of a second writer."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        kind = self._kinds.for_spec(spec)
        spec = kind.validate(spec, self._settings)
        resource = kind.resource_key(spec)
        if resource is not None:
            owner = self._ops.get(self._by_resource.get(resource, ""))
            if owner is not None and self._owner_answers(kind, owner, spec):
                return owner.view()
        self._seq += 1
        op = OpActor(self._services, _new_id(), kind, spec, self._seq, resource=resource)
        _seed_view(op)
        self._ops[op.id] = op
        if resource is not None:
            self._by_resource[resource] = op.id
        self._stats.total_operations += 1
        self._stats_dirty = True
        op.save()
        described = kind.describe(spec)
        self._events.publish("submitted", op.id, kind=kind.name, spec=described)
        log.info("op %s: new %s: %s", op.id, kind.name, _first_mention(described))
        self._start_actor(op)
        self._trim_history()
        return op.view()

    def _owner_answers(self, kind: Any, owner: OpActor, spec: Any) -> bool:
        """Whether the operation recorded for a resource answers a new submission of ``spec``.

        A live (or paused, failed...) owner does: no second writer. A success
        does when the kind says its result is still intact (``still_complete``):
        a rerun is complete at once, nothing fetched again. A download refused
        with ``E_EXISTS`` gives way to a submission that asks something else
        (overwrite), so asking again is possible.
        """
        if owner.status is Status.SUCCESS:
            still_complete = getattr(kind, "still_complete", None)
            return bool(still_complete is not None and still_complete(owner.spec, owner.state, spec))
        if (owner.status is Status.FAILED and owner.error is not None and owner.error.code == "E_EXISTS"
                and owner.spec != spec):
            owner._mailbox.close()
            self._drop(owner)
            return False
        return True

    async def pause(self, op_id: str) -> Operation:
        """Stop running work promptly, keep all progress (-> paused)."""
        return await self._control(op_id, Control.PAUSE)

    async def resume(self, op_id: str) -> Operation:
        """Continue a paused operation from its preserved offset or step (-> pending)."""
        return await self._control(op_id, Control.RESUME)

    async def cancel(self, op_id: str) -> Operation:
        """Stop and delete partial data and the snapshot (-> cancelled)."""
        return await self._control(op_id, Control.CANCEL)

    async def retry_now(self, op_id: str) -> Operation:
        """Skip the backoff wait, or retry a failed/exhausted operation with a fresh budget."""
        return await self._control(op_id, Control.RETRY_NOW)

    async def force_retry(self, op_id: str) -> Operation:
        """Retry whatever the classification; one attempt bypasses an open breaker."""
        return await self._control(op_id, Control.FORCE_RETRY)

    async def cancel_recovery(self, op_id: str) -> Operation:
        """Stop automatic retries; the operation fails with its last error."""
        return await self._control(op_id, Control.CANCEL_RECOVERY)

    async def control(self, op_id: str, control: str) -> Operation:
        """Apply a control by name (``pause``, ``retry_now``, ...)."""
        try:
            which = Control(control.replace("-", "_"))
        except ValueError:
            raise RefusedError("E_INVALID_INPUT", f"unknown control {control!r}", field="control") from None
        return await self._control(op_id, which)

    async def forget(self, op_id: str) -> None:
        """Drop a finished operation from history (its files stay); a live one is refused."""
        await trio.lowlevel.checkpoint()
        op = self._actor(op_id)
        if op.status not in FINISHED:
            raise RefusedError("E_INVALID_STATE",
                               f"cannot forget an operation that is {op.status.value}; cancel it first")
        op._mailbox.close()
        self._drop(op)

    async def wait(self, op_id: str) -> Operation:
        """Return when the operation is success, cancelled, failed or exhausted."""
        gone = self._cancelled.get(op_id)
        if gone is not None:
            await trio.lowlevel.checkpoint()
            return gone
        op = self._actor(op_id)
        while not op.view().settled:
            await op.changed.wait()
        if op.status is not Status.CANCELLED and self._writer.is_dirty(op_id):
            try:  # when wait returns, the snapshot on disk says so too
                await self._writer.flush(op.id, op.snapshot, urgent=False)
            except OSError:
                pass  # already logged by the writer; the status itself is settled
        else:
            await trio.lowlevel.checkpoint()
        return op.view()

    async def update_settings(self, **changes: Any) -> Settings:
        """Validate and apply ``changes`` (refused with the field and reason); persisted."""
        await trio.lowlevel.checkpoint()
        new = self._settings.updated(changes)
        self._file_settings = self._file_settings.updated(changes)
        save_settings(self.state_dir / "settings.json", self._file_settings)
        self._settings = new
        self._scheduler.reschedule()
        self._events.publish("settings", None, settings=new.to_dict())
        return new

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        """An async iterator of events; a slow reader never slows the engine."""
        async with self._events.subscribe() as sub:
            yield sub

    def subscribe_nowait(self) -> Subscription:
        """A subscription you close yourself with `unsubscribe` (for bridges)."""
        return self._events.open()

    def unsubscribe(self, sub: Subscription) -> None:
        self._events.discard(sub)

    # -- internals used by the actors ---------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._supervisor is None:
            raise RefusedError("E_INVALID_STATE", "the engine is shut down")

    def _actor(self, op_id: str) -> OpActor:
        try:
            return self._ops[op_id]
        except (KeyError, TypeError):
            raise RefusedError("E_NOT_FOUND", f"no operation with id {op_id!r}") from None

    async def _control(self, op_id: str, control: Control) -> Operation:
        gone = self._cancelled.get(op_id)
        if gone is not None:
            await trio.lowlevel.checkpoint()
            refuse_control(control, Status.CANCELLED, None)
            return gone
        op = self._actor(op_id)
        if op.status in TERMINAL:
            await trio.lowlevel.checkpoint()
            refuse_control(control, op.status, op.error)
            return op.view()
        try:
            return await op.address.ask(control)
        except ActorGone:
            raise RefusedError("E_INVALID_STATE", "the engine is shutting down") from None

    def _start_actor(self, op: OpActor) -> None:
        assert self._supervisor is not None
        self._supervisor.start_soon(op.run, name=op.id)

    def _make_context(self, op: OpActor) -> AttemptContext:
        ctx = AttemptContext(
            op.id, op.spec, op.state, op.retries, self._http,
            lambda: self._settings, op.on_progress, self._checkpoint_cb(op), self._step_cb(op),
            self._output_cb(op), trio.current_time, trio.current_time(), disk=self._disk,
        )
        self._live_attempts[id(ctx)] = ctx  # counted live by statistics() until _account
        return ctx

    def _checkpoint_cb(self, op: OpActor) -> Any:
        async def checkpoint() -> None:
            await self._writer.flush(op.id, op.snapshot)

        return checkpoint

    def _step_cb(self, op: OpActor) -> Any:
        def step_finished() -> None:
            op.retries = 0
            op.integrity_retry_used = False
            if op.status is Status.RECOVERING:
                # the retried step is done: the next one starts afresh (SPEC 7: the
                # project's status and attempt counter are the running step's)
                op._set_status(Status.IN_PROGRESS)
            op.save()

        return step_finished

    def _output_cb(self, op: OpActor) -> Any:
        def output(lines: list[str]) -> None:
            op.output_tail = list(lines[-200:])

        return output

    def _account(self, ctx: AttemptContext) -> None:
        self._live_attempts.pop(id(ctx), None)
        self._stats.bytes_downloaded += ctx.bytes_received
        self._stats.bytes_discarded += ctx.bytes_discarded
        self._stats_dirty = True

    def _save(self, op: OpActor) -> None:
        if op.status is Status.CANCELLED or self._ops.get(op.id) is not op:
            return
        self._writer.mark(op.id, op.snapshot)

    def _store_delete(self, op_id: str) -> None:
        try:
            self._writer.delete(op_id)
        except OSError as exc:
            log.error("op %s: could not delete its snapshot: %s", op_id, exc)

    def _publish_status(self, op: OpActor, previous: Status) -> None:
        fields: dict[str, Any] = {"status": op.status.value, "previous": previous.value}
        if op.status in (Status.FAILED, Status.EXHAUSTED, Status.RECOVERING) and op.error is not None:
            fields["error"] = op.error.to_dict()
        if op.status is Status.RECOVERING:
            fields.update(attempt=op.retries, max_retries=self._settings.max_retries,
                          next_retry_at=op.next_retry_at)
        elif op.status is Status.IN_PROGRESS and op.retries and op.last_failure is not None:
            # flowing again (SPEC 2.1): the attempt stays visible, the failure is history
            fields.update(attempt=op.retries, max_retries=self._settings.max_retries,
                          last_error=op.last_failure.to_dict())
        self._events.publish("status", op.id, **fields)

    def _status_changed(self, op: OpActor, previous: Status) -> None:
        self._stats_dirty = True
        self._publish_status(op, previous)
        if op.status is Status.CANCELLED:
            self._drop(op)
        elif op.status is Status.SUCCESS:
            self._succeeded[op.id] = None
            self._trim_history()

    def _drop(self, op: OpActor) -> None:
        self._ops.pop(op.id, None)
        self._succeeded.pop(op.id, None)
        if op.resource is not None and self._by_resource.get(op.resource) == op.id:
            del self._by_resource[op.resource]
        if op.status is Status.CANCELLED:
            self._cancelled[op.id] = op.view()
            while len(self._cancelled) > 256:
                self._cancelled.popitem(last=False)
        else:
            self._store_delete(op.id)
            self._events.publish("forgotten", op.id)

    def _trim_history(self) -> None:
        """Forget the oldest successful operations beyond ``history_limit``.

        Failed and exhausted operations are kept: they still have controls
        (retry, cancel) and partial data a user may want back.
        """
        limit = self._settings.history_limit
        while len(self._succeeded) > limit:
            op_id = next(iter(self._succeeded))
            del self._succeeded[op_id]
            op = self._ops.get(op_id)
            if op is not None:
                self._drop(op)

    def _breaker_transition(self, scope: str, state: str, previous: str) -> None:
        if state == "open":
            self._stats.breaker_trips += 1
            self._stats_dirty = True
        log.warning("breaker %s: %s -> %s", scope, previous, state)
        self._events.publish("breaker", None, scope=scope, state=state, previous=previous)

    # -- lifecycle ----------------------------------------------------------------

    def _load(self) -> None:
        record = self._store.read_stats()
        self._stats = StatsCounter.from_record(record)
        self._history = History.from_record(record.get("history"))
        snaps, problems = self._store.load_all()
        for problem in problems:
            log.error("snapshot %s: %s", problem.path, problem.reason)
            self._events.publish("snapshot_corrupt", None, path=problem.path, reason=problem.reason)
        self.load_problems = problems
        for snap in sorted(snaps, key=lambda s: s.seq):
            try:
                op = self._restore(snap)
            except Exception as exc:  # noqa: BLE001 - one bad snapshot must not stop the rest
                log.error("snapshot %s: cannot be restored: %s", snap.id, exc)
                self._events.publish("snapshot_corrupt", None, path=str(self._store.path_for(snap.id)),
                                     reason=f"cannot be restored: {exc}")
                continue
            self._ops[op.id] = op
            if op.status is Status.SUCCESS:
                self._succeeded[op.id] = None
            if op.resource is not None:  # a later one for the same resource wins
                self._by_resource[op.resource] = op.id
            self._seq = max(self._seq, op.seq)

    def _restore(self, snap: OpSnapshot) -> OpActor:
        kind = self._kinds.get(snap.kind)
        spec: Any = converter.structure(snap.spec, kind.spec_type)
        status = Status(snap.status)
        op = OpActor(
            self._services, snap.id, kind, spec, snap.seq, status=status,
            error=ErrorInfo(**snap.error) if snap.error else None, retries=snap.retries,
            retries_total=snap.retries_total, integrity_retry_used=snap.integrity_retry_used,
            state=dict(snap.state), bytes_done=snap.bytes_done, bytes_total=snap.bytes_total,
            created_at=snap.created_at, updated_at=snap.updated_at,
            first_failure_at=snap.first_failure_at, output_tail=list(snap.output_tail),
            timeline=Timeline.from_records(snap.timeline),
            resource=kind.resource_key(spec),
        )
        _seed_view(op)
        if status in (Status.IN_PROGRESS, Status.RECOVERING):
            check_transition(status, Status.PENDING)
            op.status = Status.PENDING  # resumed on start: queue it again
        return op

    async def _stats_loop(self) -> None:
        while True:
            await trio.sleep(_STATS_FLUSH_S)
            if self._stats_dirty or self._history.dirty:
                self._stats_dirty = False
                record = self._stats_record()
                await self._disk.run(lambda: self._write_stats(record))  # two fsyncs
                self._events.publish("stats", None, **self.statistics().to_dict())

    def _flush_stats(self) -> None:
        self._stats_dirty = False
        self._write_stats(self._stats_record())

    def _stats_record(self) -> dict[str, Any]:
        """Statistics and history, written together (one file, one periodic write)."""
        self._history.dirty = False
        return {**self._stats.to_record(), "history": self._history.to_record()}

    def _write_stats(self, record: dict[str, Any]) -> None:
        try:
            self._store.write_stats(record)
        except OSError as exc:
            log.error("could not write statistics: %s", exc)


@attrs.frozen
class _ActorServices:
    """The engine as its operation actors see it (`OpServices`): nothing more."""

    _engine: Engine

    @property
    def settings(self) -> Settings:
        return self._engine._settings

    @property
    def stats(self) -> StatsCounter:
        return self._engine._stats

    @property
    def events(self) -> EventBus:
        return self._engine._events

    @property
    def scheduler(self) -> Scheduler:
        return self._engine._scheduler

    @property
    def breaker(self) -> BreakerActor:
        return self._engine._breaker

    @property
    def history(self) -> History:
        return self._engine._history

    def make_context(self, op: OpActor) -> AttemptContext:
        return self._engine._make_context(op)

    def account(self, ctx: AttemptContext) -> None:
        self._engine._account(ctx)

    def save(self, op: OpActor) -> None:
        self._engine._save(op)

    def delete_snapshot(self, op_id: str) -> None:
        self._engine._store_delete(op_id)

    def publish_status(self, op: OpActor, previous: Status) -> None:
        self._engine._publish_status(op, previous)

    def status_changed(self, op: OpActor, previous: Status) -> None:
        self._engine._status_changed(op, previous)


@asynccontextmanager
async def open_engine(
    state_dir: str | os.PathLike[str] | None = None,
    settings: Settings | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    kinds: Iterable[Kind] = (),
    http: httpx.AsyncClient | None = None,
    disk: DiskWork = THREADS,
) -> AsyncIterator[Engine]:
    """Run an engine for the duration of the block.

    ``settings`` replaces ``settings.json`` for this run; ``overrides`` (the
    command line's ``--set``) are applied on top and never persisted. Extra
    ``kinds`` are registered beside the built-ins. ``disk`` is where blocking
    file-system work runs: helper threads by default; a test on trio's
    autojump clock passes `engine.testing.INLINE_DISK` (see `engine._disk`).
    A second engine on the same
    ``state_dir`` raises `StateDirLocked` at once.
    """
    root = Path(state_dir).expanduser() if state_dir is not None else default_state_dir()
    store = SnapshotStore(root)
    store.open()
    try:
        file_settings = load_settings(root / "settings.json")
        run_settings = settings if settings is not None else file_settings
        if overrides:
            run_settings = run_settings.updated(dict(overrides))
        registry = builtin_kinds(root)
        for kind in kinds:
            registry.register(kind, replace=True)
        own_http = http is None
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=32)
        client = http or httpx.AsyncClient(
            follow_redirects=True, max_redirects=10,
            timeout=httpx.Timeout(run_settings.stall_timeout_s, connect=run_settings.connect_timeout_s),
            limits=limits, transport=_TLSOnDemand(limits=limits),  # limits: also for proxies from the env
        )
        engine = Engine(root, run_settings, file_settings, store, registry, client, disk=disk)
        try:
            engine._load()
            async with open_supervisor("engine") as supervisor:
                engine._supervisor = supervisor
                await supervisor.start(engine._writer.run, name="writer")
                await supervisor.start(engine._breaker.run, name="breaker")
                supervisor.start_soon(engine._stats_loop, name="stats")
                for op in sorted(engine._ops.values(), key=lambda o: o.seq):
                    if op.status not in TERMINAL:
                        engine._start_actor(op)
                try:
                    yield engine
                finally:
                    engine._closed = True
                    # Operations first (each writes its snapshot on the way out),
                    # then the services they talk to.
                    services = {"breaker", "stats", "writer"}
                    actors = [c for n, c in supervisor.children.items() if n not in services]
                    for child in actors:
                        child.cancel()
                    with trio.CancelScope(shield=True):
                        for child in actors:
                            await child.done.wait()
                    supervisor.cancel_all()
            engine._flush_stats()
            engine._events.close_all()
        finally:
            if own_http:
                with trio.CancelScope(shield=True):
                    await client.aclose()
    finally:
        store.close()
