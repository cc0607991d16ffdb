"""Group commit for the cache index: small writes of one process, one SQLite transaction.

A miss used to cost a write transaction of its own (two rows, three indexes, the WAL frames
of every page touched, the eviction check), about a fifth of a tier's CPU per miss. Writes of
facts and of slices (inline bytes, or a finished fill file that the commit moves into place)
are now held in memory for a few milliseconds and committed together; reads in this process
see them at once (`get`; a slice file read before its commit is committed first, as the move
changes its ctime). Other worker processes learn of an
object only when it is committed, so the claims of its fills are released only then
(`after_commit`): a worker that waited on a claim always finds the object stored.

A process that dies before a commit loses those entries, which is a cache miss later, never a
wrong byte: nothing of a pending entry reaches the disk half-written, and a pending slice file
is still a fill's temp file (swept at start-up). A batch lost to a storage fault, or dropped by
a purge, removes its files.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import diskcache

from . import queries
from .index import AdoptFile

log = logging.getLogger("edgeproxy.cache")

# How long a write may wait for company, and how many writes make a commit at once.
COMMIT_DELAY = 0.010
# How soon writes that other workers wait on are committed (`GroupCommit.soon`).
SOON_DELAY = 0.002
COMMIT_BATCH = 256
JOURNAL_ROOM = 256 * 1024  # besides the values: room for the index pages a batch rewrites
ROW_BYTES = 512  # what a row of facts (an encoded `ObjectMeta`) adds to the index, about
_INSERT = ("INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count,"
           " tag, size, mode, filename, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


@dataclass(frozen=True)
class IfStill:
    """A write that goes in only if the value stored under its key then still passes
    ``test`` (asked in the commit's own transaction): a refresh of facts must not put back an
    older version that another worker replaced, or an object purged, meanwhile."""

    value: Any
    test: Callable[[Any], bool]


class GroupCommit:
    """Pending index writes (key → value, tag) of this process, committed together."""

    def __init__(self, cache: diskcache.Cache, on_fault: Callable[[BaseException], None]) -> None:
        self.cache = cache
        self.on_fault = on_fault
        # a transaction went through: the keys it wrote, and those an `IfStill` refused
        self.on_commit: Callable[[list[str], list[str]], None] = lambda keys, refused: None
        # a transaction failed with this error: True if room was made for ~n bytes (retry)
        self.on_full: Callable[[BaseException, int], bool] = lambda exc, nbytes: False
        # after a transaction of about n bytes: whether the index is over its size limit
        self.over_limit: Callable[[int], bool] = \
            lambda nbytes: bool(self.cache.volume() > self.cache.size_limit)
        # the size bound removed entries (and their slice files)
        self.on_culled: Callable[[], None] = lambda: None
        self.pending: dict[str, tuple[Any, str]] = {}
        self._after: list[Callable[[], None]] = []
        self._timer: asyncio.TimerHandle | None = None

    def put(self, key: str, value: Any, tag: str) -> None:
        """Store ``value`` under ``key`` at the next commit (now, outside an event loop)."""
        old = self.pending.get(key)
        if isinstance(value, IfStill) and old is not None:
            pending = old[0]
            ahead = pending.value if isinstance(pending, IfStill) else pending
            if not value.test(ahead):
                self.on_commit([], [key])  # what this process wrote since decides
                return
            # over a conditional write, its condition stays: the index decides for both
            value = IfStill(value.value, pending.test) if isinstance(pending, IfStill) \
                else value.value
        if old is not None and isinstance(old[0], AdoptFile) and \
                (not isinstance(value, AdoptFile) or old[0].path != value.path):
            old[0].discard()  # replaced before its row was written
        self.pending[key] = (value, tag)
        if len(self.pending) >= COMMIT_BATCH:
            self.commit()
            return
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.commit()  # no loop (a script, a test): write through
                return
            self._timer = loop.call_later(COMMIT_DELAY, self.commit)

    def soon(self) -> None:
        """Commit what is pending within `SOON_DELAY`: other workers wait on it. Not at
        once: the answer whose headers brought it sends its first bytes before a transaction
        takes the loop (committed on the spot, it was ~0.9 of the 3 ms a cold 16 MiB miss
        took to its first byte)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.commit()  # no loop (a script, a test): write through
            return
        if self._timer is not None:
            if self._timer.when() <= loop.time() + SOON_DELAY:
                return
            self._timer.cancel()
        self._timer = loop.call_later(SOON_DELAY, self.commit)

    def get(self, key: str) -> tuple[bool, Any]:
        """(True, value) for a pending write of ``key``, else (False, None)."""
        entry = self.pending.get(key)
        if entry is None:
            return False, None
        return True, entry[0].value if isinstance(entry[0], IfStill) else entry[0]

    def drop(self, predicate: Callable[[str], bool]) -> int:
        """Forget pending writes whose tag matches (a purge); how many."""
        gone = [k for k, (_v, tag) in self.pending.items() if predicate(tag)]
        _discard([self.pending.pop(key)[0] for key in gone])
        return len(gone)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once what is pending now is committed (at once if nothing is)."""
        if self.pending:
            self._after.append(callback)
        else:
            callback()

    def commit(self) -> None:
        """Write everything pending in one transaction, then run the waiting callbacks.

        A storage fault loses the batch (those objects are fetched again later) and is
        reported like any other; the callbacks run either way.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self.pending = self.pending, {}
        callbacks, self._after = self._after, []
        try:
            if batch:
                self._write(batch)
        except (sqlite3.Error, OSError) as exc:
            _discard([value for value, _tag in batch.values()])
            self.on_fault(exc)
        finally:
            for callback in callbacks:
                try:
                    callback()
                except Exception:  # one failed release must not keep the others' claims
                    log.exception("after-commit callback failed")

    def _write(self, batch: dict[str, tuple[Any, str]]) -> None:
        nbytes = sum(_size(v) for v, _tag in batch.values())
        try:
            refused = self._transaction(batch)
        except (sqlite3.Error, OSError) as exc:
            if not self.on_full(exc, nbytes + JOURNAL_ROOM):
                raise
            refused = self._transaction(batch)  # the volume was full: once more, now there is room
        self.on_commit([key for key in batch if key not in refused], refused)
        if self.over_limit(nbytes) and self.cache.cull():
            self.on_culled()

    def _transaction(self, batch: dict[str, tuple[Any, str]]) -> list[str]:
        """One transaction: keys new to the index go in with one statement (most of a batch:
        misses), keys stored before through diskcache's own ``set``, which removes the file
        of the value they replace."""
        with self.cache.transact():
            cache = self.cache  # (the index opened just now, if it was unavailable till then)
            execute = cache._sql
            present = queries.present(execute, list(batch))
            rows = []
            refused: list[str] = []
            now = time.time()
            for key, (value, tag) in batch.items():
                if isinstance(value, IfStill):
                    if key not in present or not value.test(cache.get(key)):
                        refused.append(key)
                        continue
                    value = value.value
                if key in present:
                    cache.set(key, value, tag=tag)
                    continue
                size, mode, filename, db_value = cache.disk.store(value, False, key=key)
                # the columns and values diskcache's `Cache._row_insert` writes
                rows.append((key, 1, now, None, now, 0, tag, size, mode, filename, db_value))
            cache._con.executemany(_INSERT, rows)
        return refused


def _size(value: Any) -> int:
    if isinstance(value, IfStill):
        value = value.value
    if isinstance(value, bytes):
        return len(value)
    return value.size if isinstance(value, AdoptFile) else ROW_BYTES


def _discard(values: list[Any]) -> None:
    """Remove the files of slices whose rows will never be written."""
    for value in values:
        if isinstance(value, AdoptFile):
            value.discard()
