"""Terminal display for running operations: rich progress bars, or JSON lines.

The bars show name, progress, size, rate, ETA and a status column that
reads ``Attempt 2/5 · retry in 12s`` while recovering, so a person can see
that the engine is working on it rather than stuck.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Iterable, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from .._model import Operation, Status

__all__ = ["JsonLines", "ProgressDisplay", "describe_status", "op_label"]

_STYLE = {
    Status.PENDING: "dim", Status.IN_PROGRESS: "cyan", Status.RECOVERING: "yellow",
    Status.PAUSED: "magenta", Status.SUCCESS: "green", Status.FAILED: "red",
    Status.EXHAUSTED: "red", Status.CANCELLED: "dim",
}


def op_label(op: Operation) -> str:
    """A short human name for an operation: file name, project name or argv[0]."""
    spec = op.spec
    for key in ("dest", "name"):
        value = spec.get(key)
        if isinstance(value, str) and value:
            return value.rstrip("/").rsplit("/", 1)[-1]
    argv = spec.get("argv")
    if isinstance(argv, list) and argv:
        return " ".join(str(a) for a in argv)[:40]
    return op.id


def describe_status(op: Operation, now: float | None = None) -> str:
    """One line: status, attempt counter and countdown, or the error."""
    now = time.time() if now is None else now
    parts = [op.status.value.replace("_", " ")]
    if op.steps_total:
        parts.append(f"step {min((op.steps_done or 0) + 1, op.steps_total)}/{op.steps_total}")
    if op.status is Status.RECOVERING or (op.attempt and op.status is Status.IN_PROGRESS):
        parts.append(f"Attempt {op.attempt}/{op.max_retries}")
    if op.status is Status.RECOVERING and op.next_retry_at:
        wait = op.next_retry_at - now
        parts.append(f"retry in {wait:.0f}s" if wait >= 0.5 else "retrying")
    if op.error is not None and op.status in (Status.RECOVERING, Status.FAILED, Status.EXHAUSTED):
        parts.append(f"{op.error.code}")
    return " · ".join(parts)


class _StatusColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        op: Operation | None = task.fields.get("op")
        if op is None:
            return Text("")
        return Text(describe_status(op), style=_STYLE.get(op.status, ""))


class ProgressDisplay:
    """Live bars for a set of operations; call `update` with fresh views."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description}", justify="left"),
            BarColumn(bar_width=None),
            TextColumn("{task.percentage:>5.1f}%"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            _StatusColumn(),
            console=self.console,
            transient=False,
            refresh_per_second=8,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> "ProgressDisplay":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, ops: Iterable[Operation]) -> None:
        for op in ops:
            task = self._tasks.get(op.id)
            total = op.bytes_total if op.bytes_total else None
            if task is None:
                task = self._tasks[op.id] = self._progress.add_task(op_label(op), total=total, op=op)
            self._progress.update(task, completed=op.bytes_done, total=total, op=op)

    def summary(self, ops: Iterable[Operation]) -> None:
        """Print the outcome of each operation, with message and suggestion on failure."""
        for op in ops:
            label = op_label(op)
            if op.status is Status.SUCCESS:
                n = op.retries_total
                extra = f" after {n} {'retry' if n == 1 else 'retries'}" if n else ""
                self.console.print(f"[green]✓[/] {label}: done{extra}", highlight=False)
            elif op.status is Status.PAUSED:
                self.console.print(f"[magenta]‖[/] {label}: paused; run the same command again to resume",
                                   highlight=False)
            else:
                self.console.print(f"[red]✗[/] {label}: {op.status.value}", highlight=False)
                if op.error is not None:
                    self.console.print(f"    {op.error.code}: {op.error.message}", highlight=False,
                                       markup=False)
                    self.console.print(f"    suggestion: {op.error.suggestion}", highlight=False,
                                       markup=False)
                if op.output_tail:
                    self.console.print("    last output:", highlight=False)
                    for line in op.output_tail[-10:]:
                        self.console.print(f"      {line}", highlight=False, markup=False)


class JsonLines:
    """``--json``: one event per line on stdout, flushed as it happens."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def event(self, event: dict[str, Any]) -> None:
        self.stream.write(json.dumps(event, sort_keys=True, default=str) + "\n")
        self.stream.flush()
