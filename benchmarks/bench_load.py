"""The engine at 10,000 concurrent operations: throughput, memory, pause latency, startup.

One run of the real engine (`open_engine`, real time) with N operations of a
benchmark kind spread over 50 breaker scopes. 20% of the scopes fail for the
first few seconds (retry-worthy errors that move no data), so their
breakers open, their operations wait without spending retries, and the
half-open probes bring them back. Every operation takes a short, random
amount of "work" time. While all this runs, a control client pauses
randomly chosen live operations and measures the time from the control
call to the ``paused`` status event reaching a subscriber; each paused
operation is resumed right after.

Then startup: N snapshots (of paused operations, so nothing runs) are
loaded by a fresh engine; the time from `open_engine` to the engine being
ready, and back out, is reported.

    python benchmarks/bench_load.py                 # 10,000 operations
    python benchmarks/bench_load.py --ops 2000      # a quick run
    python benchmarks/bench_load.py --state-dir /dev/shm

Targets (issue 4): peak RSS under 300 MiB, pause p99 under 50 ms, startup
with 10,000 snapshots under 2 s.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import filesystem_of, peak_rss_mib, percentiles, print_json, print_table  # noqa: E402

from engine import RefusedError, Settings, Status, failure, open_engine, tune_gc  # noqa: E402
from engine._store import OpSnapshot, SnapshotStore  # noqa: E402
from engine._writer import SnapshotWriter  # noqa: E402

SCOPES = 50
FAILING_SCOPES = 10  # 20%


@attrs.frozen(kw_only=True)
class LoadSpec:
    name: str
    scope: str
    work_s: float

    kind = "load"


@attrs.define(eq=False)
class LoadKind:
    """Attempts in a failing scope fail until ``healthy_at``; others work, then succeed."""

    healthy_at: float
    failing: frozenset[str]
    name: str = "load"
    spec_type: type = LoadSpec

    def validate(self, spec: LoadSpec, settings: Any) -> LoadSpec:
        return spec

    def scope(self, spec: LoadSpec, state: dict[str, Any]) -> str:
        return spec.scope

    def resource_key(self, spec: LoadSpec) -> str:
        return f"load:{spec.name}"

    def describe(self, spec: LoadSpec) -> dict[str, Any]:
        return {"name": spec.name, "scope": spec.scope}

    def discard(self, spec: LoadSpec, state: dict[str, Any]) -> None:
        pass

    async def attempt(self, ctx: Any) -> None:
        spec: LoadSpec = ctx.spec
        if spec.scope in self.failing and trio.current_time() < self.healthy_at:
            await trio.sleep(0.01)
            raise failure("E_SERVER_OVERLOAD", f"{spec.scope} is overloaded (benchmark)")
        await trio.sleep(spec.work_s)
        ctx.progress(1, 1)


async def run_load(n: int, state_dir: Path, pauses: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    failing = frozenset(f"scope-{i:02d}" for i in range(FAILING_SCOPES))
    kind = LoadKind(healthy_at=trio.current_time() + 4.0, failing=failing)
    settings = Settings(max_concurrent=n, max_per_host=n, initial_delay_s=0.5, max_delay_s=2.0,
                        breaker_reset_timeout_s=1.0, history_limit=n, max_retries=8)
    latencies: list[float] = []
    pause_sent: dict[str, float] = {}
    async with open_engine(state_dir, settings, kinds=[kind]) as eng:
        async with eng.subscribe() as sub:
            async with trio.open_nursery() as nursery:

                async def listen() -> None:
                    async for event in sub:
                        if event.type == "status" and event["status"] == "paused":
                            sent = pause_sent.pop(event.op_id, None)
                            if sent is not None:
                                latencies.append(time.perf_counter() - sent)

                nursery.start_soon(listen)
                t0 = time.perf_counter()
                ops = []
                for i in range(n):
                    spec = LoadSpec(name=f"op{i}", scope=f"scope-{i % SCOPES:02d}",
                                    work_s=rng.uniform(1.0, 3.0))
                    ops.append(await eng.submit(spec))
                submitted_s = time.perf_counter() - t0

                async def controller() -> None:
                    done = 0
                    while done < pauses:
                        await trio.sleep(rng.uniform(0.005, 0.02))
                        op = ops[rng.randrange(n)]
                        if eng.get(op.id).status not in (Status.PENDING, Status.IN_PROGRESS,
                                                          Status.RECOVERING):
                            continue
                        pause_sent[op.id] = time.perf_counter()
                        try:
                            await eng.pause(op.id)
                        except RefusedError:
                            pause_sent.pop(op.id, None)
                            continue
                        await eng.resume(op.id)
                        done += 1

                nursery.start_soon(controller)
                for op in ops:
                    await eng.wait(op.id)
                wall = time.perf_counter() - t0
                await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
            stats = eng.statistics()
            trips = stats.breaker_trips
            writer = eng._writer
    pct = percentiles([x * 1000 for x in latencies])
    return {
        "operations": n, "submit_s": round(submitted_s, 2), "wall_s": round(wall, 2),
        "ops_per_s": round(n / wall, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
        "pauses": len(latencies), "pause_p50_ms": round(pct["p50"], 2), "pause_p99_ms": round(pct["p99"], 2),
        "pause_max_ms": round(max(latencies) * 1000, 2) if latencies else None,
        "breaker_trips": trips, "retries": stats.retry_attempts,
        "snapshot_batches": writer.batches, "snapshots_written": writer.written,
    }


def make_snapshots(state_dir: Path, n: int) -> None:
    """N paused operations' snapshots, written the engine's own way."""
    store = SnapshotStore(state_dir)
    store.open()
    writer = SnapshotWriter(store, batch_size=1024)
    try:
        now = time.time()
        for i in range(n):
            snap = OpSnapshot(id=f"snap-{i:06d}", kind="load", seq=i + 1,
                              spec={"name": f"s{i}", "scope": f"scope-{i % SCOPES:02d}", "work_s": 1.0},
                              status="paused", state={"offset": i}, created_at=now, updated_at=now)
            writer.mark(snap.id, lambda snap=snap: snap)
        while writer.pending:
            writer.write_batch()
    finally:
        store.close()


async def run_startup(n: int, state_dir: Path) -> dict[str, Any]:
    make_snapshots(state_dir, n)
    kind = LoadKind(healthy_at=0.0, failing=frozenset())
    t0 = time.perf_counter()
    async with open_engine(state_dir, Settings(history_limit=n), kinds=[kind]) as eng:
        ready = time.perf_counter() - t0
        loaded = len(eng.list())
        assert all(o.status is Status.PAUSED for o in eng.list())
    total = time.perf_counter() - t0
    return {"snapshots": n, "loaded": loaded, "startup_s": round(ready, 3), "open_and_close_s": round(total, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--pauses", type=int, default=300)
    parser.add_argument("--state-dir", type=Path, default=None, help="parent dir of the temporary state dirs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--default-gc", action="store_true",
                        help="keep CPython's collector thresholds instead of engine.tune_gc() "
                             "(what the `recovery` command uses)")
    args = parser.parse_args()
    if not args.default_gc:
        tune_gc()
    logging.getLogger("engine").addHandler(logging.NullHandler())
    logging.getLogger("engine").propagate = False
    parent = tempfile.mkdtemp(prefix="bench-load-", dir=args.state_dir)
    try:
        load = trio.run(run_load, args.ops, Path(parent) / "load", args.pauses, args.seed)
        startup = trio.run(run_startup, args.ops, Path(parent) / "startup")
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    fs = filesystem_of(parent)
    result = {"filesystem": f"{fs['fstype']} ({fs['mount']})",
              "gc": "CPython default" if args.default_gc else "engine.tune_gc()", **load, **startup}
    if args.json:
        print_json(result)
    else:
        rows = [
            ("state dir file system", result["filesystem"], ""),
            ("garbage collector", result["gc"], ""),
            ("operations (50 scopes, 20% failing for 4 s)", load["operations"], ""),
            ("wall time, s", load["wall_s"], ""),
            ("operations per second", load["ops_per_s"], ""),
            ("peak RSS, MiB", load["peak_rss_mib"], "target < 300"),
            ("pause acknowledged p50, ms", load["pause_p50_ms"], f"over {load['pauses']} pauses"),
            ("pause acknowledged p99, ms", load["pause_p99_ms"], "target < 50"),
            ("breaker trips / retries", f"{load['breaker_trips']} / {load['retries']}", ""),
            ("snapshot writes / batches", f"{load['snapshots_written']} / {load['snapshot_batches']}", ""),
            (f"startup with {startup['snapshots']} snapshots, s", startup["startup_s"], "target < 2"),
        ]
        print_table("engine under load (bench_load.py)", ["measure", "value", "note"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
