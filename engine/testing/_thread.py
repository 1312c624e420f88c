"""Serving a loopback test server from a thread of its own, for code outside trio.

`FaultServer` and `HubServer` both offer ``with server.run_in_thread() as url``;
this is the one implementation behind them.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio

__all__ = ["serve_in_thread"]


@contextlib.contextmanager
def serve_in_thread(
    listen: Callable[[], Awaitable[list[trio.SocketListener]]],
    handle: Callable[[trio.SocketStream], Awaitable[None]],
    base_url: Callable[[], str],
    *,
    name: str,
) -> Iterator[str]:
    """Serve from a daemon thread running its own ``trio.run``; yields the base URL.

    ``base_url`` is asked once the listeners are bound (a port of 0 is known
    only then). Leaving the block cancels the server and joins the thread; an
    error that stopped the server is raised there.
    """
    handoff: queue.Queue[Any] = queue.Queue()
    failure: list[BaseException] = []

    async def run() -> None:
        listeners = await listen()
        with trio.CancelScope() as scope:
            handoff.put((trio.lowlevel.current_trio_token(), scope, base_url()))
            await trio.serve_listeners(handle, listeners)

    def target() -> None:
        try:
            trio.run(run)
        except BaseException as exc:
            failure.append(exc)
            handoff.put(None)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    started = handoff.get()
    if started is None:
        thread.join()
        raise failure[0]
    token, scope, url = started
    try:
        yield url
    finally:
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join()
    if failure:
        raise failure[0]
