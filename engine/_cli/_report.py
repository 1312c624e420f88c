"""``recovery report [ID]`` and ``recovery history`` (SPEC 10.1, 10.2, 13).

Both ask the running ``recovery serve`` of the state directory when there is
one, and otherwise read the state directory itself (without its lock, so an
engine run by ``recovery download`` is not disturbed and nothing is started).
What they print passes through the log's redaction as well as the report's
own (`engine._report.scrub`). Exit codes: 0 printed, 1 unknown operation,
2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import trio

from .._history import HistoryBucket, summarize
from .._report import engine_report, operation_report, read_state_dir, report_text
from .._units import human_bytes
from ._answers import Refused, op_path
from ._client import _NoServer, _request, _state_dir
from ._logsetup import redact

__all__ = ["add_parsers"]

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE = 0, 1, 2


def add_parsers(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", metavar="DIR",
                        help="state directory (default: $RECOVERY_STATE_DIR or the platform's user state dir)")
    common.add_argument("--json", action="store_true", help="print JSON for scripts")

    p = sub.add_parser("report", parents=[common],
                       help="a support report: one operation (with a network check run now) or, without ID, "
                            "the whole engine; credentials are never included")
    p.add_argument("id", metavar="ID", nargs="?")
    p.add_argument("--no-network", action="store_true", help="skip the DNS and TCP check of the host")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("history", parents=[common],
                       help="failures by code and host, recoveries and bytes received, per hour")
    p.add_argument("--hours", type=int, default=24, metavar="N", help="how many hours back (1..720, default 24)")
    p.set_defaults(func=_cmd_history)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def _cmd_report(args: argparse.Namespace) -> int:
    path = op_path(args.id, "report") if args.id else "/api/report"
    try:
        doc = _request(args, "GET", path + ("?network=0" if args.no_network else ""))
    except Refused as exc:
        print(f"recovery report: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_NOT_FOUND if exc.status == 404 else EXIT_USAGE
    except _NoServer:
        doc = _offline_report(args)
        if doc is None:
            print(f"recovery report: E_NOT_FOUND: no operation with id {args.id!r} in {_state_dir(args)}",
                  file=sys.stderr)
            return EXIT_NOT_FOUND
    doc = _redacted(doc)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        sys.stdout.write(report_text(doc))
    return EXIT_OK


def _offline_report(args: argparse.Namespace) -> dict[str, Any] | None:
    root = _state_dir(args)
    view = read_state_dir(root)
    if args.id is None:
        return engine_report(view.operations, settings=view.settings, state_dir=root,
                             statistics=view.statistics or None, breakers=None,
                             history=summarize(view.history.buckets(24)), source="state_dir")
    op = view.find(args.id)
    if op is None:
        return None

    async def build() -> dict[str, Any]:
        return await operation_report(op, settings=view.settings, state_dir=root, source="state_dir",
                                      network=not args.no_network)

    return trio.run(build)


def _cmd_history(args: argparse.Namespace) -> int:
    if not 1 <= args.hours <= 720:
        print("recovery history: error: --hours must be between 1 and 720", file=sys.stderr)
        return EXIT_USAGE
    try:
        data = _request(args, "GET", f"/api/recovery/history?hours={args.hours}")
    except Refused as exc:
        print(f"recovery history: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except _NoServer:
        buckets = read_state_dir(_state_dir(args)).history.buckets(args.hours)
        data = {"hours": args.hours, "buckets": [b.to_dict() for b in buckets],
                "totals": summarize(buckets)}
    data = _redacted(data)
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    _print_history(data)
    return EXIT_OK


def _print_history(data: dict[str, Any]) -> None:
    totals = data["totals"]
    print(f"last {data['hours']} h: {totals['attempts']} attempts, {totals['failures']} failures, "
          f"{totals['recoveries']} recoveries, {human_bytes(totals['bytes_received'])} received")
    if totals["failures_by_code"]:
        print("failures by code: " + ", ".join(f"{c} {n}" for c, n in
                                               sorted(totals["failures_by_code"].items(), key=lambda p: -p[1])))
    if totals["failures_by_host"]:
        print("failures by host: " + ", ".join(f"{h} {n}" for h, n in
                                               sorted(totals["failures_by_host"].items(), key=lambda p: -p[1])))
    rows = [HistoryBucket(**b) for b in data["buckets"]]
    busy = [b for b in rows if b.attempts or b.failures or b.bytes_received or b.recoveries]
    if not busy:
        print("nothing happened in this period")
        return
    print(f"{'hour':<17} {'attempts':>8} {'failures':>8} {'recovered':>9} {'received':>10}  top failure")
    for b in busy:
        top = max(b.failures_by_code.items(), key=lambda p: p[1], default=("", 0))
        hour = time.strftime("%Y-%m-%d %H:00", time.localtime(b.hour))
        print(f"{hour:<17} {b.attempts:>8} {b.failures:>8} {b.recoveries:>9} {human_bytes(b.bytes_received):>10}"
              f"  {top[0] + ' ' + str(top[1]) if top[1] else ''}")
