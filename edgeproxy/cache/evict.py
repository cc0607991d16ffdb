"""Room on the cache's volume: whether an object can be stored at all, and eviction. The
least recently stored slices go first, and a slice's file goes before its index row, so a full
volume gets room before SQLite has to write (a reader that finds the row but no file has a
miss, never a wrong byte)."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from . import index, queries
from .space import NoRoom, Volume

log = logging.getLogger("edgeproxy.cache")

_T = TypeVar("_T")

# How stale the reading of the index's volume may be before a write reads it again.
VOLUME_PERIOD = 1.0
# Writes of at least this many bytes (slice files) ask the volume for room with a fresh reading.
FRESH_MIN = 64 * 1024


class SizeWatch:
    """Whether the index may have grown past ``cache_size`` (then it is culled).

    Reading the volume is a query of its own, once per group commit a few percent of a miss.
    It is read at most every `VOLUME_PERIOD` seconds, and in between estimated from the bytes
    this process wrote since. Other workers' writes are seen at the next reading: the index
    is over its limit by at most what the node stores in that time."""

    def __init__(self, cache: Callable[[], Any], size_limit: int) -> None:
        self._cache = cache
        self.size_limit = size_limit
        self.estimate = 0
        self.read_at = -VOLUME_PERIOD

    def over(self, added: int) -> bool:
        """After ``added`` more bytes were written: whether the index is over its limit."""
        self.estimate += added
        now = time.monotonic()
        if now - self.read_at < VOLUME_PERIOD and self.estimate <= self.size_limit:
            return False
        self.read_at = now
        self.estimate = int(self._cache().volume())
        return self.estimate > self.size_limit


class Evictor:
    """Makes room on ``volume`` in the index ``cache()`` returns (it changes on a reopen)
    by evicting slices (index keys starting with ``prefix``); ``forget_files`` closes this
    process's kept descriptors of evicted files, ``on_fault`` records a storage fault."""

    def __init__(self, volume: Volume, cache: Callable[[], Any], *, prefix: str,
                 size_limit: int, forget_files: Callable[[], None],
                 on_fault: Callable[[BaseException], None]) -> None:
        self.volume = volume
        self.directory = volume.directory
        self.prefix = prefix
        self.size_limit = size_limit
        self._cache = cache
        self._forget_files = forget_files
        self._on_fault = on_fault

    def admits(self, key: str, length: int) -> bool:
        """Whether an object of ``length`` bytes can be stored whole: within ``cache_size``,
        and above the volume's reserve once everything else is evicted. One larger than the
        volume allows is a storage fault (``no_space``); either passes through unstored."""
        if length > self.size_limit:
            log.info("%s (%d bytes) is larger than cache_size: passed through", key, length)
            return False
        try:
            if length <= self.volume.free() - self.volume.reserve():
                return True  # fits as things are (the common case: no index query)
            usable = self.volume.usable(int(self._cache().volume()))
        except index.FAULTS as exc:
            self._on_fault(exc)
            return False
        if length <= usable:
            return True
        self._on_fault(NoRoom(f"{key} ({length} bytes) does not fit on the cache's volume "
                              f"(at most {usable} bytes usable): passed through, not stored"))
        return False

    def no_room(self, nbytes: int) -> NoRoom:
        """The error of a write that `make_room` refused."""
        return NoRoom(f"no room for {nbytes} bytes above the reserve of "
                      f"{self.volume.reserve()} bytes on the cache's volume "
                      f"({self.volume.free()} free)")

    def make_room(self, nbytes: int, fresh: bool = False) -> bool:
        """Whether ``nbytes`` more may be written above the volume's reserve, evicting if
        need be (never raises: a failure to evict is no room); ``fresh``: judged by a new
        reading of the volume whatever the size."""
        volume = self.volume
        # A slice file's room is asked of the kernel each time (a statvfs per file): a reading
        # taken while an earlier file was still being written forgot what that file was yet
        # to take, and a fill then met a full volume after room had been made for it. Rows
        # are counted against the last reading (`Volume.spend`).
        fresh = fresh or nbytes >= FRESH_MIN
        try:
            if volume.shortfall(nbytes, fresh=fresh) and \
                    (fresh or volume.shortfall(nbytes, fresh=True)):  # (once read anew)
                # evict a little more than needed: not again at the very next slice
                self.evict(volume.shortfall(nbytes) + volume.reserve() // 8)
                if volume.shortfall(nbytes, fresh=True):
                    return False
        except index.FAULTS as exc:
            log.warning("could not make room in %s: %s", self.directory, exc)
            return False
        volume.spend(nbytes)
        return True

    def evict(self, nbytes: int) -> int:
        """Evict the least recently stored slices until about ``nbytes`` are freed; the bytes
        freed."""
        cache = self._cache()
        freed = 0
        while freed < nbytes:
            rows = queries.oldest(cache, self.prefix)
            if not rows:
                break
            evicted = []
            for row in rows:
                if freed >= nbytes:
                    break
                freed += self.unlink(row[1]) if row[1] else row[2]
                evicted.append(row)
            self.retry_full(lambda: queries.delete_rows(cache, evicted))  # noqa: B023
        self._forget_files()
        self.volume.evicted()
        log.debug("evicted %d bytes of slices from %s to keep %d bytes free", freed,
                  self.directory, self.volume.reserve())
        return freed

    def culled(self) -> None:
        """The index's size bound removed entries (diskcache's cull, `GroupCommit`): their
        slice files may be open in any worker, where they hold their space until closed (an
        edge on a 20 MiB volume with an 8 MiB cache filled it with evicted files held open,
        and its fills failed for want of space), so every worker lets go, as after `evict`."""
        self._forget_files()
        self.volume.evicted()

    def unlink_files(self, where: str, args: tuple[Any, ...]) -> None:
        """Delete the value files of the rows matching ``where`` (ahead of the rows)."""
        for (filename,) in queries.sql(self._cache())(
                f"SELECT filename FROM Cache WHERE {where} AND filename IS NOT NULL", args):
            self.unlink(filename)

    def unlink(self, filename: str) -> int:
        """Delete one value file ahead of its index row; the bytes freed."""
        path = os.path.join(self.directory, filename)
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except OSError:
            return 0
        return size

    def retry_full(self, operation: Callable[[], _T]) -> _T:
        """``operation()``, once more after releasing the ballast if the volume was full."""
        try:
            return operation()
        except (sqlite3.Error, OSError) as exc:
            if not index.is_full(exc) or not self.volume.release_ballast():
                raise
        return operation()
