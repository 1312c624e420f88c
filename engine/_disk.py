"""How the engine waits for the disk: a dependency the caller chooses.

An ``fsync`` of a multi-GB ``.part`` or of a batch of snapshots can take
seconds. By default that work runs in helper threads (`THREADS`), so the
event loop, and with it every user control, keeps running.

A test on trio's autojump clock wants the opposite: a task waiting for a
thread counts as idle there, so the clock would jump to the next deadline and
fire timeouts that real time never would. Such a test hands the engine
`INLINE` (``open_engine(disk=INLINE)``), the way trio leaves the choice of
clock to whoever calls ``trio.run``. The product never asks which one it got.

Two shapes of work go through here:

- `DiskWork.run`: await one blocking call (the snapshot batch, the statistics
  file, hashing a file already on disk);
- `DiskWork.start`: begin one blocking call and return at once; the caller
  polls `Background.done` (the ``.part``'s periodic fsync, which overlaps the
  transfer instead of pausing it).

May import: trio, attrs. Nothing else of the engine.
"""

from __future__ import annotations

import threading
from typing import Callable, Protocol, TypeVar

import attrs
import trio

__all__ = ["INLINE", "THREADS", "Background", "DiskWork"]

T = TypeVar("T")


@attrs.define(eq=False)
class Background:
    """One blocking call started by `DiskWork.start`."""

    done: threading.Event = attrs.field(factory=threading.Event)
    error: BaseException | None = None
    _thread: threading.Thread | None = None

    def join(self) -> None:
        """Block until the call has finished (a no-op when it ran inline)."""
        if self._thread is not None:
            self._thread.join()


class DiskWork(Protocol):
    """Where blocking file-system calls run."""

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` and return its result (or raise its exception)."""
        ...

    def start(self, fn: Callable[[], object], *, name: str) -> Background:
        """Begin ``fn``; its exception is kept in `Background.error`."""
        ...


def _call_into(bg: Background, fn: Callable[[], object]) -> None:
    try:
        fn()
    except BaseException as exc:  # kept for the poller, never lost
        bg.error = exc
    finally:
        bg.done.set()


@attrs.frozen
class _Threads:
    """The default: each call in a helper thread."""

    async def run(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn)

    def start(self, fn: Callable[[], object], *, name: str) -> Background:
        bg = Background()
        thread = threading.Thread(target=_call_into, args=(bg, fn), name=name, daemon=True)
        bg._thread = thread
        thread.start()
        return bg

    def __repr__(self) -> str:
        return "THREADS"


@attrs.frozen
class _Inline:
    """Each call now, on the calling thread (for tests on an autojump clock)."""

    async def run(self, fn: Callable[[], T]) -> T:
        await trio.lowlevel.checkpoint()
        return fn()

    def start(self, fn: Callable[[], object], *, name: str) -> Background:
        bg = Background()
        _call_into(bg, fn)
        return bg

    def __repr__(self) -> str:
        return "INLINE"


THREADS: DiskWork = _Threads()
INLINE: DiskWork = _Inline()
