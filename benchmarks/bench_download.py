"""Throughput of one large download, side by side, and bytes fetched twice after drops.

1. One file (1 GiB by default) over loopback from the same fast static server
   (nginx when installed, else a Python ``os.sendfile`` server in its own
   process), fetched in turn by:

   - the engine in this process, through ``open_engine`` + ``DownloadSpec``
     with the sha256 given and checkpoints on (the default 1 s interval:
     fsync of the ``.part``, then an atomic snapshot), and the same without
     sha256 (curl does no hashing);
   - ``recovery download`` (the CLI in a fresh process: interpreter start-up
     and imports included);
   - ``curl -o``, and ``curl -o`` followed by ``sync`` (what curl costs when
     the file must be on disk, as the engine's final fsync guarantees);
   - ``aria2c`` (defaults, one connection) when installed;
   - a plain httpx streaming loop writing to a file.

   Each client runs ``--repeat`` times, interleaved; the table shows the median
   wall time, MiB/s and the ratio to curl. Before every run the previous
   output is deleted and ``sync`` flushes dirty pages, so no run pays for
   another's writeback. The destination directory matters: on a disk the
   engine's fsyncs wait for the device, on tmpfs (``/dev/shm``) they are free
   and what remains is CPU. By default both are measured.

2. Bytes fetched twice: a 256 MiB download from the fault server (its own
   process) whose connection is dropped 10 times (TCP RST). Every attempt
   resumes from the durable offset, so the only bytes fetched twice are
   those the kernel had received but the engine had not read when the RST
   arrived. Target: under 1 MiB in total.

3. kill -9: ``recovery download`` of 192 MiB at 32 MiB/s is killed with
   SIGKILL ``--kills`` times at random moments (``--seed``) and run again
   each time; per restart, the bytes fetched again (at the server, against
   one checkpoint interval of transfer) and the time from starting the
   command again to its first progress event (time to recover).

4. Section 6.2 and the start-up cost (SPEC 17), against nginx started here
   (a private config in a temp dir, as the current user) with a location
   limited to 25 MiB/s per connection (``limit_rate 25m``) and an unlimited
   one, each client and ours in the same run, medians of ``--runs``:

   (a) the file from the limited location: ``recovery download`` with its
       defaults (sha256 given, checkpoints on) beside ``aria2c -x16 -s16 -k1M``
       (no checksum) and ``curl -o``; whole-process wall time. Target: the
       engine at most aria2c.
   (b) from the unlimited location: defaults beside ``--connections 1`` and
       ``curl -o`` + ``sync``. Target: defaults no slower than either.
   (c) ``recovery download`` from the limited location killed with SIGKILL
       once half the file has arrived (from its ``--json`` progress), then run
       again to the end: bytes nginx sent twice (its access log: each
       request's ``Range`` and ``$body_bytes_sent``) beside one checkpoint
       interval at the rate measured before the kill.
   (d) the rate ``--limit-rate 50M`` achieves (file size over the time from
       ``in_progress`` to ``success``), beside ``curl --limit-rate 50M``.
       Target: within 5% of 50 MiB/s.
   (e) whole-process time of ``recovery download`` of a 1 KiB file beside
       ``curl``, the bare interpreter and the import of trio + httpx.
       Target: at most 0.2 s.

   A flag the installed ``recovery download --help`` does not list
   (``--connections``, ``--limit-rate``) makes its rows "n/a (flag not
   supported)". Child processes use a private bytecode cache (warmed first),
   as an installed package has its ``.pyc`` files.

    python benchmarks/bench_download.py                 # 1 GiB, 3 runs each, disk and /dev/shm
    python benchmarks/bench_download.py --quick         # 256 MiB, one run each
    python benchmarks/bench_download.py --size 512 --repeat 5 --dest-dir /var/tmp
    python benchmarks/bench_download.py --only a --only b --only c --only d --only e --size 64 --runs 3

Everything it creates (the served file, outputs, state directories, server
configuration) lives in temporary directories removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import filesystem_of, print_table  # noqa: E402
from _servers import NginxServer, fault_server, fetch_stats, nginx_binary, nginx_locations, static_server  # noqa: E402

from engine import DownloadSpec, Settings, Status, _platform, open_engine  # noqa: E402
from engine.testing import content_sha256, refetched  # noqa: E402

MIB = 1024 * 1024
FILE_NAME = "model.safetensors"


# --- the served file -------------------------------------------------------------


def make_file(path: Path, size: int) -> str:
    """Write ``size`` bytes of incompressible data; return its sha256."""
    block = bytearray(os.urandom(16 * MIB))
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        written, n = 0, 0
        while written < size:
            block[:8] = n.to_bytes(8, "big")  # no two blocks alike
            piece = memoryview(block)[: min(len(block), size - written)]
            f.write(piece)
            digest.update(piece)
            written += len(piece)
            n += 1
    with open(path, "rb") as f:  # warm the page cache: the server should not wait for the disk
        while f.read(16 * MIB):
            pass
    return digest.hexdigest()


# --- clients: each returns its wall time in seconds ---------------------------------


def _timed(run: Callable[[], Any]) -> float:
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and its finished children so far."""
    mine, children, _ = _platform.process_usage()
    return mine + children


def run_curl(url: str, dest: Path, *, sync: bool = False) -> float:
    def go() -> None:
        subprocess.run(["curl", "-sS", "--fail", "-o", str(dest), url], check=True)
        if sync:
            subprocess.run(["sync", str(dest)], check=True)
    return _timed(go)


def run_aria2c(url: str, dest: Path, sha256: str | None = None) -> float:
    verify = [f"--checksum=sha-256={sha256}"] if sha256 else []
    return _timed(lambda: subprocess.run(
        ["aria2c", "-q", "--allow-overwrite=true", "--auto-file-renaming=false", *verify,
         "-d", str(dest.parent), "-o", dest.name, url], check=True))


def run_httpx(url: str, dest: Path) -> float:
    def go() -> None:
        with httpx.Client(timeout=30) as client, client.stream("GET", url) as response, open(dest, "wb") as f:
            response.raise_for_status()
            for chunk in response.iter_raw():
                f.write(chunk)
    return _timed(go)


async def _engine_download(url: str, dest: Path, sha256: str | None, state_dir: Path,
                           settings: Settings) -> tuple[float, Any]:
    began = time.perf_counter()
    async with open_engine(state_dir=state_dir, settings=settings) as eng:
        op = await eng.submit(DownloadSpec(url=url, dest=str(dest), sha256=sha256))
        final = await eng.wait(op.id)
    return time.perf_counter() - began, final


def run_engine(url: str, dest: Path, sha256: str | None, work: Path) -> float:
    state_dir = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    try:
        settings = Settings(download_root=str(dest.parent))
        took, final = trio.run(_engine_download, url, dest, sha256, state_dir, settings)
        if final.status is not Status.SUCCESS:
            raise RuntimeError(f"the engine download ended {final.status.value}: {final.error}")
        return took
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def run_cli(url: str, dest: Path, sha256: str, work: Path) -> float:
    state_dir = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    try:
        return _timed(lambda: subprocess.run(
            [sys.executable, "-m", "engine", "download", url, "-o", str(dest.parent), "--sha256", sha256,
             "--state-dir", str(state_dir), "--json"], check=True, stdout=subprocess.DEVNULL))
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


# --- part 1: throughput ---------------------------------------------------------------


def throughput(size: int, repeat: int, dest_dirs: list[Path], server_kind: str) -> None:
    src = Path(tempfile.mkdtemp(prefix="bench-download-src-"))
    try:
        print(f"generating a {size / MIB:.0f} MiB file ...", file=sys.stderr)
        sha = make_file(src / FILE_NAME, size)
        with static_server(src, prefer=server_kind) as (server_name, base):
            url = f"{base}/{FILE_NAME}"
            for dest_root in dest_dirs:
                work = Path(tempfile.mkdtemp(prefix="bench-download-", dir=dest_root))
                try:
                    _throughput_in(url, sha, size, repeat, work, server_name)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(src, ignore_errors=True)


def _throughput_in(url: str, sha: str, size: int, repeat: int, work: Path, server_name: str) -> None:
    out = work / "out"
    out.mkdir()
    dest = out / FILE_NAME
    has_curl = shutil.which("curl") is not None
    has_aria2c = shutil.which("aria2c") is not None
    clients: list[tuple[str, Callable[[], float] | None, str]] = [
        ("curl -o", (lambda: run_curl(url, dest)) if has_curl else None, "no hashing, no fsync"),
        ("curl -o, then sync", (lambda: run_curl(url, dest, sync=True)) if has_curl else None,
         "the file on disk, as the engine ends"),
        ("aria2c", (lambda: run_aria2c(url, dest)) if has_aria2c else None, "defaults, 1 connection"),
        ("aria2c --checksum", (lambda: run_aria2c(url, dest, sha)) if has_aria2c else None,
         "sha-256 checked after the download"),
        ("httpx loop", lambda: run_httpx(url, dest), "iter_raw() -> file.write, no hashing, no fsync"),
        ("engine, sha256", lambda: run_engine(url, dest, sha, work), "open_engine + DownloadSpec, checkpoints 1 s"),
        ("engine, no sha256", lambda: run_engine(url, dest, None, work), "open_engine + DownloadSpec, checkpoints 1 s"),
        ("recovery download", lambda: run_cli(url, dest, sha, work), "CLI process, sha256, start-up included"),
    ]
    times: dict[str, list[float]] = {name: [] for name, _, _ in clients}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in clients}
    for _ in range(repeat):
        for name, run, _ in clients:
            if run is None:
                continue
            dest.unlink(missing_ok=True)
            os.sync()
            before = _cpu_s()
            times[name].append(run())
            cpu[name].append(_cpu_s() - before)
            got = dest.stat().st_size
            if got != size:
                raise RuntimeError(f"{name} wrote {got} bytes, expected {size}")
    dest.unlink(missing_ok=True)

    # Without curl, ratios are to the httpx loop (the column header says so).
    ref_name = "curl -o" if has_curl else "httpx loop"
    curl = statistics.median(times[ref_name])
    rows = []
    for name, run, note in clients:
        if run is None:
            rows.append([name, "not installed", "-", "-", "-", "-", note])
            continue
        wall = statistics.median(times[name])
        rows.append([name, f"{wall:.2f}", f"{min(times[name]):.2f}", f"{size / MIB / wall:,.0f}",
                     f"{wall / curl:.2f}x", f"{statistics.median(cpu[name]):.2f}", note])
    fs = filesystem_of(work)
    print_table(f"\nOne {size / MIB:,.0f} MiB download over loopback from {server_name}, into {work.parent} "
                f"({fs['fstype']}); wall: median and best of {repeat}; CPU: the client's user + system "
                f"(median), server excluded",
                ["client", "wall s", "best s", "MiB/s", f"vs {ref_name.split()[0]}", "CPU s", "notes"], rows)
    engine = statistics.median(times["engine, sha256"])
    verdicts = [f"engine with sha256 {engine / curl:.2f}x {ref_name.split()[0]} (target <= 1.25x curl: "
                f"{'met' if engine <= 1.25 * curl else 'MISSED'})"]
    if times["aria2c"]:
        for name, mine in (("aria2c", "engine, no sha256"), ("aria2c --checksum", "engine, sha256")):
            aria, ours = statistics.median(times[name]), statistics.median(times[mine])
            verdicts.append(f"{mine} {'faster' if ours < aria else 'NOT faster'} than {name} "
                            f"({ours:.2f} s vs {aria:.2f} s)")
    else:
        verdicts.append("aria2c not installed")
    for verdict in verdicts:
        print("  " + verdict)


# --- part 2: bytes fetched twice after dropped connections ------------------------


def _overlap(records: list[dict[str, Any]]) -> int:
    """Bytes each request sent that earlier requests had already sent, summed."""
    return sum(refetched((r["range_start"], r["bytes_sent"]) for r in records))


def drops(size: int, count: int) -> None:
    path = "/files/drops.safetensors"
    drop_after = size // (count + 1)
    work = Path(tempfile.mkdtemp(prefix="bench-drops-"))
    try:
        with fault_server() as base:
            url = f"{base}{path}?size={size}&drop_after={drop_after}&drop_times={count}"
            clean_url = f"{base}/files/clean.safetensors?size={size}"
            settings = Settings(download_root=str(work), initial_delay_s=0.05, jitter=0.0)
            clean_took, clean = trio.run(_engine_download, clean_url, work / "clean.bin",
                                         content_sha256("/files/clean.safetensors", size), work / "s1", settings)
            took, final = trio.run(_engine_download, url, work / "drops.bin", content_sha256(path, size),
                                   work / "s2", settings)
            stats = fetch_stats(base)["paths"][path]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if final.status is not Status.SUCCESS or clean.status is not Status.SUCCESS:
        raise RuntimeError(f"the download ended {final.status.value}: {final.error}")
    records = stats["records"]
    dropped = sum(1 for r in records if r["outcome"] == "dropped")
    twice = stats["body_bytes_sent"] - size
    assert twice == _overlap(records)
    print_table(f"\nA {size / MIB:.0f} MiB download from the fault server, its connection dropped {count} times "
                f"(RST after every {drop_after / MIB:.1f} MiB); engine with sha256, retries after 50 ms",
                ["run", "requests", "drops", "retries", "bytes fetched twice", "wall s", "notes"],
                [["no faults", 1, 0, clean.retries_total, 0, f"{clean_took:.2f}", ""],
                 [f"{count} drops", len(records), dropped, final.retries_total, twice, f"{took:.2f}",
                  f"{twice / 1024:.0f} KiB repeated; target < 1 MiB: {'met' if twice < MIB else 'MISSED'}"]])


# --- part 3: kill -9 and restart: bytes fetched again, time to get going again ------------


def kills(size: int, count: int, seed: int) -> None:
    """`recovery download` killed with SIGKILL ``count`` times at random moments, then run to the end.

    Per kill: the bytes the next run fetched that an earlier run had already
    fetched (at the server, per request), against one checkpoint interval of
    transfer; and the time from starting the command again to its first
    progress event (interpreter start-up, loading the snapshot, cutting the
    ``.part`` back, the resumed request).
    """
    import json
    import random
    import threading

    rng = random.Random(seed)
    rate = 32 * MIB
    path = "/files/killed.safetensors"
    work = Path(tempfile.mkdtemp(prefix="bench-kill-"))
    rows = []
    try:
        with fault_server() as base:
            url = f"{base}{path}?size={size}&rate_bps={rate}"
            argv = [sys.executable, "-m", "engine", "download", url, "-o", str(work), "--state-dir",
                    str(work / "state"), "--json", "--sha256", content_sha256(path, size)]
            kill_times = []
            for run in range(count + 1):
                started = time.perf_counter()
                first_progress: list[float] = []
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

                def read(proc: subprocess.Popen[str] = proc, seen: list[float] = first_progress) -> None:
                    assert proc.stdout is not None
                    for line in proc.stdout:
                        if not seen and json.loads(line).get("type") == "progress":
                            seen.append(time.perf_counter())

                reader = threading.Thread(target=read, daemon=True)
                reader.start()
                if run < count:
                    at = rng.uniform(0.8, 2.0)
                    time.sleep(at)
                    proc.send_signal(signal.SIGKILL)
                    kill_times.append(at)
                code = proc.wait(timeout=120)
                reader.join(timeout=5)
                if run == count and code != 0:
                    raise RuntimeError(f"the last run exited {code}")
                if run:
                    rows.append([run, f"{kill_times[run - 1]:.2f}",
                                 f"{(first_progress[0] - started) if first_progress else float('nan'):.2f}"])
            records = fetch_stats(base)["paths"][path]["records"]
        again = refetched((r["range_start"], r["bytes_sent"]) for r in records)
        ok = hashlib.sha256((work / "killed.safetensors").read_bytes()).hexdigest() == content_sha256(path, size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    interval = rate * 1.0  # default checkpoint_interval_s
    table = []
    for row, repeated in zip(rows, again[1:]):
        table.append([*row[:2], f"{repeated / MIB:.2f}", f"{interval / MIB:.0f}", row[2],
                      "within one interval" if repeated <= interval else "MORE than one interval"])
    print_table(f"\nrecovery download of {size / MIB:.0f} MiB at {rate / MIB:.0f} MiB/s killed with SIGKILL "
                f"{count} times (seed {seed}), then run to the end; final file "
                f"{'exact (sha256)' if ok else 'WRONG'}",
                ["restart", "killed after s", "MiB fetched again", "1 interval, MiB", "s to first progress",
                 "notes"], table)


# --- part 4: section 6.2 against nginx (limit_rate per connection), start-up cost ---------

LIMITED_BPS = 25 * MIB  # nginx `limit_rate 25m`: per connection
CLIENT_LIMIT, CLIENT_LIMIT_BPS = "50M", 50 * MIB  # binary, as curl and aria2c read "50M"
STARTUP_TARGET_S = 0.2
SMALL_NAME, SMALL_SIZE = "small.bin", 1024
ARIA2C_FAST = ["-x16", "-s16", "-k1M"]
NA_FLAG = "n/a (flag not supported)"
NA_TOOL = "n/a (not installed)"


def child_env(cache: Path, *, bytecode: bool = True) -> dict[str, str]:
    """The environment for ``recovery``: a private bytecode cache, no inherited state dir."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "RECOVERY_STATE_DIR")}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    if not bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def recovery_argv() -> list[str]:
    """``recovery`` as installed beside this interpreter (the console script), else ``python -m engine``."""
    script = Path(sys.executable).with_name("recovery")
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine"]


def download_flags(env: dict[str, str]) -> set[str]:
    """The section 6.2 flags this build's ``recovery download --help`` lists."""
    out = subprocess.run([*recovery_argv(), "download", "--help"], capture_output=True, text=True, env=env,
                         check=True).stdout
    return {flag for flag in ("--connections", "--limit-rate", "--mirror") if flag in out}


def _resumed_at(events: str) -> int:
    """Where a run resumed: ``bytes_done`` of its first progress event (the durable bytes it kept), else 0.

    The download reports the kept ``.part`` as progress once the server has
    answered, before any new byte is written.
    """
    for line in events.splitlines():
        event = json.loads(line)
        if event.get("type") == "progress":
            return int(event["bytes_done"])
    return 0


class Section62:
    """The nginx rows (a)-(e): one nginx, one generated file, clients interleaved per run."""

    def __init__(self, server: NginxServer, work: Path, size: int, sha: str, runs: int, env: dict[str, str],
                 flags: set[str]) -> None:
        self.server, self.work, self.size, self.sha, self.runs = server, work, size, sha, runs
        self.env, self.flags = env, flags
        self.out = work / "out"
        self.out.mkdir()
        self.dest = self.out / FILE_NAME

    def url(self, location: str, name: str = FILE_NAME) -> str:
        return f"{self.server.base}/{location}/{name}"

    # -- clients: each runs once and returns its whole-process wall time ---------

    def recovery(self, url: str, *extra: str, sha: bool = True, json_events: bool = False,
                 env: dict[str, str] | None = None) -> float:
        """``recovery download`` in a fresh process, a fresh state dir, into ``self.out``.

        Output is a pipe, so without ``json_events`` the display is its plain
        lines (every 5 s and at each status change), the cheapest it has.
        """
        state = Path(tempfile.mkdtemp(prefix="state-", dir=self.work))
        argv = [*recovery_argv(), "download", url, "-o", str(self.out), "--state-dir", str(state), *extra]
        argv += ["--sha256", self.sha] if sha else []
        argv += ["--json"] if json_events else []
        try:
            began = time.perf_counter()
            proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  env=env or self.env)
            took = time.perf_counter() - began
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}")
            return took
        finally:
            shutil.rmtree(state, ignore_errors=True)

    def curl(self, url: str, *, sync: bool = False, dest: Path | None = None) -> float:
        return run_curl(url, dest or self.dest, sync=sync)

    def aria2c(self, url: str) -> float:
        return _timed(lambda: subprocess.run(
            ["aria2c", "-q", *ARIA2C_FAST, "--allow-overwrite=true", "--auto-file-renaming=false",
             "-d", str(self.out), "-o", FILE_NAME, url], check=True))

    # -- a table of whole-process times ------------------------------------------

    def compare(self, title: str, clients: list[tuple[str, Callable[[], float] | str, str]], ref: str,
                expect: int, *, runs: int | None = None, writes_nothing: frozenset[str] = frozenset()
                ) -> dict[str, float]:
        """Run each client ``runs`` times, interleaved; print medians and ratios to ``ref``.

        After each run the output folder must hold ``expect`` bytes (but for
        the clients in ``writes_nothing``). A client given as a string is
        not run: the string says why, in its row.
        """
        times: dict[str, list[float]] = {name: [] for name, _, _ in clients}
        cpu: dict[str, list[float]] = {name: [] for name, _, _ in clients}
        for _ in range(runs or self.runs):
            for name, run, _ in clients:
                if isinstance(run, str):
                    continue
                for f in self.out.iterdir():
                    f.unlink()
                os.sync()
                before = _cpu_s()
                times[name].append(run())
                cpu[name].append(_cpu_s() - before)
                got = sum(f.stat().st_size for f in self.out.iterdir() if not f.name.endswith(".aria2"))
                if got != expect and name not in writes_nothing:
                    raise RuntimeError(f"{name} left {got} bytes, expected {expect}")
        medians = {name: statistics.median(t) for name, t in times.items() if t}
        rows = []
        for name, run, note in clients:
            if isinstance(run, str):
                rows.append([name, run, "-", "-", "-", "-", note])
                continue
            wall = medians[name]
            ratio = f"{wall / medians[ref]:.2f}x" if ref in medians else "-"
            rate = f"{expect / MIB / wall:,.1f}" if expect >= MIB else "-"
            rows.append([name, f"{wall:.3f}", f"{min(times[name]):.3f}", rate, ratio,
                         f"{statistics.median(cpu[name]):.3f}", note])
        print_table(title, ["client", "median s", "best s", "MiB/s", f"vs {ref}", "CPU s", "notes"], rows)
        return medians

    # -- (a) and (b) ---------------------------------------------------------------

    def limited(self) -> None:
        url = self.url("limited")
        has_aria2c = shutil.which("aria2c") is not None
        clients: list[tuple[str, Callable[[], float] | str, str]] = [
            ("aria2c -x16 -s16 -k1M", (lambda: self.aria2c(url)) if has_aria2c else NA_TOOL, "no checksum"),
            ("curl -o", lambda: self.curl(url), "one connection"),
            ("recovery download", lambda: self.recovery(url), "defaults, sha256 given, checkpoints on"),
        ]
        ref = clients[0][0] if has_aria2c else "curl -o"
        m = self.compare(f"\n(a) {self.size / MIB:,.0f} MiB from nginx limit_rate 25m per connection; "
                         f"whole-process wall time, median of {self.runs}", clients, ref, self.size)
        if has_aria2c:
            ours, theirs = m["recovery download"], m[ref]
            print(f"  target: recovery download <= aria2c: {'met' if ours <= theirs else 'MISSED'} "
                  f"({ours / theirs:.2f}x)")

    def unlimited(self) -> None:
        url = self.url("fast")
        one = (lambda: self.recovery(url, "--connections", "1")) if "--connections" in self.flags else NA_FLAG
        clients: list[tuple[str, Callable[[], float] | str, str]] = [
            ("curl -o, then sync", lambda: self.curl(url, sync=True), "the file on disk, as the engine ends"),
            ("recovery --connections 1", one, "sha256 given"),
            ("recovery download", lambda: self.recovery(url), "defaults, sha256 given, checkpoints on"),
        ]
        m = self.compare(f"\n(b) {self.size / MIB:,.0f} MiB from nginx without a limit; whole-process wall time, "
                         f"median of {self.runs}", clients, "curl -o, then sync", self.size)
        ours = m["recovery download"]
        verdicts = [f"defaults <= curl + sync: {'met' if ours <= m['curl -o, then sync'] else 'MISSED'} "
                    f"({ours / m['curl -o, then sync']:.2f}x)"]
        if "recovery --connections 1" in m:
            single = m["recovery --connections 1"]
            verdicts.append(f"defaults <= one connection: {'met' if ours <= single else 'MISSED'} "
                            f"({ours / single:.2f}x)")
        else:
            verdicts.append("defaults <= one connection: n/a (flag not supported)")
        print("  target: " + "; ".join(verdicts))

    # -- (c) kill -9 mid-way ----------------------------------------------------------

    def killed(self) -> None:
        uri = f"/limited/{FILE_NAME}"
        interval = Settings().checkpoint_interval_s
        rows = []
        for run in range(self.runs):
            state = Path(tempfile.mkdtemp(prefix="state-", dir=self.work))
            for f in self.out.iterdir():
                f.unlink()
            argv = [*recovery_argv(), "download", self.url("limited"), "-o", str(self.out), "--state-dir",
                    str(state), "--json", "--sha256", self.sha]
            before = len(self.server.requests(uri))
            killed = self._kill_at_half(argv)
            again = subprocess.run(argv, capture_output=True, text=True, env=self.env)
            shutil.rmtree(state, ignore_errors=True)
            if again.returncode != 0:
                raise RuntimeError(f"the run after the kill exited {again.returncode}: {again.stderr[-2000:]}")
            durable = _resumed_at(again.stdout)
            exact = hashlib.sha256(self.dest.read_bytes()).hexdigest() == self.sha
            served = self.server.requests(uri)[before:]
            twice = sum(refetched((start or 0, sent) for _, sent, start in served))
            wrong = "" if exact else "; file WRONG"
            if killed is None:
                rows.append([run + 1, "finished first", "-", "-", "-", len(served), f"{twice / MIB:.2f}", "-", "-", "-",
                             "the file is too small to kill mid-way" + wrong])
                continue
            at, rate, conns = killed
            bound = interval * rate
            unsaved = max(0, at - durable)  # read by the engine, not yet made durable: what checkpoints bound
            rows.append([run + 1, f"{at / MIB:.1f}", f"{durable / MIB:.1f}", f"{rate / MIB:.1f}", conns, len(served),
                         f"{twice / MIB:.2f}", f"{unsaved / MIB:.2f}", f"{max(0, twice - unsaved) / MIB:.2f}",
                         f"{bound / MIB:.1f}",
                         ("read, not durable: within one interval" if unsaved <= bound else
                          "read, not durable: ABOVE one interval") + wrong])
        print_table(f"\n(c) recovery download of {self.size / MIB:,.0f} MiB from the limited location, SIGKILL "
                    f"once half had arrived, then run again to the end ({self.runs} runs; nginx access log)",
                    ["run", "read MiB", "durable MiB", "MiB/s", "connections", "requests", "MiB sent twice",
                     "read, not durable", "sent, not read", f"{interval:g} s of transfer", "notes"], rows)
        print("  read: bytes_done of the last progress event before the kill; durable: where the next run resumed "
              "(its first progress event); sent, not read: in socket buffers when the process died")

    def _kill_at_half(self, argv: list[str]) -> tuple[int, float, str] | None:
        """Start ``argv``; SIGKILL it at the first progress event past half the file.

        Returns (bytes done, total rate then, connections open) or None if it finished first.
        The rate is over the last progress events at least 0.3 s apart (the
        transfer's pace when killed, not its average since the start).
        """
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env)
        seen: list[tuple[float, int]] = []
        conns: set[int] = set()
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                event = json.loads(line)
                if event.get("type") == "status" and event.get("status") == "in_progress":
                    seen.append((event["ts"], 0))
                if event.get("type") != "progress":
                    continue
                seen.append((event["ts"], event["bytes_done"]))
                if isinstance(event.get("connections"), int):
                    conns.add(event["connections"])
                if event["bytes_done"] >= self.size // 2:
                    proc.kill()
                    now_ts, now_done = seen[-1]
                    then_ts, then_done = next(((t, d) for t, d in reversed(seen) if now_ts - t >= 0.3), seen[0])
                    rate = (now_done - then_done) / (now_ts - then_ts) if now_ts > then_ts else float("nan")
                    return now_done, rate, (str(max(conns)) if conns else "- (not in events)")
            return None
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()

    # -- (d) --limit-rate --------------------------------------------------------------

    def rate_limited(self) -> None:
        url = self.url("fast")
        ours: list[float] = []
        theirs: list[float] = []
        supported = "--limit-rate" in self.flags
        for _ in range(self.runs):
            for f in self.out.iterdir():
                f.unlink()
            if supported:
                ours.append(self._limited_rate(url))
            self.dest.unlink(missing_ok=True)
            out = subprocess.run(["curl", "-sS", "--fail", "--limit-rate", CLIENT_LIMIT, "-o", str(self.dest),
                                  "-w", "%{speed_download}", url], capture_output=True, text=True, check=True)
            theirs.append(float(out.stdout.strip().replace(",", ".")))
        rows = []
        for name, rates in (("curl --limit-rate 50M", theirs), ("recovery --limit-rate 50M", ours)):
            if not rates:
                rows.append([name, NA_FLAG, "-", "-", ""])
                continue
            rate = statistics.median(rates)
            off = rate / CLIENT_LIMIT_BPS - 1
            rows.append([name, f"{rate / MIB:.2f}", f"{off:+.1%}", f"{min(rates) / MIB:.2f}-{max(rates) / MIB:.2f}",
                         "within 5%" if abs(off) <= 0.05 else "MORE than 5% off"])
        print_table(f"\n(d) {self.size / MIB:,.0f} MiB from nginx without a limit, the client limited to "
                    f"{CLIENT_LIMIT} (50 MiB/s); rate over the transfer, median of {self.runs}",
                    ["client", "MiB/s", "vs limit", "range MiB/s", "target: within 5%"], rows)

    def _limited_rate(self, url: str) -> float:
        """``recovery download --limit-rate``: size over the time from in_progress to success (events)."""
        state = Path(tempfile.mkdtemp(prefix="state-", dir=self.work))
        argv = [*recovery_argv(), "download", url, "-o", str(self.out), "--state-dir", str(state), "--json",
                "--sha256", self.sha, "--limit-rate", CLIENT_LIMIT]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=self.env)
        finally:
            shutil.rmtree(state, ignore_errors=True)
        if proc.returncode != 0:
            raise RuntimeError(f"recovery --limit-rate exited {proc.returncode}: {proc.stderr[-2000:]}")
        ts: dict[str, float] = {}
        for line in proc.stdout.splitlines():
            event = json.loads(line)
            if event.get("type") == "status":
                ts.setdefault(event["status"], event["ts"])
        return self.size / (ts["success"] - ts["in_progress"])

    # -- (e) start-up ------------------------------------------------------------------

    def startup(self, runs: int) -> None:
        url = self.url("fast", SMALL_NAME)
        cold = Path(tempfile.mkdtemp(prefix="no-pyc-", dir=self.work))
        plain_env, cold_env = self.env, child_env(cold, bytecode=False)

        def ours(env: dict[str, str]) -> Callable[[], float]:
            return lambda: self.recovery(url, sha=False, env=env)

        def python(code: str) -> Callable[[], float]:
            return lambda: _timed(lambda: subprocess.run([sys.executable, "-c", code], check=True, env=plain_env))

        floor = ("python -c pass", "python -c 'import trio, httpx'")
        m = self.compare(
            f"\n(e) whole-process time of a {SMALL_SIZE:,} byte download from nginx, median of {runs}",
            [("curl -o", lambda: self.curl(url, dest=self.out / SMALL_NAME), "the reference"),
             ("recovery download", ours(plain_env), "bytecode cached, as installed"),
             ("recovery download, no .pyc", ours(cold_env), "every module compiled at start-up"),
             (floor[0], python("pass"), "the interpreter alone, no download"),
             (floor[1], python("import trio, httpx, httpcore"), "what any trio + httpx tool loads, no download")],
            "curl -o", SMALL_SIZE, runs=runs, writes_nothing=frozenset(floor))
        ours_s = m["recovery download"]
        print(f"  target: recovery download <= {STARTUP_TARGET_S} s: {'met' if ours_s <= STARTUP_TARGET_S else 'MISSED'}"
              f" ({ours_s:.3f} s; {ours_s - m['python -c pass']:.3f} s above the bare interpreter, "
              f"{ours_s - m[floor[1]]:.3f} s above importing trio + httpx)")


def section62(size: int, runs: int, startup_runs: int, parts: set[str], dest_root: Path) -> None:
    """Rows (a)-(e): one nginx with a limited and an unlimited location, one generated file."""
    work = Path(tempfile.mkdtemp(prefix="bench-s62-", dir=dest_root))
    try:
        env = child_env(work / "pycache")
        flags = download_flags(env)
        missing = sorted({"--connections", "--limit-rate"} - flags)
        print(f"\nrecovery download --help lists: {', '.join(sorted(flags)) or 'none of the section 6.2 flags'}"
              + (f" (rows needing {', '.join(missing)}: n/a)" if missing else ""))
        src = work / "src"
        src.mkdir()
        if parts - {"e"} and nginx_binary() is None:
            print("(a)-(d): n/a (nginx not installed)")
            parts = parts & {"e"}
        if not parts:
            return
        sha = ""
        if parts - {"e"}:
            print(f"generating a {size / MIB:,.0f} MiB file ...", file=sys.stderr)
            sha = make_file(src / FILE_NAME, size)
        (src / SMALL_NAME).write_bytes(os.urandom(SMALL_SIZE))
        if nginx_binary() is None:
            print("(e): n/a (nginx not installed)")
            return
        with nginx_locations(src, {"limited": LIMITED_BPS, "fast": None}) as server:
            bench = Section62(server, work, size, sha, runs, env, flags)
            # Warm the bytecode cache (and the page cache) once, untimed.
            bench.recovery(bench.url("fast", SMALL_NAME), sha=False)
            for part, run in (("a", bench.limited), ("b", bench.unlimited), ("c", bench.killed),
                              ("d", bench.rate_limited), ("e", lambda: bench.startup(startup_runs))):
                if part in parts:
                    run()
    finally:
        shutil.rmtree(work, ignore_errors=True)


PARTS = ("throughput", "drops", "kills", "a", "b", "c", "d", "e")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None, help="size of the large download in MiB (default 1024)")
    parser.add_argument("--runs", "--repeat", dest="runs", type=int, default=None,
                        help="runs per client; tables show medians (default 3)")
    parser.add_argument("--startup-runs", type=int, default=None, help="runs per client in row (e) (default 11)")
    parser.add_argument("--only", action="append", choices=PARTS, default=None,
                        help="run only this part (repeatable): throughput, drops, kills (parts 1-3) or a-e "
                             "(the section 6.2 and start-up rows); default all")
    parser.add_argument("--quick", action="store_true", help="256 MiB, one run per client, 64 MiB drop test")
    parser.add_argument("--dest-dir", type=Path, action="append", default=None,
                        help="where downloads are written (repeatable; default: the temp dir and /dev/shm)")
    parser.add_argument("--server", choices=("nginx", "sendfile"), default="nginx",
                        help="static server (nginx falls back to sendfile when not installed)")
    parser.add_argument("--drops", type=int, default=10, help="dropped connections in the second part")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs in the third part (0 to skip)")
    parser.add_argument("--seed", type=int, default=7, help="random kill moments in the third part")
    args = parser.parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so the servers are stopped and temp files removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    logging.getLogger("engine").setLevel(logging.ERROR)  # the drop test's retries are expected
    size = (args.size or (256 if args.quick else 1024)) * MIB
    repeat = args.runs or (1 if args.quick else 3)
    startup_runs = args.startup_runs or (5 if args.quick else 11)
    parts = set(args.only or PARTS)
    dest_dirs = args.dest_dir or [Path(tempfile.gettempdir())] + (
        [Path("/dev/shm")] if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else [])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"tools: curl {'yes' if shutil.which('curl') else 'not installed'}, "
          f"aria2c {'yes' if shutil.which('aria2c') else 'not installed'}, "
          f"nginx {'yes' if shutil.which('nginx') or os.path.exists('/usr/sbin/nginx') else 'not installed'}; "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the start")
    if "throughput" in parts:
        throughput(size, repeat, dest_dirs, args.server)
    if "drops" in parts:
        drops((64 if args.quick else 256) * MIB, args.drops)
    if args.kills and "kills" in parts:
        kills((96 if args.quick else 192) * MIB, args.kills, args.seed)
    if parts & set("abcde"):
        section62(size, repeat, startup_runs, parts & set("abcde"), dest_dirs[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
