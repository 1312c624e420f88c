"""Human-readable sizes, one way everywhere (CLI tables, error messages)."""

from __future__ import annotations

__all__ = ["human_bytes"]


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
