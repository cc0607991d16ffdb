"""Python's cyclic garbage collector, settled for a server process once it has started.

A worker holds some 100,000 objects from its imports and startup that live as long as it
does. Every full (generation 2) collection scanned them all: 20-60 ms with the event loop
stopped, which in a stampede lands on every request in flight (leaders' first bytes came in
clusters a collection apart). Once startup is done they are moved out of the collector's
sight (``gc.freeze``), so a full collection scans only what requests made since, and the
youngest generation is collected after more allocations than the default 700: a request
makes dozens of objects, nearly all freed by reference counting before any collection.

Only for a process that is just a server (`server.run_node`): a frozen object is never
collected, so tests that start and stop many apps in one process leave it alone.
"""

from __future__ import annotations

import gc

__all__ = ["settle"]

YOUNG_THRESHOLD = 20_000  # allocations (less deallocations) between young collections


def settle() -> None:
    """Collect once, freeze what survives startup, and space out young collections."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
