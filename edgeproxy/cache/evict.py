"""Eviction for room on the cache's volume: the least recently stored slices go first, and
a slice's file goes before its index row, so a full volume gets room before SQLite has to
write (a reader that finds the row but no file has a miss, never a wrong byte)."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from . import index
from .space import Volume

log = logging.getLogger("edgeproxy.cache")

_T = TypeVar("_T")


class Evictor:
    """Makes room on ``volume`` in the index ``cache()`` returns (it changes on a reopen)
    by evicting slices (index keys starting with ``prefix``); ``forget_files`` closes this
    process's kept descriptors of evicted files."""

    def __init__(self, volume: Volume, cache: Callable[[], Any],
                 forget_files: Callable[[], None], prefix: str) -> None:
        self.volume = volume
        self.directory = volume.directory
        self._cache = cache
        self._forget_files = forget_files
        self.prefix = prefix  # of the index keys of slices: what is evicted

    def make_room(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more may be written above the volume's reserve, evicting if
        need be (never raises: a failure to evict is no room)."""
        volume = self.volume
        try:
            if volume.shortfall(nbytes) and volume.shortfall(nbytes, fresh=True):
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
            rows = index.oldest(cache, self.prefix)
            if not rows:
                break
            evicted = []
            for row in rows:
                if freed >= nbytes:
                    break
                freed += self.unlink(row[1]) if row[1] else row[2]
                evicted.append(row)
            self.retry_full(lambda: index.delete_rows(cache, evicted))  # noqa: B023
        self._forget_files()
        self.volume.evicted()
        log.debug("evicted %d bytes of slices from %s to keep %d bytes free", freed,
                  self.directory, self.volume.reserve())
        return freed

    def unlink_files(self, where: str, args: tuple[Any, ...]) -> None:
        """Delete the value files of the rows matching ``where`` (ahead of the rows)."""
        for (filename,) in index.sql(self._cache())(
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
