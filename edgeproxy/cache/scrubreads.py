"""The reads a scrub makes of a `store.CacheStore`, whatever its workers remember: every
stored slice's and object's key, a slice hashed in a thread, and what follows from the hash."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

from . import queries
from .batch import GroupCommit
from .checksum import SliceCheck, check_file, check_inline
from .index import reading
from .keys import META_PREFIX, SLICE_PREFIX, slice_key
from .slicefiles import SliceFiles

__all__ = ["ScrubReads"]


class ScrubReads:
    """Mixed into `store.CacheStore`, which provides the index, its pending writes, the
    files this worker keeps, and how a slice found bad is dropped."""

    _batch: GroupCommit
    _cache: Any
    files: SliceFiles

    def fault(self, exc: BaseException) -> None:
        """Record a storage fault (`store.CacheStore.fault`)."""
        raise NotImplementedError

    def _drop(self, skey: str, stored: str | bytes, why: str) -> None:
        raise NotImplementedError

    def slice_keys(self) -> Iterator[str]:
        """The index key of every stored slice (read in pages: slices stored or dropped
        meanwhile may or may not be listed)."""
        self._batch.commit()  # this process's pending slices are stored ones too
        yield from queries.keys_with(queries.sql(self._cache), SLICE_PREFIX)

    @reading(None)
    def inspect(self, skey: str) -> SliceCheck | None:
        """Hash one stored slice, whatever this worker remembers of it; None if it is gone.

        Touches nothing of this worker's state, so it may run in a thread (it reads the
        whole slice); `settle` then acts on the outcome.
        """
        stored = self._cache.get(skey, read=True)
        if stored is None:
            return None
        return check_inline(skey, stored) if isinstance(stored, bytes) \
            else check_file(skey, stored)

    def meta_keys(self) -> Iterator[str]:
        """The cache key of every stored object (read in pages, as `slice_keys`)."""
        self._batch.commit()
        for skey in queries.keys_with(queries.sql(self._cache), META_PREFIX):
            yield skey[len(META_PREFIX):]

    @reading(None)
    def raw_slice(self, key: str, version: str, index: int) -> bytes | IO[bytes] | None:
        """A stored slice as the index holds it (a sealed record or an opened file, to
        close), whatever this worker remembers: for a thread that checks it."""
        stored: bytes | IO[bytes] | None = self._cache.get(slice_key(key, version, index),
                                                            read=True)
        return stored

    def settle(self, check: SliceCheck) -> None:
        """Remember a file found good; drop a slice found bad."""
        if check.ok and check.state is not None and check.checksum is not None:
            if self.files.settled(check.state):
                self.files.verified.remember(check.state, check.checksum)
        elif not check.ok:
            if check.state is not None:
                self.files.verified.forget(check.state)
            self._drop(check.skey, check.stored, "fails its checksum (scrub)")
