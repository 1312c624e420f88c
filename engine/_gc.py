"""A garbage-collector policy for processes that hold thousands of operations.

CPython's full (generation 2) collection walks every tracked object. With
10,000 live operations that is a few million objects and 100-600 ms with the
event loop stopped, several times a minute under load: the whole tail of
the control latency. Reference counting frees almost everything this engine
lets go of, so full collections can be much rarer without memory growing
much (measured in ``benchmarks/bench_load.py``: gen-2 pauses gone, peak RSS
+15%).

`tune_gc` is applied by the ``recovery`` command (all its subcommands). A
library must not change the host process's collector on its own, so an
embedding launcher calls it itself if it wants it.
"""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]

#: generation-2 threshold (CPython's default is 10)
FULL_COLLECTION_EVERY = 1000


def tune_gc() -> tuple[int, int, int]:
    """Make full collections rare; return the previous thresholds."""
    previous = gc.get_threshold()
    gen0, gen1, _ = previous
    gc.set_threshold(gen0, gen1, FULL_COLLECTION_EVERY)
    return previous
