"""Human-readable sizes, rates and durations, one way everywhere (CLI, server, report).

Binary units (KiB, MiB, GiB: powers of 1024), as the dashboard shows them.
"""

from __future__ import annotations

__all__ = ["human_bytes", "human_duration", "human_rate"]


def human_bytes(n: int | float, *, exact: bool = False) -> str:
    """``1.5 MiB``; with ``exact``, ``1.5 MiB (1572864 bytes)`` for messages a person acts on."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(n)} bytes" if exact else f"{int(n)} B"
            text = f"{value:.1f} {unit}"
            return f"{text} ({int(n)} bytes)" if exact else text
        value /= 1024
    raise AssertionError("unreachable")


def human_rate(bps: float | None) -> str:
    """``12.3 MiB/s``; ``-`` when unknown."""
    return "-" if bps is None else f"{human_bytes(bps)}/s"


def human_duration(seconds: float | None) -> str:
    """``45s``, ``3m07s``, ``2h05m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    minutes, secs = divmod(s, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"
