"""Human-readable sizes, rates and durations, one way everywhere (CLI, server, report).

Binary units (KiB, MiB, GiB: powers of 1024), as the dashboard shows them.
"""

from __future__ import annotations

__all__ = ["human_bytes", "human_duration", "human_rate", "parse_rate"]


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


_RATE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def parse_rate(text: str) -> int:
    """Bytes per second from ``10M``, ``500k``, ``1.5m``, ``2G`` or ``4096`` (binary units, as curl).

    Raises ``ValueError`` for anything else (``0`` means unlimited).
    """
    value = text.strip().lower()
    for suffix in ("/s", "b", "ib", "i"):
        value = value.removesuffix(suffix) if value.endswith(suffix) and len(value) > len(suffix) else value
    unit = value[-1:] if value[-1:] in _RATE_UNITS else ""
    number = value[: len(value) - len(unit)]
    try:
        amount = float(number)
    except ValueError:
        raise ValueError(f"not a rate: {text!r} (try 10M or 500k)") from None
    if not amount >= 0 or amount == float("inf"):
        raise ValueError(f"not a rate: {text!r} (try 10M or 500k)")
    return int(amount * _RATE_UNITS[unit])
