"""Helpers shared by the benchmark scripts: memory, percentiles, file systems, tables.

Standard library only, so a benchmark measures the engine and not its helpers.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from engine import _platform

__all__ = [
    "filesystem_of",
    "peak_rss_mib",
    "percentile",
    "percentiles",
    "print_json",
    "print_table",
]


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (``getrusage`` high-water mark)."""
    peak = _platform.process_usage()[2]
    return float("nan") if peak is None else peak / (1024 * 1024)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def percentiles(values: Sequence[float], qs: Iterable[float] = (50, 99)) -> dict[str, float]:
    """``{"p50": ..., "p99": ...}`` for the given percentiles, sorting only once."""
    ordered = sorted(values)
    return {f"p{q:g}": percentile(ordered, q) for q in qs}


def filesystem_of(path: str | os.PathLike[str]) -> dict[str, str]:
    """The mount a path lives on: ``{"mount", "fstype", "device"}`` (from /proc/mounts).

    Falls back to ``"unknown"`` where /proc/mounts is not available.
    """
    target = os.path.realpath(path)
    best = {"mount": "/", "fstype": "unknown", "device": "unknown"}
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            lines = mounts.read().splitlines()
    except OSError:
        return best
    best_len = -1
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        device, mount, fstype = parts[0], parts[1].replace("\\040", " "), parts[2]
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        # The last matching line wins on ties: later mounts shadow earlier ones.
        if inside and len(mount) >= best_len:
            best = {"mount": mount, "fstype": fstype, "device": device}
            best_len = len(mount)
    return best


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], *,
                file: Any = None) -> None:
    """A plain aligned text table: first column left-aligned, the rest right-aligned."""
    out = file or sys.stdout
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        first, *rest = values
        return "  ".join([first.ljust(widths[0]), *(v.rjust(w) for v, w in zip(rest, widths[1:]))])

    print(title, file=out)
    print(line([str(h) for h in header]), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print(line(row), file=out)
    out.flush()


def print_json(data: Any, *, file: Any = None) -> None:
    """One JSON document, NaN written as null."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    print(json.dumps(clean(data), indent=2), file=file or sys.stdout)
