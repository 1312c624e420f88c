"""Terminal display for running operations (SPEC 13): bars that fit, plain lines, JSON lines.

Each operation is one bar line (name, bar, percent, size, rate, ETA, ``xN``
connections) and at most one status line (``recovering · Attempt 2/5 · retry
in 3s · Connection refused…``), both cut to the terminal's width so nothing
wraps from 60 columns up. Its destination is printed once, when it first
appears (cut in the middle to fit a terminal); the suggestion once, when it
fails. When the output is not a terminal, `PlainLines` prints a line per
operation at every status change and at least every 5 s. Every display reads operation views as plain dicts
(``Operation.to_dict()`` or the API's JSON), so the embedded engine and a
joined ``serve`` look the same.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Iterable, Mapping, TextIO

from .._units import human_bytes, human_duration, human_rate

__all__ = ["JsonLines", "PlainLines", "ProgressDisplay", "bar_line", "describe_status", "make_display",
           "op_label", "status_line"]

View = Mapping[str, Any]

_STYLE = {
    "pending": "dim", "in_progress": "cyan", "recovering": "yellow", "paused": "magenta",
    "success": "green", "failed": "red", "exhausted": "red", "cancelled": "dim",
}
_SETTLED = frozenset({"success", "failed", "exhausted", "cancelled"})
PLAIN_EVERY_S = 5.0


def op_label(op: View) -> str:
    """A short human name for an operation: file name, project name or argv."""
    spec = op.get("spec") or {}
    for key in ("dest", "name"):
        value = spec.get(key)
        if isinstance(value, str) and value:
            return value.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    argv = spec.get("argv")
    if isinstance(argv, list) and argv:
        return " ".join(str(a) for a in argv)[:40]
    url = spec.get("url")
    if isinstance(url, str) and url:
        return url.rstrip("/").rsplit("/", 1)[-1] or url
    return str(op.get("id", "?"))


def destination(op: View) -> str | None:
    """Where the operation writes (a download's file, a project's or install's folder)."""
    spec = op.get("spec") or {}
    for key in ("dest", "cwd", "path", "root"):
        value = spec.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells, ending in ``…`` when cut."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: max(0, width - 1)] + "…"


def _connections(op: View) -> int:
    try:
        return int(op.get("connections") or 1)
    except (TypeError, ValueError):
        return 1


def describe_status(op: View, now: float | None = None) -> str:
    """The status line without the message: status, step, ``Attempt n/N``, countdown."""
    now = time.time() if now is None else now
    status = str(op.get("status"))
    parts = [status.replace("_", " ")]
    if op.get("steps_total"):
        total = op["steps_total"]
        parts.append(f"step {min((op.get('steps_done') or 0) + 1, total)}/{total}")
    attempt = op.get("attempt") or 0
    if attempt and status in ("recovering", "in_progress", "failed", "exhausted"):
        parts.append(f"Attempt {attempt}/{op.get('max_retries')}")
    if status == "recovering":
        nxt = op.get("next_retry_at")
        if nxt:
            wait = nxt - now
            parts.append(f"retry in {human_duration(wait)}" if wait >= 0.5 else "retrying")
        else:
            parts.append("retrying")
    elif status == "in_progress" and not (op.get("rate_bps") or 0) and (op.get("bytes_done") or 0):
        parts.append("stalled")
    return " · ".join(parts)


def status_line(op: View, width: int, now: float | None = None) -> str | None:
    """The second line of an operation, or None when the bar says it all."""
    status = str(op.get("status"))
    head = describe_status(op, now)
    err = op.get("error")
    if status in ("recovering", "failed", "exhausted") and isinstance(err, Mapping):
        head += f" · {err.get('message') or err.get('code')}"
    elif status == "in_progress" and not op.get("attempt") and head == "in progress":
        return None
    elif status == "in_progress" and isinstance(op.get("last_error"), Mapping):
        head += f" · recovered from {op['last_error'].get('code')}"
    return fit("  " + head, width)


def _figures(op: View) -> str:
    done, total = op.get("bytes_done") or 0, op.get("bytes_total")
    status = str(op.get("status"))
    pieces = []
    if total:
        pieces.append(f"{done * 100 / total:5.1f}%")
        pieces.append(f"{human_bytes(done)}/{human_bytes(total)}")
    elif done:
        pieces.append(human_bytes(done))
    if status == "in_progress":
        rate = op.get("rate_bps") or 0
        pieces.append(human_rate(rate) if rate else "stalled" if done else "")
        if op.get("eta_s") is not None:
            pieces.append(f"ETA {human_duration(op['eta_s'])}")
        n = _connections(op)
        if n > 1:
            pieces.append(f"x{n}")
    return " ".join(p for p in pieces if p)


def bar_line(op: View, width: int) -> str:
    """``name  ━━━━━━╸       42.0% 12.0 MiB/28.6 MiB 20.1 MiB/s ETA 1s x4``, ``width`` cells at most."""
    figures = _figures(op)
    name_w = max(8, min(28, width // 3))
    name = fit(op_label(op), name_w).ljust(name_w)
    bar_w = width - name_w - len(figures) - 3
    if bar_w < 6:  # narrow: drop the bar, keep the figures
        return fit(f"{name} {figures}", width)
    total, done = op.get("bytes_total"), op.get("bytes_done") or 0
    frac = 1.0 if op.get("status") == "success" else (min(1.0, done / total) if total else 0.0)
    filled = int(round(frac * bar_w))
    bar = "━" * filled + " " * (bar_w - filled)
    return fit(f"{name} {bar} {figures}", width)


def fit_middle(text: str, width: int) -> str:
    """``text`` cut in the middle to ``width`` cells (a path keeps its start and its file name)."""
    if len(text) <= width:
        return text
    if width < 8:
        return fit(text, width)
    tail = (width - 1) * 2 // 3
    return text[: width - 1 - tail] + "…" + text[-tail:]


class _Announcer:
    """Prints each operation's destination once (within ``width`` cells on a terminal)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def news(self, op: View, width: int | None = None) -> list[str]:
        lines = []
        op_id = str(op.get("id"))
        if op_id not in self._seen:
            self._seen.add(op_id)
            dest = destination(op)
            if dest:
                line, ident = f"{op_label(op)} -> {dest}", f"  (id {op_id})"
                if width is not None and len(line) + len(ident) > width:
                    line = fit_middle(f"-> {dest}", max(8, width - len(ident)))  # the path names the file
                lines.append(fit(line + ident, width) if width is not None else line + ident)
        return lines


class ProgressDisplay:
    """Live bars on a terminal; `update` with fresh views, `summary` at the end."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True, highlight=False)
        self._ops: dict[str, View] = {}
        self._announce = _Announcer()
        self._live: Any = None

    def __enter__(self) -> "ProgressDisplay":
        from rich.live import Live

        self._live = Live(self, console=self.console, refresh_per_second=8, transient=False,
                          redirect_stdout=False, redirect_stderr=False)
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from rich.text import Text

        # Two cells stay free for the terminal's own "^C" echo: were the last line full, the echo
        # would wrap it, and the final redraw would start a line too low and leave a second bar.
        width = max(20, options.max_width - 2)
        now = time.time()
        for op in self._ops.values():
            style = _STYLE.get(str(op.get("status")), "")
            yield Text(bar_line(op, width), no_wrap=True, overflow="crop")
            second = status_line(op, width, now)
            if second is not None:
                yield Text(second, style=style, no_wrap=True, overflow="crop")

    def update(self, ops: Iterable[View]) -> None:
        for op in ops:
            for line in self._announce.news(op, self.console.width):
                self.console.print(line, markup=False, highlight=False, soft_wrap=True)
            self._ops[str(op.get("id"))] = op
        if self._live is not None:
            self._live.refresh()

    def summary(self, ops: Iterable[View], *, interrupted: bool = False) -> None:
        _summary(ops, lambda text, style="": self.console.print(text, style=style or None, markup=False,
                                                                 highlight=False, soft_wrap=True),
                 interrupted=interrupted)


class PlainLines:
    """Not a terminal: one plain line per operation at every status change and every 5 s."""

    def __init__(self, stream: TextIO | None = None, every_s: float = PLAIN_EVERY_S) -> None:
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self._last: dict[str, tuple[str, float]] = {}
        self._announce = _Announcer()

    def __enter__(self) -> "PlainLines":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.flush()

    def _write(self, text: str, style: str = "") -> None:
        self.stream.write(text + "\n")

    def update(self, ops: Iterable[View]) -> None:
        now = time.monotonic()
        wrote = False
        for op in ops:
            for line in self._announce.news(op):
                self._write(line)
                wrote = True
            op_id, status = str(op.get("id")), str(op.get("status"))
            last = self._last.get(op_id)
            if last is None or last[0] != status or now - last[1] >= self.every_s:
                self._last[op_id] = (status, now)
                figures = _figures(op)
                second = status_line(op, 400) or ""
                self._write(f"{op_label(op)}: {second.strip() or describe_status(op)}"
                            + (f" · {figures}" if figures else ""))
                wrote = True
        if wrote:
            self.stream.flush()

    def summary(self, ops: Iterable[View], *, interrupted: bool = False) -> None:
        _summary(ops, self._write, interrupted=interrupted)
        self.stream.flush()


def _summary(ops: Iterable[View], write: Any, *, interrupted: bool) -> None:
    """The outcome of each operation; message and suggestion (once) on failure."""
    for op in ops:
        label, status = op_label(op), str(op.get("status"))
        if status == "success":
            n = op.get("retries_total") or 0
            extra = f" after {n} {'retry' if n == 1 else 'retries'}" if n else ""
            write(f"✓ {label}: done{extra}", "green")
        elif status == "paused":
            if not interrupted:  # after Ctrl-C the runner says it once for all
                write(f"‖ {label}: paused; run the same command again to resume", "magenta")
        elif status in ("pending", "in_progress", "recovering"):
            write(f"… {label}: {status.replace('_', ' ')}", "")
        else:
            write(f"✗ {label}: {status}", "red")
            err = op.get("error")
            if isinstance(err, Mapping):
                write(f"    {err.get('code')}: {err.get('message')}", "")
                write(f"    suggestion: {err.get('suggestion')}", "")
            tail = op.get("output_tail") or []
            if tail:
                write("    last output:", "")
                for line in list(tail)[-10:]:
                    write(f"      {line}", "")


def make_display(stream_is_terminal: bool | None = None) -> ProgressDisplay | PlainLines:
    """Bars on a terminal, plain lines otherwise (both on stderr)."""
    if stream_is_terminal is None:
        stream_is_terminal = sys.stderr.isatty()
    return ProgressDisplay() if stream_is_terminal else PlainLines()


class JsonLines:
    """``--json``: one event per line on stdout, flushed as it happens."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def event(self, event: dict[str, Any]) -> None:
        self.stream.write(json.dumps(event, sort_keys=True, default=str) + "\n")
        self.stream.flush()
