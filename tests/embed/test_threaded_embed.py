"""`threaded_engine`: the engine in a background thread for synchronous code (SPEC 12.1).

Real time with tiny delays, every wait bounded; every test also proves it
left no thread behind.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from engine import DownloadSpec, Event, RefusedError, Settings, StateDirLocked, Status
from engine.testing._scripted import ScriptedExplosion, ScriptedKind, ScriptedSpec
from engine.embed import EngineBroken, EngineClosed, ThreadedEngine, threaded_engine
from engine.testing import FaultServer, Faults, VirtualFile

SIZE = 1_000_000


def fast(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(initial_delay_s=0.05, max_delay_s=0.2, jitter=0.0, checkpoint_interval_s=0.05,
                    download_root=str(tmp_path / "downloads"), **kw)


def spec(name: str, *script: str) -> ScriptedSpec:
    return ScriptedSpec(name=name, script=list(script) or ["ok"])


def until(eng: ThreadedEngine, op_id: str, *statuses: Status, check: Callable[[Any], bool] | None = None) -> Any:
    """Poll (real time, bounded) until the operation is in one of ``statuses``."""
    deadline = time.monotonic() + 10
    while True:
        op = eng.get(op_id)
        if op.status in statuses and (check is None or check(op)):
            return op
        assert time.monotonic() < deadline, f"stuck at {op.status}"
        time.sleep(0.01)


def start(target: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``target`` in a thread; the returned join gives its result or raises its error."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = target()
        except BaseException as exc:  # noqa: BLE001 - handed to the joiner
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()

    def join() -> Any:
        thread.join(10)
        assert not thread.is_alive()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return join


def contains(exc: BaseException | None, kind: type[BaseException]) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(kind) is not None
    return isinstance(exc, kind)


def test_plain_code_uses_every_method(tmp_path: Path) -> None:
    """Blocking methods of the same names give `Engine`'s results; refusals raise `RefusedError`."""
    with threaded_engine(tmp_path / "state", fast(tmp_path), kinds=[ScriptedKind()]) as eng:
        assert eng.state_dir == tmp_path / "state"
        settings = eng.update_settings(initial_delay_s=60, max_delay_s=60)
        assert eng.settings == settings and settings.max_delay_s == 60

        hang = eng.submit(spec("hang", "hang"))
        until(eng, hang.id, Status.IN_PROGRESS)
        assert eng.pause(hang.id).status is Status.PAUSED
        with pytest.raises(RefusedError) as refused:
            eng.cancel_recovery(hang.id)
        assert refused.value.code == "E_INVALID_STATE"
        assert eng.resume(hang.id).status in (Status.PENDING, Status.IN_PROGRESS)
        assert eng.control(hang.id, "pause").status is Status.PAUSED
        assert eng.find("scripted:hang") == eng.get(hang.id)

        flaky = eng.submit(spec("flaky", "fail:E_SERVER_OVERLOAD"))
        until(eng, flaky.id, Status.RECOVERING)
        assert eng.retry_now(flaky.id).status is Status.IN_PROGRESS
        until(eng, flaky.id, Status.RECOVERING, check=lambda o: o.attempt == 2)
        assert eng.cancel_recovery(flaky.id).status is Status.FAILED
        assert eng.force_retry(flaky.id).status is Status.IN_PROGRESS
        until(eng, flaky.id, Status.RECOVERING)
        eng.cancel_recovery(flaky.id)
        assert eng.wait(flaky.id, timeout=5).status is Status.FAILED
        eng.forget(flaky.id)
        with pytest.raises(RefusedError) as missing:
            eng.get(flaky.id)
        assert missing.value.code == "E_NOT_FOUND"

        assert eng.cancel(hang.id).status is Status.CANCELLED
        assert eng.list() == [] and eng.statistics().total_operations == 2
        assert isinstance(eng.breakers(), list)


def test_wait_timeout_raises_timeout_error(tmp_path: Path) -> None:
    """``wait(op_id, timeout=...)`` raises the builtin `TimeoutError`; the operation goes on."""
    with threaded_engine(tmp_path / "state", fast(tmp_path), kinds=[ScriptedKind()]) as eng:
        op = eng.submit(spec("slow", "sleep:0.3+ok"))
        with pytest.raises(TimeoutError):
            eng.wait(op.id, timeout=0.05)
        assert eng.wait(op.id, timeout=5).status is Status.SUCCESS


def test_two_threads_submit_and_control_at_once(tmp_path: Path) -> None:
    """Two threads submitting, pausing, resuming, cancelling and waiting at the same time all get right answers."""
    with threaded_engine(tmp_path / "state", fast(tmp_path, max_concurrent=20), kinds=[ScriptedKind()]) as eng:
        barrier = threading.Barrier(2)

        def worker(tag: str) -> list[Status]:
            barrier.wait(5)
            ops = [eng.submit(spec(f"{tag}{i}", "hang", "sleep:0.05+ok")) for i in range(6)]
            for op in ops:
                until(eng, op.id, Status.IN_PROGRESS)
                assert eng.pause(op.id).status is Status.PAUSED
            for op in ops[:3]:
                eng.resume(op.id)
            cancelled = [eng.cancel(op.id).status for op in ops[3:]]
            return [eng.wait(op.id, timeout=5).status for op in ops[:3]] + cancelled

        joins = [start(partial(worker, tag)) for tag in ("a", "b")]
        for join in joins:
            assert join() == [Status.SUCCESS] * 3 + [Status.CANCELLED] * 3
        assert eng.statistics().total_operations == 12
        assert sorted(op.spec["name"] for op in eng.list()) == ["a0", "a1", "a2", "b0", "b1", "b2"]


def test_subscriptions_break_close_and_end_with_the_engine(tmp_path: Path) -> None:
    """``break`` and ``close()`` (from another thread) end a blocking iteration; so does leaving the block."""
    with threaded_engine(tmp_path / "state", fast(tmp_path), kinds=[ScriptedKind()]) as eng:
        bus = eng._host.engine._events  # type: ignore[union-attr]
        sub = eng.subscribe()
        op = eng.submit(spec("one"))
        for event in sub:
            assert event.type == "submitted" and event.op_id == op.id
            break
        del sub, event
        deadline = time.monotonic() + 5
        while bus.subscriber_count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bus.subscriber_count == 0

        with eng.subscribe() as blocked:
            reader = start(lambda: list(blocked))
            time.sleep(0.05)
            blocked.close()
            assert reader() == []
            with pytest.raises(TimeoutError):
                eng.subscribe().receive(timeout=0.05)

        live = eng.subscribe()
        reader = start(lambda: list(live))
        time.sleep(0.02)
        eng.submit(spec("two"))
        time.sleep(0.05)
    events: list[Event] = reader()
    assert [e.type for e in events][:1] == ["submitted"]


def test_leaving_mid_download_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    """A download still running when the block is left resumes from its checkpoint after reopening."""
    server = FaultServer()
    with server.run_in_thread():
        url = server.url("/files/m.bin", size=SIZE, faults=Faults(rate_bps=1_000_000))
        sha = VirtualFile(seed="/files/m.bin", size=SIZE).sha256
        with threaded_engine(tmp_path / "state", fast(tmp_path)) as eng:
            op = eng.submit(DownloadSpec(url=url, dest="m.bin", sha256=sha))
            until(eng, op.id, Status.IN_PROGRESS, check=lambda o: o.bytes_done >= 300_000)
        part = tmp_path / "downloads" / "m.bin.part"
        kept = part.stat().st_size
        assert 0 < kept < SIZE
        with threaded_engine(tmp_path / "state", fast(tmp_path)) as eng:
            assert eng.get(op.id).status in (Status.PENDING, Status.IN_PROGRESS)
            final = eng.wait(op.id, timeout=10)
        assert final.status is Status.SUCCESS, final.error
        ranges = server.stats.paths["/files/m.bin"].ranges
    assert hashlib.sha256((tmp_path / "downloads" / "m.bin").read_bytes()).hexdigest() == sha
    (first, _), (second, second_sent) = ranges
    assert first == 0 and second is not None and 0 < second <= kept and second + second_sent == SIZE


def test_a_locked_state_dir_raises_state_dir_locked(tmp_path: Path) -> None:
    """A second engine on the same state dir raises `StateDirLocked` from ``with`` and leaves no thread."""
    with threaded_engine(tmp_path / "state", fast(tmp_path)):
        with pytest.raises(StateDirLocked):
            with threaded_engine(tmp_path / "state", fast(tmp_path)):
                pytest.fail("the block must not run")  # pragma: no cover


def test_an_engine_crash_raises_instead_of_hanging(tmp_path: Path) -> None:
    """When the engine dies, a blocked ``wait`` and later calls raise `EngineBroken`, and so does leaving the block."""
    with pytest.raises(EngineBroken) as broken:
        with threaded_engine(tmp_path / "state", fast(tmp_path), kinds=[ScriptedKind()]) as eng:
            hang = eng.submit(spec("hang", "hang"))
            waiter = start(lambda: eng.wait(hang.id))
            time.sleep(0.02)
            eng.submit(spec("bomb", "explode"))
            with pytest.raises(EngineBroken) as pending:
                waiter()
            assert contains(pending.value.__cause__, ScriptedExplosion)
            with pytest.raises(EngineBroken):
                eng.pause(hang.id)
    assert contains(broken.value.__cause__, ScriptedExplosion)


def test_leaving_the_block_releases_blocked_callers(tmp_path: Path) -> None:
    """A ``wait`` blocked in another thread when the block is left raises `EngineClosed`; so do later calls."""
    with threaded_engine(tmp_path / "state", fast(tmp_path), kinds=[ScriptedKind()]) as eng:
        op = eng.submit(spec("hang", "hang"))
        waiter = start(lambda: eng.wait(op.id))
        time.sleep(0.02)
    with pytest.raises(EngineClosed):
        waiter()
    with pytest.raises(EngineClosed):
        eng.get(op.id)
    with pytest.raises(EngineClosed):
        eng.submit(spec("late"))
