"""``recovery download`` and ``recovery demo``."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from .._errors import RefusedError
from .._units import parse_rate
from ._runner import add_common_options, run_cli, run_specs, setup_cli_logging
from .._specs import DownloadSpec

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("download", help="download URLs resumably, surviving drops and crashes",
                       description="Download URLs into a directory. Ctrl-C pauses; run the same "
                                   "command again to resume.")
    p.add_argument("urls", nargs="+", metavar="URL", help="http(s) URL of a file; several download side by side")
    p.add_argument("-o", "--output-dir", type=Path, default=Path("."), metavar="DIR",
                   help="directory to write into (default: the current directory)")
    p.add_argument("--sha256", action="append", default=[], metavar="HEX",
                   help="expected sha256 (once per URL, in order)")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="request header, e.g. an Authorization token (never logged or shown)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a file already at the destination (by default it is never replaced)")
    p.add_argument("--connections", type=_connections, metavar="N",
                   help="at most N connections per download (by default the engine finds the best number)")
    p.add_argument("--limit-rate", type=_rate, metavar="RATE",
                   help="cap each download's receive rate, e.g. 10M or 500k (bytes per second)")
    p.add_argument("--mirror", action="append", default=[], metavar="URL",
                   help="another URL of the same file, tried when the first fails (repeatable)")
    p.add_argument("--max-retries", type=int, metavar="N",
                   help="automatic retries after the first attempt (default 5; same as --set max_retries=N)")
    p.add_argument("--initial-delay", type=float, metavar="S",
                   help="seconds before retry 1 (default 2; same as --set initial_delay_s=S)")
    p.add_argument("--backoff-factor", type=float, metavar="F",
                   help="each further delay is F times the last (default 2; same as --set backoff_factor=F)")
    p.add_argument("--max-delay", type=float, metavar="S",
                   help="cap on any delay, in seconds (default 300; same as --set max_delay_s=S)")
    add_common_options(p)
    p.set_defaults(func=_download)

    d = sub.add_parser("demo", help="a self-contained demonstration against a local faulty server")
    d.add_argument("--keep", type=Path, default=None, help="keep the downloaded files in this directory")
    d.add_argument("--json", action="store_true", help="print JSON events instead of bars")
    d.set_defaults(func=_demo)


def _connections(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _rate(text: str) -> int:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _download(args: argparse.Namespace) -> int:
    for flag, name in (("max_retries", "max_retries"), ("initial_delay", "initial_delay_s"),
                       ("backoff_factor", "backoff_factor"), ("max_delay", "max_delay_s")):
        value = getattr(args, flag)
        if value is not None:
            args.set_.append(f"{name}={value}")

    def make_specs() -> list[DownloadSpec]:
        if args.sha256 and len(args.sha256) != len(args.urls):
            raise RefusedError("E_INVALID_INPUT", "give --sha256 once per URL, in the same order",
                               field="sha256")
        headers = {}
        for item in args.header:
            name, sep, value = item.partition(":")
            if not sep or not name.strip():
                raise RefusedError("E_INVALID_INPUT", f"header {name.strip()!r}: expected 'NAME: VALUE'",
                                   field="header")
            headers[name.strip()] = value.strip()
        out_dir = args.output_dir.expanduser().resolve()
        shas = args.sha256 or [None] * len(args.urls)
        if args.mirror and len(args.urls) != 1:
            raise RefusedError("E_INVALID_INPUT", "--mirror names another URL of one file: give one URL with it",
                               field="mirror")
        return [DownloadSpec(url=url, dest=str(out_dir) + os.sep, sha256=sha, headers=headers,
                             overwrite=args.overwrite, connections=args.connections,
                             rate_limit_bps=args.limit_rate or None, mirrors=list(args.mirror))
                for url, sha in zip(args.urls, shas)]

    return run_cli(make_specs, args)


# -- demo -------------------------------------------------------------------------

def _demo(args: argparse.Namespace) -> int:
    try:
        return trio.run(_demo_main, args)
    except KeyboardInterrupt:
        return 130


async def _demo_main(args: argparse.Namespace) -> int:
    from ..testing import FaultServer, Faults

    mib = 1024 * 1024
    work = Path(tempfile.mkdtemp(prefix="recovery-demo-"))
    out = (args.keep.expanduser().resolve() if args.keep else work / "models")
    out.mkdir(parents=True, exist_ok=True)
    server = FaultServer()
    setup_cli_logging(work / "state")
    files = [
        ("/models/checkpoint.safetensors", 24 * mib,
         Faults(drop_after=7 * mib, drop_times=2, rate_bps=3 * mib),
         "drops the connection twice; resumes where it was"),
        ("/models/vae.safetensors", 10 * mib,
         Faults(status=503, status_times=2, retry_after="2", rate_bps=2 * mib),
         "answers 503 twice (Retry-After: 2), then serves"),
        ("/models/lora.safetensors", 6 * mib,
         Faults(stall_after=2 * mib, stall_times=1, rate_bps=1.5 * mib),
         "stalls after 2 MiB; the stall is found, it resumes"),
    ]
    if not args.json:
        print("recovery demo: a local server with faults, and downloads that recover.\n", file=sys.stderr)
    async with trio.open_nursery() as nursery:
        base = await nursery.start(server.serve)
        specs = []
        for path, size, faults, what in files:
            server.add_file(path, size=size, faults=faults)
            # one connection each: the demo shows recoveries, which several connections would
            # hide inside one attempt
            specs.append(DownloadSpec(url=f"{base}{path}", dest=str(out / Path(path).name), connections=1))
            if not args.json:  # 80 columns: 29 for the name, 51 for what happens to it
                print(f"  {Path(path).name:<26} {what}", file=sys.stderr)
        if not args.json:
            print(file=sys.stderr)
        overrides = {"initial_delay_s": 1.0, "max_delay_s": 4.0, "stall_timeout_s": 3.0,
                     "connect_timeout_s": 5.0, "max_concurrent": 3, "max_per_host": 3}
        code = await run_specs(specs, state_dir=work / "state", overrides=overrides, json_mode=args.json)
        nursery.cancel_scope.cancel()
    if not args.json:
        from ..testing import content_sha256

        ok = all(
            (out / Path(path).name).exists()
            and _sha256(out / Path(path).name) == content_sha256(path, size)
            for path, size, _, _ in files
        )
        verdict = "every file is byte-exact (sha256 checked)" if ok else "some files did not finish"
        print(f"\n{verdict}; served {server.stats.body_bytes_sent / mib:.1f} MiB for "
              f"{sum(s for _, s, _, _ in files) / mib:.0f} MiB of files.", file=sys.stderr)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        shutil.rmtree(work / "state", ignore_errors=True)
    return code


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
