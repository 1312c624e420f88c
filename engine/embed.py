"""The engine outside trio: in an asyncio program or in synchronous code (SPEC 12.1).

``asyncio_engine`` runs the engine as a trio guest of the running asyncio
loop (same thread); ``threaded_engine`` runs it in a background thread. Both
hand out an object with `Engine`'s methods under the same names and results
(``async`` in asyncio, blocking in threads) and shut the engine down cleanly
when the block is left::

    async with asyncio_engine(state_dir=..., settings=...) as eng:
        op = await eng.submit(DownloadSpec(url=..., dest=...))
        async for event in eng.subscribe():
            ...

    with threaded_engine(state_dir=..., settings=...) as eng:
        op = eng.submit(DownloadSpec(url=..., dest=...))
        final = eng.wait(op.id, timeout=60)
"""

from ._embed._host import EngineBroken as EngineBroken
from ._embed._host import EngineClosed as EngineClosed
from ._embed._asyncio import AsyncioEngine as AsyncioEngine
from ._embed._asyncio import AsyncioSubscription as AsyncioSubscription
from ._embed._asyncio import asyncio_engine as asyncio_engine
from ._embed._thread import ThreadedEngine as ThreadedEngine
from ._embed._thread import ThreadedSubscription as ThreadedSubscription
from ._embed._thread import threaded_engine as threaded_engine

__all__ = [
    "AsyncioEngine",
    "AsyncioSubscription",
    "EngineBroken",
    "EngineClosed",
    "ThreadedEngine",
    "ThreadedSubscription",
    "asyncio_engine",
    "threaded_engine",
]
