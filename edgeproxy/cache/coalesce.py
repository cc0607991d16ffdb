"""Collapsed forwarding: one upstream request per key (facts) and per slice (bytes).

groupcache's ``Group.Do`` and Varnish's busy objects, in one place. ``join(key, index, ...)``
answers where the bytes of slice ``index`` come from: the store, a fill in this process, a
fill in another worker process, or a new flight that this call leads. ``flight_for(key)``
does the same for an object's facts (a miss or a revalidation).

Across worker processes a fill is claimed by the file it writes into: a name derived from the
key and slice, created and ``flock``-ed by the filler. Other workers open that name and follow
the file as it grows while the lock is held; the kernel drops the lock when a process dies,
so a crashed leader never blocks anyone, and no index write is needed to announce a fill.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import FillAborted
from .fills import Flight, ForeignFill, SliceFill, lock_held, poll
from .sources import FillSource, ForeignSource, Source, StoredSource
from .store import CacheStore, ObjectMeta

# A slice can be claimed by another worker between our look and our claim; look again this
# many times before giving up.
JOIN_ATTEMPTS = 3


class Claims:
    """Cross-process claims on slice fills, as locked files in the cache's fill directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, key: str, index: int) -> Path:
        """The file a fill of this slice writes into, whichever worker runs it."""
        name = hashlib.blake2b(f"{index}\0{key}".encode(), digest_size=16).hexdigest()
        return self.directory / name

    def take(self, key: str, index: int) -> tuple[Path, int] | None:
        """Claim the slice: its file, created empty and locked; None if another worker has it."""
        path = self.path(key, index)
        for _attempt in range(JOIN_ATTEMPTS):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False  # a leader committed (renamed) it between our open and our lock
            if same:
                os.ftruncate(fd, 0)  # leftovers of a leader that died
                return path, fd
            os.close(fd)
        return None

    def foreign(self, key: str, index: int) -> int | None:
        """A descriptor on another worker's live fill of this slice, or None."""
        try:
            fd = os.open(self.path(key, index), os.O_RDONLY)
        except FileNotFoundError:
            return None
        if lock_held(fd):
            return fd
        os.close(fd)
        return None

    def held_elsewhere(self, key: str, index: int) -> bool:
        """Whether another worker is filling this slice right now."""
        fd = self.foreign(key, index)
        if fd is None:
            return False
        os.close(fd)
        return True


class Coalescer:
    """The registry of flights and fills of one node process."""

    def __init__(self, store: CacheStore, wait_timeout: float) -> None:
        self.store = store
        self.claims = Claims(store.temp_dir)
        self.wait_timeout = wait_timeout
        self.flights: dict[str, Flight] = {}  # key → the flight whose facts are awaited
        self.fills: dict[tuple[str, int], SliceFill] = {}

    # --- the filler's side ---

    def claim(self, flight: Flight, index: int) -> SliceFill | None:
        """Register ``flight`` as the filler of a slice; None if someone fills it already."""
        if (flight.key, index) in self.fills:
            return None
        taken = self.claims.take(flight.key, index)
        if taken is None:
            return None
        fill = SliceFill(flight.key, index, taken[0], taken[1], flight)
        self.fills[(flight.key, index)] = fill
        flight.fills[index] = fill
        return fill

    def release(self, fill: SliceFill) -> None:
        """Unregister a fill (committed, failed or discarded) and drop its claim."""
        if self.fills.get((fill.key, fill.index)) is fill:
            del self.fills[(fill.key, fill.index)]
        fill.release()

    def forget(self, predicate: Callable[[str], bool]) -> None:
        """Purge: fills in flight for matching keys finish for their followers, unstored."""
        for (key, _index), fill in self.fills.items():
            if predicate(key):
                fill.discard = True
        for key in [k for k in self.flights if predicate(k)]:
            del self.flights[key]

    # --- the reader's side ---

    def flight_for(self, key: str) -> Flight | None:
        """The flight in progress whose facts a miss on ``key`` can wait for."""
        flight = self.flights.get(key)
        if flight is not None and flight.ended.done():
            del self.flights[key]
            return None
        return flight

    async def join(self, key: str, index: int, version: str | None,
                   lead: Callable[[int], Flight | None]) -> Source:
        """Where slice ``index`` of ``key`` (at ``version``) is read from.

        Readers on a fill are taken synchronously, before any await, so a fill cannot finish
        and leave between our look and our read. ``lead(index)`` starts a flight for it.
        """
        for _attempt in range(JOIN_ATTEMPTS):
            fill = self.fills.get((key, index))
            if fill is not None and fill.error is None and \
                    (version is None or fill.flight.version == version):
                return FillSource(fill)
            if version is not None:
                body = self.store.get_slice(key, version, index)
                if body is not None:
                    return StoredSource(body)
                fd = self.claims.foreign(key, index)
                if fd is not None:
                    return ForeignSource(ForeignFill(
                        fd, is_stored=lambda: self.store.has_slice(key, version, index)))
            flight = lead(index)
            if flight is not None and index in flight.fills:
                return FillSource(flight.fills[index])
            if flight is not None:
                await flight.headers  # the flight answered without this slice (304, direct)
        raise FillAborted(f"slice {index} of {key} could not be joined")

    async def foreign_facts(self, key: str, index: int, since: float) -> ObjectMeta | None:
        """Wait for the facts another worker's fill of ``key`` stores (newer than ``since``).

        None when that worker stopped without storing any (uncacheable, failed): then the
        caller fetches itself.
        """
        found: list[ObjectMeta] = []

        def ready() -> bool:
            meta = self.store.get_meta(key)
            if meta is not None and meta.freshness.response_time > since:
                found.append(meta)
                return True
            return not self.claims.held_elsewhere(key, index)

        await poll(ready, self.wait_timeout, "the worker filling this object")
        return found[0] if found else None

    def close(self) -> None:
        """Drop every claim (shutdown)."""
        for fill in list(self.fills.values()):
            with contextlib.suppress(OSError):
                fill.release()
        self.fills.clear()
