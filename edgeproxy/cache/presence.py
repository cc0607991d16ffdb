"""Which objects the index may hold: a filter the workers of a node share, so that a miss is
known without asking SQLite.

Every miss asked the index for the facts of a key it did not hold. Alone, that query takes
15-20 us; inside a worker, between the other steps of requests that evict SQLite's code and
pages from the processor's caches, it took 86-90 us (measured in the server, 3,000 sequential
misses), about 5 % of a miss's CPU. nginx keeps every key in shared memory for the same
reason (``keys_zone``).

The filter is a Bloom filter of one byte per slot in a file every worker maps: a key sets
`PROBES` slots before its facts are written to the index, so a key whose slots are not all
set was never written and is not asked about. Slots are whole bytes, written and never
read-modified-written, so two workers adding at once lose nothing. Nothing is ever removed
(evictions and purges leave their slots set): a stale slot costs one query, as before, and a
filter grown too full is built anew from the index (`filterkeeper`).

A slot missing for a key the index holds (the file was lost in a machine crash, or replaced
while workers ran) makes that object a miss once: fetched again and stored again, never a
wrong byte. The file is built from the index when it is missing, under the index's lock; its
blocks are allocated at once, so a full volume fails its creation (then every lookup asks the
index), never a write into the mapping (which would kill the worker with SIGBUS). A worker
without the filter (it could not be made or mapped) writes no slots: what it stores is a miss
once for the workers that have it.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

import xxhash

from . import index, queries
from .keys import META_PREFIX

log = logging.getLogger("edgeproxy.cache")

__all__ = ["NAME", "PROBES", "UNFILTERED_MAX", "Presence", "build", "open_presence",
           "presence_of", "slots_for"]

NAME = "presence"
PROBES = 3
# One slot per this many bytes of cache, within the bounds: a 64 GiB cache of 64 KiB objects
# (1 M objects) has 8 Mi slots, a false positive rate of about 3 %.
BYTES_PER_SLOT = 8 * 1024
MIN_SLOTS = 64 * 1024
MAX_SLOTS = 8 * 1024 * 1024
# Keys a store remembers while it has no filter, for the filter once it has one (beyond these,
# the objects it stored meanwhile are misses once for the workers with the filter).
UNFILTERED_MAX = 100_000


def slots_for(size_limit: int) -> int:
    """The filter's size for a cache of ``size_limit`` bytes."""
    return max(MIN_SLOTS, min(MAX_SLOTS, size_limit // BYTES_PER_SLOT))


class Presence:
    """The filter, mapped from its file (`open_presence`)."""

    __slots__ = ("_map", "ino", "slots")

    def __init__(self, mapping: mmap.mmap, ino: int) -> None:
        self._map = mapping
        self.slots = len(mapping)
        self.ino = ino  # the file's inode: a filter built anew is another file

    def fill(self) -> float:
        """The share of slots set (a few milliseconds for the largest filter)."""
        return (self.slots - self._map[:].count(0)) / self.slots

    def _positions(self, key: str) -> tuple[int, int, int]:
        # `PROBES` slots from three 42-bit parts of one 128-bit hash
        digest = xxhash.xxh3_128_intdigest(key.encode("utf-8", "surrogatepass"))
        slots = self.slots
        return digest % slots, (digest >> 42) % slots, (digest >> 84) % slots

    def add(self, key: str) -> None:
        """Note that ``key`` may be in the index from now on (before it is written there)."""
        mapping = self._map
        for position in self._positions(key):
            if not mapping[position]:  # (a page only read stays clean)
                mapping[position] = 1

    def may_hold(self, key: str) -> bool:
        """False when ``key`` was never written to the index (then it is not there)."""
        mapping = self._map
        first, second, third = self._positions(key)
        return bool(mapping[first] and mapping[second] and mapping[third])

    def close(self) -> None:
        """Unmap the file."""
        with contextlib.suppress(BufferError):
            self._map.close()


def presence_of(directory: Path, execute: Callable[..., sqlite3.Cursor], slots: int,
                unfiltered: set[str] | None = None) -> Presence | None:
    """The filter of the index in ``directory`` (``execute``: its queries), built from its
    keys by the first worker that finds none, with the keys this store wrote while it had no
    filter (``unfiltered``: emptied once they are in); None when it cannot be had."""
    try:
        with index.locked(directory):
            presence = open_presence(directory, slots,
                                     lambda: queries.keys_with(execute, META_PREFIX))
        if presence is not None and unfiltered:
            for key in unfiltered:
                presence.add(key)
            unfiltered.clear()
        return presence
    except OSError as exc:  # the lock's file (a full volume, a read-only one)
        log.warning("the key filter in %s cannot be had (%s): lookups ask the index",
                    directory, exc)
        return None


def open_presence(directory: Path, slots: int,
                  keys: Callable[[], Iterable[str]]) -> Presence | None:
    """The filter in ``directory``, built from ``keys()`` (every key in the index) if its
    file is missing; None when it cannot be made or mapped (every lookup then asks the
    index). Call it under the index's lock, which keeps two workers from building it."""
    path = directory / NAME
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return build(path, slots, keys)
    except OSError as exc:
        log.warning("the key filter %s cannot be opened (%s): lookups ask the index", path, exc)
        return None
    try:
        size = os.fstat(fd).st_size
        if size < MIN_SLOTS:  # cut short (a full volume as it was made): made again
            os.close(fd)
            return build(path, slots, keys)
        return Presence(mmap.mmap(fd, size), os.fstat(fd).st_ino)
    except OSError as exc:
        log.warning("the key filter %s cannot be mapped (%s): lookups ask the index", path, exc)
        return None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def build(path: Path, slots: int, keys: Callable[[], Iterable[str]]) -> Presence | None:
    """A new filter holding ``keys()``, put in place whole (by rename) once it is filled."""
    temp = path.with_name(f"{path.name}.{os.getpid()}.new")
    try:
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        log.warning("the key filter %s cannot be made (%s): lookups ask the index", path, exc)
        return None
    presence = None
    try:
        os.posix_fallocate(fd, 0, slots)  # blocks now: no SIGBUS from a full volume later
        presence = Presence(mmap.mmap(fd, slots), os.fstat(fd).st_ino)
        count = 0
        for key in keys():
            presence.add(key)
            count += 1
        os.replace(temp, path)
        log.info("key filter %s built: %d keys in %d slots", path, count, slots)
        return presence
    except (OSError, sqlite3.Error) as exc:
        if presence is not None:
            presence.close()
        with contextlib.suppress(OSError):
            temp.unlink()
        log.warning("the key filter %s cannot be made (%s): lookups ask the index", path, exc)
        return None
    finally:
        os.close(fd)
