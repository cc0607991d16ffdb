"""The disk cache: object facts and body slices behind one small interface.

diskcache keeps the index (SQLite) and does size-bounded eviction. Object facts (`ObjectMeta`)
and body slices are separate entries: a slice evicted on its own is simply fetched again. Slice
bodies are written by a fill into a temp file in the cache directory and *adopted* by rename on
commit — atomic, no copy, and a fill killed midway leaves only a temp file that is never served
(and is swept at start-up).

Every slice carries an xxh3 checksum, computed as its fill wrote it and kept in its index
entry; a slice whose bytes fail it is dropped, never served (see `checksum`).

Besides ``cache_size``, the store keeps a free-space reserve on its volume (`space.Volume`):
before a slice file is written, the least recently stored slices are evicted until it fits
above the reserve, and what cannot fit passes through unstored. Evictions and purges delete
slice files before index rows, so a full volume gets room before SQLite has to write. An index
that cannot be used at start is set aside (`index.open_checked`); one that cannot be opened at
all (a full volume) leaves the node passing requests through until it can.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import diskcache

from ..config import FreeSpace
from ..errors import StorageFault
from ..quietlog import QuietLog
from . import index, queries
from .batch import GroupCommit, IfStill
from .checksum import INLINE_HEADER, carried, seal, unseal
from .evict import Evictor, SizeWatch
from .index import AdoptFile, reading, writing
from .keys import META_PREFIX, SLICE_PREFIX, meta_key, slice_key, slice_of, tag_of, variant_key
from .meta import ObjectMeta, decode, encode
from .presence import UNFILTERED_MAX, presence_of, slots_for
from .scrubreads import ScrubReads
from .slicefiles import KeptFile, SliceFile, SliceFiles
from .space import Volume

log = logging.getLogger("edgeproxy.cache")

# Bodies smaller than this live inside the SQLite index: one query serves a thumbnail, no
# open()/read()/close() of a file on the hit path.
INLINE_MAX = 32 * 1024
TEMP_DIR = "fills"


SliceBody = bytes | SliceFile


# How long a node reports itself degraded after a storage fault (a successful write to the
# index ends it sooner).
DEGRADED_FOR = 30.0
DEFAULT_MIN_FREE = FreeSpace(5.0, 256 * 1024**2)

class CacheStore(ScrubReads):
    """Object facts and slices of one node's disk cache (process- and thread-safe).

    Storage faults (a full disk, an I/O error, a broken index) never fail a request: reads
    answer "not stored", writes raise `StorageFault` for the caller to go on without storing,
    and the node reports itself degraded for a while (`degraded`).
    """

    def __init__(self, directory: Path, size_limit: int,
                 min_free: FreeSpace = DEFAULT_MIN_FREE) -> None:
        self.last_fault = 0.0
        self.faults = 0  # how many so far
        self._faults_log = QuietLog(log)  # a full volume faults every fill
        self.last_write = 0.0  # when a slice was last stored
        self.on_fault: Callable[[str], None] = lambda reason: None  # with `fault_reason`
        # a stored slice failed its checksum and was dropped: (key, index, why)
        self.on_corrupt: Callable[[str, int, str], None] = lambda key, index, why: None
        # its facts were committed (True), or a refresh of them was refused (`IfStill`)
        self.on_facts: Callable[[str, bool], None] = lambda key, written: None
        self.directory = directory
        self.size_limit = size_limit
        self.temp_dir = directory / TEMP_DIR
        self._waiting = itertools.count()  # names of finished fill files awaiting a commit
        index.prepare_directory(directory)
        self.files = SliceFiles.on_volume(directory)  # slice files this worker keeps open
        self.space = Volume(directory, min_free)
        # room on the volume: eviction, and whether an object can be stored at all
        self.room = Evictor(self.space, lambda: self._cache, prefix=SLICE_PREFIX,
                            size_limit=size_limit, forget_files=self.forget_files,
                            on_fault=self.fault)
        self._evictions = self.space.evictions()
        try:
            cache: Any = self._open()
        except (sqlite3.Error, OSError) as exc:
            log.error("the cache index in %s cannot be opened (%s): requests pass through "
                      "until it can", directory, exc)
            self.fault(exc)
            cache = index.Unavailable(self._open, self._reopened, exc)
        self._cache = cache
        self.presence = None if isinstance(cache, index.Unavailable) else presence_of(
            directory, queries.sql(cache), slots_for(size_limit))
        self._unfiltered: set[str] = set()  # keys written while the filter was not to be had
        self._batch = GroupCommit(self._cache, self.fault)
        self._batch.on_commit = self._committed
        self._batch.on_full = lambda exc, nbytes: index.is_full(exc) and self.room.make_room(nbytes)
        self._size = SizeWatch(lambda: self._cache, size_limit)
        self._batch.over_limit = self._size.over
        self._batch.on_culled = self.room.culled
        with contextlib.suppress(OSError):
            self.space.free(fresh=True)  # a first reading: makes the ballast if there is room

    def _open(self) -> diskcache.Cache:
        """The index, checked (an unusable one set aside); on a full volume the ballast
        goes first."""
        self.temp_dir.mkdir(exist_ok=True)
        return self.room.retry_full(lambda: index.open_checked(
            self.directory, lambda: index.new_cache(self.directory, self.size_limit,
                                                    index.AdoptingDisk, INLINE_MAX)))

    def _reopened(self, cache: diskcache.Cache) -> None:
        self._cache = self._batch.cache = cache
        # (the transaction reopening it may be writing the keys written without a filter)
        self.presence = presence_of(self.directory, queries.sql(cache),
                                    slots_for(self.size_limit), self._unfiltered)

    def fault(self, exc: BaseException) -> None:
        """Record a storage fault (logged, counted by reason, and reported by /healthz until
        a write succeeds again, or for a while)."""
        self.last_fault = time.time()
        self.faults += 1
        reason = index.fault_reason(exc)
        self._faults_log.error(reason, "storage fault (%s) in %s: %s", reason, self.directory,
                               exc)
        if reason == "no_space":
            self.forget_files()  # kept descriptors of evicted files hold their space
        self.on_fault(reason)

    def _written(self) -> None:
        self.last_write = time.time()

    def _committed(self, keys: list[str], refused: list[str]) -> None:
        if any(k.startswith(SLICE_PREFIX) for k in keys):
            self._written()
        for skey in (k for k in keys if k.startswith(META_PREFIX)):
            self.on_facts(skey[len(META_PREFIX):], True)
        for skey in (k for k in refused if k.startswith(META_PREFIX)):
            self.on_facts(skey[len(META_PREFIX):], False)

    def degraded(self, now: float) -> bool:
        """Whether the cache cannot store right now: its index is unavailable, or a storage
        fault happened recently and no slice has been stored since."""
        if isinstance(self._cache, index.Unavailable):
            return True
        return now - self.last_fault < DEGRADED_FOR and self.last_fault >= self.last_write

    # --- object facts ---

    @reading(None)
    def get_meta(self, key: str) -> ObjectMeta | None:
        """The stored facts of ``key``, or None (the key filter knows most misses)."""
        skey = meta_key(key)
        found, value = self._batch.get(skey)
        if not found:
            presence = self.presence
            if presence is not None and not presence.may_hold(skey):
                return None
            value = self._cache.get(skey)
        return _facts(value)

    def _get(self, skey: str) -> Any:
        found, value = self._batch.get(skey)
        return value if found else self._cache.get(skey)

    @writing
    def set_meta(self, key: str, meta: ObjectMeta, *, if_version: str | None = None) -> None:
        """Store the facts of ``key`` (replacing any older version); with ``if_version``,
        only if the stored facts are still of that version when the write is committed.

        A response that varies is also stored as the variant for its request's values, so
        several variants live side by side (RFC 9111 §4.1); the plain entry is the latest.
        While the store is degraded the write goes through at once: if the index still
        fails, the caller learns it now (`StorageFault`) and passes its answer through.
        """
        value: Any = encode(meta)
        if if_version is not None:
            value = IfStill(value, lambda raw: getattr(_facts(raw), "version", None) == if_version)
        if meta.vary and meta.vary_values is not None:
            self._batch.put(variant_key(key, meta.vary_values), value, tag_of(key))
        skey = meta_key(key)
        if self.presence is not None:
            self.presence.add(skey)  # before the index row: other workers then ask for it
        elif len(self._unfiltered) < UNFILTERED_MAX:
            self._unfiltered.add(skey)  # for the filter, if it comes (the index reopens)
        self._put(skey, value, tag_of(key))

    def _put(self, skey: str, value: Any, tag: str) -> None:
        """A write for the next group commit; while the store is degraded it goes through at
        once, and if the index still fails the caller learns it now (`StorageFault`)."""
        self._batch.put(skey, value, tag)
        if self.degraded(time.time()):
            before = self.faults
            self._batch.commit()
            if self.faults != before:
                raise StorageFault("the cache index still fails: not stored")

    @reading(None)
    def get_variant(self, key: str, values: tuple[str, ...]) -> ObjectMeta | None:
        """The stored variant of ``key`` for these Vary values, or None."""
        return _facts(self._get(variant_key(key, values)))

    # --- slices ---

    @reading(None)
    def get_slice(self, key: str, version: str, index: int) -> SliceBody | None:
        """Slice ``index`` of ``key`` at ``version``: bytes (small) or an open file; None
        when it is not stored, or when its bytes fail their checksum (it is then dropped).

        Files are kept open and checked as `SliceFiles` says. A slice's bytes never change
        under its key and version, so a descriptor stays right even once its file is
        evicted; purges let go of them all.
        """
        skey = slice_key(key, version, index)
        self.let_go_if_evicted()
        kept = self.files.get(skey)
        if kept is not None:
            state = self.files.check(kept)
            if state is not None:
                return SliceFile(kept, state)
            self._drop(skey, kept.name, "slice file changed on disk, fails its checksum")
            return None
        found, pending = self._batch.get(skey)
        if isinstance(pending, AdoptFile):
            # The commit moves a pending file into place, and a move changes the file's
            # ctime, which a reader's check takes for a write (answers were cut short):
            # commit now, and read the file where it stays.
            self._batch.commit()
            found = False
        stored = pending if found else self._cache.get(skey, read=True)
        if stored is None:
            return None
        if isinstance(stored, bytes):
            data = unseal(stored)
            if data is None:
                self._drop(skey, stored, "inline slice fails its checksum")
            return data
        kept = KeptFile.adopt(stored)
        state = self.files.check(kept)
        if state is None:
            kept.retire()
            self._drop(skey, kept.name, "slice file fails its checksum")
            return None
        self.files.keep(skey, kept)
        return SliceFile(kept, state)

    def let_go_if_evicted(self) -> None:
        """Let go of every kept descriptor if another worker evicted or purged since (their
        files' space is held while any worker keeps them open)."""
        if self._evictions != self.space.evictions():
            self.forget_files()

    def forget_files(self) -> None:
        """Let go of every kept descriptor (after a purge or an eviction here or in another
        worker)."""
        self.files.forget()
        self._evictions = self.space.evictions()

    def _drop(self, skey: str, stored: str | bytes, why: str) -> None:
        """Remove a slice that failed its check (unless the index has meanwhile moved on to
        another copy of it), and say so."""
        self.files.let_go(skey)
        if self._batch.get(skey) == (True, stored):
            del self._batch.pending[skey]
        with contextlib.suppress(diskcache.Timeout), self._cache.transact():
            current = self._cache.get(skey, read=True)
            if current is not None and not isinstance(current, bytes):
                with current:
                    current = current.name
            if current == stored:
                self._cache.delete(skey)
        key, index = slice_of(skey)
        log.error("integrity failure on %s: stored slice %s dropped (%s)", key, index, why)
        self.on_corrupt(key, index, why)

    @reading(False)
    def has_slice(self, key: str, version: str, index: int) -> bool:
        """Whether the slice is stored (without opening it)."""
        skey = slice_key(key, version, index)
        return skey in self._batch.pending or skey in self._cache

    @reading(frozenset())
    def stored_slices(self, key: str, version: str, indexes: Iterable[int]) -> frozenset[int]:
        """Which of ``indexes`` are stored (or about to be) at ``version``, in one query: a
        fill that claims the slices its answer carries asked once per slice before, ~15 us
        each, between the upstream's head and the client's first byte."""
        wanted = {slice_key(key, version, i): i for i in indexes}
        found = {i for skey, i in wanted.items() if skey in self._batch.pending}
        found.update(wanted[k] for k in queries.present(queries.sql(self._cache), list(wanted)))
        return frozenset(found)

    @reading({})
    def slice_sums(self, key: str, version: str, indexes: Iterable[int]) -> dict[int, int]:
        """The xxh3 of each of ``indexes`` stored at ``version``, as its file's name or its
        inline bytes carry it, in one query (named to the node below: `slicesums`)."""
        wanted = {slice_key(key, version, i): i for i in indexes}
        heads = queries.heads(queries.sql(self._cache), list(wanted), INLINE_HEADER)
        sums = {wanted[skey]: carried(name, head) for skey, name, head in heads}
        for skey in wanted.keys() & self._batch.pending.keys():
            value = self._batch.pending[skey][0]
            sums[wanted[skey]] = value.checksum if isinstance(value, AdoptFile) \
                else carried(None, value)
        return {i: found for i, found in sums.items() if found is not None}

    @writing
    def commit_slice(self, key: str, version: str, index: int, path: Path, size: int,
                     data: bytes | None = None, *, checksum: int) -> None:
        """Make a finished fill file the stored slice, atomically (by rename, no copy).

        ``data``: the slice's bytes when the filler kept them (small slices live inline in the
        index, so one query serves them and the file is dropped). ``checksum``: the slice's
        xxh3, computed as the fill wrote it (`checksum.SliceHasher`).
        """
        skey = slice_key(key, version, index)
        if data is not None or size < INLINE_MAX:
            if data is None:
                data = path.read_bytes()
                path.unlink(missing_ok=True)
            if not self.room.make_room(len(data)):
                raise self.room.no_room(len(data))
            self._put(skey, seal(data, checksum), tag_of(key))
        else:  # the file is moved into place by the commit that writes its row
            # Until then it waits under a name of its own: the next fill of this slice (another
            # variant, a refetch) writes to the fill's path at once.
            waiting = path.with_name(f"{path.name}.{os.getpid()}.{next(self._waiting)}")
            os.replace(path, waiting)
            self._put(skey, AdoptFile(waiting, size, checksum), tag_of(key))

    @writing
    def commit_object(self, key: str, meta: ObjectMeta, path: Path, size: int,
                      data: bytes | None, *, checksum: int) -> None:
        """Store a one-slice object's facts and body (in the same group commit)."""
        self.commit_slice(key, meta.version, 0, path, size, data, checksum=checksum)
        self.set_meta(key, meta)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once every write made so far is in the index (other processes
        see it): claims are released then."""
        self._batch.after_commit(callback)

    def commit(self) -> None:
        """Commit pending writes now."""
        self._batch.commit()

    def commit_soon(self) -> None:
        """Commit pending writes within a few milliseconds (`GroupCommit.soon`)."""
        self._batch.soon()

    # --- removal and stats ---

    @reading(0)
    def purge(self, key: str) -> int:
        """Remove ``key``'s facts and all its slices; the number of entries removed."""
        self.forget_files()
        self.space.evicted()  # every worker lets go of descriptors (maybe of these files)
        tag = tag_of(key)
        dropped = self._batch.drop(lambda t: t == tag)
        self.room.unlink_files("tag = ?", (tag,))  # room first: a full volume can then journal
        return int(self.room.retry_full(lambda: self._cache.evict(tag))) + dropped

    @reading(0)
    def purge_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix``; the number of objects."""
        removed = 0
        self.commit()  # pending objects are purged like stored ones
        for entry in list(self._cache.iterkeys()):
            if isinstance(entry, str) and entry.startswith("m\0" + prefix):
                removed += 1 if self.purge(entry[2:]) else 0
        return removed

    @reading(None)
    def clear(self) -> None:
        """Drop everything."""
        self.forget_files()
        self._batch.drop(lambda _tag: True)
        self.room.unlink_files("1", ())
        self.room.retry_full(self._cache.clear)

    def sql(self) -> Callable[..., sqlite3.Cursor]:
        """The index's statement executor for the calling thread (its connection)."""
        return queries.sql(self._cache)

    @reading(0)
    def volume(self) -> int:
        """Bytes on disk (index and bodies)."""
        return int(self._cache.volume())

    def close(self) -> None:
        """Commit what is pending, then close the index."""
        self._batch.commit()
        self.forget_files()
        if not isinstance(self._cache, index.Unavailable):
            self._cache.close()
        if self.presence is not None:
            self.presence.close()
        self.space.close()


def _facts(stored: Any) -> ObjectMeta | None:
    return decode(stored) if isinstance(stored, bytes) else None
