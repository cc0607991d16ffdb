"""Freed heap memory handed back to the system now and then (glibc's ``malloc_trim``).

A node streams large bodies in chunks of a few hundred KiB. glibc serves such chunks from its
heap once its dynamic mmap threshold has risen past them, and keeps the pages of freed ones:
after a burst of large downloads a worker's RSS stays at its peak for good. Lowering the
threshold instead halves large-body throughput (every chunk an mmap and page faults), so the
pages are returned between bursts: ``malloc_trim(0)`` releases the free pages of every arena.
Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

__all__ = ["HeapTrim", "malloc_trim"]

log = logging.getLogger("edgeproxy.server")


def _libc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl, macOS)
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _libc_trim()


def malloc_trim() -> bool:
    """Return free heap pages to the system; whether this C library can."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class HeapTrim:
    """Calls `malloc_trim` on the running loop after each ``interval`` seconds in which
    ``activity()`` (a count of requests answered) did not move: between bursts, never in
    the middle of one, where the pages would only be faulted in again."""

    def __init__(self, interval: float, activity: Callable[[], int]) -> None:
        self.interval = interval
        self.activity = activity
        self.trims = 0
        self._seen = -1
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Begin (needs the running loop); nothing when the interval is 0 or the C library
        has no trim."""
        if self.interval > 0 and _TRIM is not None:
            self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _tick(self) -> None:
        seen = self.activity()
        if seen == self._seen and malloc_trim():
            self.trims += 1
        self._seen = seen
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        """No more trims."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
