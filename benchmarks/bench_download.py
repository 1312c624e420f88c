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

    python benchmarks/bench_download.py                 # 1 GiB, 3 runs each, disk and /dev/shm
    python benchmarks/bench_download.py --quick         # 256 MiB, one run each
    python benchmarks/bench_download.py --size 512 --repeat 5 --dest-dir /var/tmp

Everything it creates (the served file, outputs, state directories, server
configuration) lives in temporary directories removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
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
from _servers import fault_server, fetch_stats, static_server  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None, help="size of the large download in MiB (default 1024)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per client (default 3)")
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
    repeat = args.repeat or (1 if args.quick else 3)
    dest_dirs = args.dest_dir or [Path(tempfile.gettempdir())] + (
        [Path("/dev/shm")] if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else [])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"tools: curl {'yes' if shutil.which('curl') else 'not installed'}, "
          f"aria2c {'yes' if shutil.which('aria2c') else 'not installed'}, "
          f"nginx {'yes' if shutil.which('nginx') or os.path.exists('/usr/sbin/nginx') else 'not installed'}; "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the start")
    throughput(size, repeat, dest_dirs, args.server)
    drops((64 if args.quick else 256) * MIB, args.drops)
    if args.kills:
        kills((96 if args.quick else 192) * MIB, args.kills, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
