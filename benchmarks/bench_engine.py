"""Operations per second, memory and event latency at 10,000 concurrent operations.

Drives the real engine (`open_engine`) in real time with N scripted
operations that each fail twice with retry-worthy errors and then succeed,
so every operation goes through submit, two automatic retries with backoff
and success: about 9 snapshot writes and 8 events per operation. All N run
at once (``max_concurrent`` and ``max_per_host`` are raised to N).

Measured:

- wall seconds from the first submit to the last operation settling, and
  operations per second over that time;
- peak RSS of the process (``getrusage`` high-water mark);
- event latency: for every ``status`` event, the time from the engine
  publishing it (its ``ts``, wall ``time.time()``) to a subscriber holding
  it (``time.time()`` at receipt), p50/p99/max.

The state directory is a fresh temporary directory, by default in the
system temp dir; ``--state-dir DIR`` puts it inside DIR instead (give it
twice, e.g. a disk path and ``/dev/shm``, for a side-by-side comparison: each
run then happens in its own process so peak RSS stays per run). The table
names the file system each run used, since every snapshot write fsyncs.

    python benchmarks/bench_engine.py                  # 10,000 operations
    python benchmarks/bench_engine.py --ops 1000       # a quick run
    python benchmarks/bench_engine.py --state-dir /var/tmp --state-dir /dev/shm
    python benchmarks/bench_engine.py --json
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import filesystem_of, peak_rss_mib, percentiles, print_json, print_table  # noqa: E402

import engine  # noqa: E402
from engine import Settings, open_engine  # noqa: E402
from engine.testing._scripted import ScriptedKind, ScriptedSpec  # noqa: E402

SCRIPT = ["fail:E_NET_INTERRUPTED", "fail:E_SERVER_OVERLOAD", "ok"]
SETTLED = frozenset({"success", "failed", "exhausted", "cancelled"})


def bench_settings(ops: int) -> Settings:
    """Small real delays (10-50 ms) and room for every operation to run at once."""
    room = max(10_000, ops)
    return Settings(initial_delay_s=0.01, max_delay_s=0.05, jitter=0.1,
                    max_concurrent=room, max_per_host=room)


class EventProbe:
    """A subscriber that timestamps every event on receipt and counts settled operations.

    Settling is tracked from ``status`` events rather than `Engine.wait`, because
    finished operations beyond ``history_limit`` are forgotten by the engine.
    """

    def __init__(self, expected: int, *, drain: bool = False) -> None:
        self.expected = expected
        self.drain = drain
        self.status_latency_s: list[float] = []
        self.by_type: collections.Counter[str] = collections.Counter()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self._settled: set[str] = set()
        self.all_settled = trio.Event()
        self.last_settled_perf: float | None = None
        self.max_backlog = 0  # events still queued for us when we took one

    async def run(self, eng: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with eng.subscribe() as events:
            task_status.started()
            async for event in events:
                self._record(event, time.time())
                self.max_backlog = max(self.max_backlog, events.pending())
                if self.drain:
                    # Everything already queued is in our hands now, without a
                    # scheduler round per event.
                    while True:
                        try:
                            event = events.receive_nowait()
                        except trio.WouldBlock:
                            break
                        self._record(event, time.time())

    def _record(self, event: Any, received_wall: float) -> None:
        self.by_type[event.type] += 1
        if event.type != "status":
            return
        self.status_latency_s.append(received_wall - event.ts)
        status = event["status"]
        if status in SETTLED and event.op_id not in self._settled:
            self._settled.add(event.op_id)
            self.outcomes[status] += 1
            if len(self._settled) == self.expected:
                self.last_settled_perf = time.perf_counter()
                self.all_settled.set()


async def run_once(ops: int, state_parent: str | None, timeout_s: float, drain: bool = False) -> dict[str, Any]:
    """One benchmark run in this process; returns the figures as a flat dict."""
    state_dir = tempfile.mkdtemp(prefix="bench-engine-", dir=state_parent)
    fs = filesystem_of(state_dir)
    rss_baseline = peak_rss_mib()
    kind = ScriptedKind()
    probe = EventProbe(ops, drain=drain)
    timed_out = False
    try:
        t_open = time.perf_counter()
        async with open_engine(state_dir, bench_settings(ops), kinds=[kind]) as eng:
            async with trio.open_nursery() as nursery:
                await nursery.start(probe.run, eng)
                t0 = time.perf_counter()
                for i in range(ops):
                    await eng.submit(ScriptedSpec(name=f"op-{i}", script=list(SCRIPT)))
                t_submitted = time.perf_counter()
                with trio.move_on_after(timeout_s) as scope:
                    await probe.all_settled.wait()
                timed_out = scope.cancelled_caught
                t_end = probe.last_settled_perf or time.perf_counter()
                stats = eng.statistics()
                nursery.cancel_scope.cancel()
            t_close = time.perf_counter()
        t_closed = time.perf_counter()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)

    wall_s = t_end - t0
    lat = percentiles(probe.status_latency_s, (50, 99, 100))
    return {
        "operations": ops,
        "subscriber": "drain" if drain else "async for",
        "engine_path": str(Path(engine.__file__).parent),
        "state_dir": state_parent or tempfile.gettempdir(),
        "filesystem": fs["fstype"],
        "device": fs["device"],
        "mount": fs["mount"],
        "completed": sum(probe.outcomes.values()),
        "succeeded": probe.outcomes["success"],
        "outcomes": dict(probe.outcomes),
        "timed_out": timed_out,
        "attempts": sum(kind.started.values()),
        "retry_attempts": stats.retry_attempts,
        "recovered_operations": stats.recovered_operations,
        "startup_s": t0 - t_open,
        "submit_s": t_submitted - t0,
        "wall_s": wall_s,
        "ops_per_s": probe.outcomes["success"] / wall_s if wall_s > 0 else float("nan"),
        "shutdown_s": t_closed - t_close,
        "peak_rss_mib": peak_rss_mib(),
        "baseline_rss_mib": rss_baseline,
        "events": sum(probe.by_type.values()),
        "events_by_type": dict(probe.by_type),
        "status_events": len(probe.status_latency_s),
        "max_backlog": probe.max_backlog,
        "latency_p50_ms": lat["p50"] * 1000,
        "latency_p99_ms": lat["p99"] * 1000,
        "latency_max_ms": lat["p100"] * 1000,
    }


def run_in_subprocess(ops: int, state_parent: str, timeout_s: float, log_file: str | None,
                      drain: bool) -> dict[str, Any]:
    """One run in a fresh interpreter, so its peak RSS is its own."""
    cmd = [sys.executable, __file__, "--ops", str(ops), "--state-dir", state_parent,
           "--timeout", str(timeout_s), "--json"]
    if log_file:
        cmd += ["--log-file", log_file]
    if drain:
        cmd.append("--drain")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the run with --state-dir {state_parent} failed (exit {done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout)[0]
    return result


ROWS = [
    ("operations", "operations"),
    ("state dir", "state_dir"),
    ("subscriber reads by", "subscriber"),
    ("file system", "filesystem"),
    ("succeeded", "succeeded"),
    ("attempts", "attempts"),
    ("submit seconds", "submit_s"),
    ("wall seconds", "wall_s"),
    ("operations per second", "ops_per_s"),
    ("peak RSS (MiB)", "peak_rss_mib"),
    ("  of which before start (MiB)", "baseline_rss_mib"),
    ("events received", "events"),
    ("most events queued for the reader", "max_backlog"),
    ("status event latency p50 (ms)", "latency_p50_ms"),
    ("status event latency p99 (ms)", "latency_p99_ms"),
    ("status event latency max (ms)", "latency_max_ms"),
    ("shutdown seconds", "shutdown_s"),
]


def print_results(results: list[dict[str, Any]]) -> None:
    header = ["", *(f"run {i + 1}" for i in range(len(results)))] if len(results) > 1 else ["", "value"]
    rows = [[label, *(r[key] for r in results)] for label, key in ROWS]
    script = ", ".join(SCRIPT)
    print_table(f"Engine: N scripted operations at once, each [{script}], real time", header, rows)
    for r in results:
        if r["timed_out"] or r["succeeded"] != r["operations"]:
            print(f"WARNING ({r['state_dir']}): {r['succeeded']}/{r['operations']} succeeded, "
                  f"outcomes {r['outcomes']}{', timed out' if r['timed_out'] else ''}")


def configure_logging(log_file: str | None) -> None:
    """Engine log records go to ``log_file`` or nowhere (never the terminal: 20,000 retries)."""
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.NullHandler()
    for name in ("engine", "supervisors"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=10_000, help="operations to run at once (default 10000)")
    parser.add_argument("--state-dir", action="append", metavar="DIR",
                        help="parent of the run's temporary state dir (default: the system temp dir); "
                             "repeat to compare file systems side by side")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up waiting after this many seconds")
    parser.add_argument("--log-file", help="write the engine's log records here (default: discarded)")
    parser.add_argument("--drain", action="store_true",
                        help="the subscriber takes every queued event at once (receive_nowait) instead of "
                             "one per `async for` step; separates engine delay from reader pacing")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.ops < 1:
        parser.error("--ops must be at least 1")
    for d in args.state_dir or ():
        if not os.path.isdir(d):
            parser.error(f"--state-dir {d}: not a directory")
    configure_logging(args.log_file)

    parents = args.state_dir or [None]
    if len(parents) == 1:
        results = [trio.run(run_once, args.ops, parents[0], args.timeout, args.drain)]
    else:
        results = [run_in_subprocess(args.ops, p, args.timeout, args.log_file, args.drain) for p in parents]
    if args.json:
        print_json(results)
    else:
        print_results(results)
    return 0 if all(r["succeeded"] == r["operations"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
