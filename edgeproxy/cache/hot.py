"""The hot tier: small, fresh, complete objects kept in process memory.

Thumbnails and other small objects dominate request counts; serving them from a dict, with
their response headers already encoded, keeps SQLite and the filesystem off the hit path.
The tier holds only what the disk cache holds: an entry dies with its freshness, or when any
worker changes its object (new facts, a purge, an invalidation: its key's shared generation
is bumped) or purges many (the shared epoch).

It is bounded in bytes, and what it evicts first is chosen by Greedy-Dual-Size-Frequency
(Cherkasova 1998; Squid's ``heap GDSF``): an entry's worth is its hits (up to `HITS_CAP`)
per byte, plus the worth of the last entry evicted (the clock), so that entries nobody asks
for any more age out. The tier exists to save work per *request*, and a hit on a 2 KiB
thumbnail saves as much as one on a 200 KiB image: by worth per byte, 32 MiB keep many more
of the objects that are asked for. On the benchmarks' Zipf mix (10,000 objects of 1-128 KiB)
one worker's 32 MiB answer 82 % of requests, against 70 % under LRU
(`benchmarks/simulate_memory.py`). A hit costs one increment: an entry's place in the heap
is brought up to date only when it reaches the top (then pushed again at the clock of that
moment, not of its last hit).
"""

from __future__ import annotations

import heapq
import itertools
import mmap
import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .meta import ObjectMeta

_EPOCH = struct.Struct("=Q")
# Generations of keys shared by the workers (8 bytes each): keys that share one are forgotten
# together, which costs a lookup of the index, never a wrong answer.
KEY_SLOTS = 1 << 16
FACTS_SIZE = 65536  # facts of large objects remembered per worker
SLICE_SHARE = 4  # slices of large objects may take this fraction (1/n) of the memory tier
SLICES_ASKED = 4096  # slices read once from disk remembered, to keep one asked for again
# Hits counted in an entry's worth at most: an object asked for a million times yesterday must
# not outstay today's popular ones for hours (GDSF's known pollution). On the Zipf mix 16
# costs no hit ratio, and after the popular set changes the tier adapts sooner
# (`tests/test_hot_worth.py`).
HITS_CAP = 16

SliceId = tuple[str, str, int]  # key, version, index


class PurgeEpoch:
    """Counters in a shared memory-mapped file. The epoch: a purge of everything (or of a
    prefix) anywhere bumps it, and every worker's hot tier sees the change on its next lookup
    (one memory read) and empties itself. And the generations of keys, by a hash of the key
    (`KEY_SLOTS` of them): a change of one object (new facts committed, a purge, an
    invalidation by an unsafe method) bumps its key's, and every worker forgets what it keeps
    of that key only. A purge of one object used to empty every worker's tier, so any client
    could keep the tiers empty with a stream of POSTs to cached URLs (RFC 9111 §4.4
    invalidation); and facts kept in memory had to be trusted for a few seconds only, as
    another worker's change of them could not be told."""

    def __init__(self, path: Path) -> None:
        size = _EPOCH.size * (1 + KEY_SLOTS)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            have = os.fstat(fd).st_size
            if have < size:
                # written, not a hole: a write through the map can then never meet a full
                # volume (SIGBUS)
                os.pwrite(fd, bytes(size - have), have)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    def read(self) -> int:
        """The current epoch."""
        value: int = _EPOCH.unpack_from(self._map)[0]
        return value

    def bump(self) -> None:
        """Invalidate every worker's hot tier."""
        _EPOCH.pack_into(self._map, 0, (self.read() + 1) % (1 << 64))

    @staticmethod
    def slot(key: str) -> int:
        """Where ``key``'s generation is kept (the same in every process: not ``hash``)."""
        return 1 + (zlib.crc32(key.encode("utf-8", "surrogatepass")) & (KEY_SLOTS - 1))

    def generation(self, slot: int) -> int:
        """The generation kept at ``slot``."""
        value: int = _EPOCH.unpack_from(self._map, slot * _EPOCH.size)[0]
        return value

    def bump_slot(self, slot: int) -> int:
        """Invalidate what every worker keeps of the keys of ``slot``; the new generation."""
        value = (self.generation(slot) + 1) % (1 << 64)
        _EPOCH.pack_into(self._map, slot * _EPOCH.size, value)
        return value

    def close(self) -> None:
        """Unmap."""
        self._map.close()


def field_lines(fields: list[tuple[bytes, bytes]]) -> bytes:
    """``name: value`` lines of a field block, as HTTP/1.1 sends them."""
    return b"".join([b"%s: %s\r\n" % pair for pair in fields])


@dataclass(slots=True)
class HotEntry:
    """One object ready to send: facts, body, and its stored fields encoded once."""

    meta: ObjectMeta
    body: bytes
    lines: bytes  # the whole answer's fields but Age, X-Cache and Date, as HTTP/1.1 sends them
    # a range's: less Content-Length and Content-Digest, the whole body's (RFC 9530 §2)
    range_lines: bytes
    fresh_until: float  # epoch seconds
    dated: bool  # the stored fields carry a Date (else each answer adds the clock's)
    hits: int = 1  # requests it answered or was stored for, while in the tier
    ranked: int = 0  # `hits` when its place in the eviction heap was last set
    slot: int = 0  # where its key's generation is kept (`PurgeEpoch.slot`), and the
    generation: int = 0  # generation seen before its facts were read: set by `HotTier.put`

    @classmethod
    def of(cls, meta: ObjectMeta, body: bytes, fields: list[tuple[bytes, bytes]],
           fresh_until: float) -> HotEntry:
        """An entry from the whole answer's fields (Content-Length included) as pairs."""
        ranged = [(n, v) for n, v in fields if n not in (b"content-length", b"content-digest")]
        return cls(meta, body, field_lines(fields), field_lines(ranged), fresh_until,
                   meta.header("date") is not None)


# (worth, sequence, key, entry): the sequence keeps the comparison off keys and entries
_Ranked = tuple[float, int, str, HotEntry]


class HotTier:
    """A byte-bounded set of `HotEntry` by cache key, evicting the least worth per byte."""

    def __init__(self, max_bytes: int, max_object: int, epoch: PurgeEpoch,
                 on_clear: Callable[[], None] = lambda: None) -> None:
        self.on_clear = on_clear  # what else this worker keeps that a purge must drop
        self.max_bytes = max_bytes
        self.max_object = max_object
        self.epoch = epoch
        self._seen_epoch = epoch.read()
        self._entries: dict[str, HotEntry] = {}
        self._heap: list[_Ranked] = []  # lazily ordered: see the module's doc
        self._clock = 0.0  # worth of the last entry evicted
        self._sequence = itertools.count()
        # key -> (facts, fresh until, slot, generation): see `HotEntry`
        self._facts: OrderedDict[str, tuple[ObjectMeta, float, int, int]] = OrderedDict()
        self._bytes = 0
        # Slices of large objects that ranges keep asking for (a player's seeks, a hot
        # segment), in a share of the tier of their own: small objects keep the rest.
        self._slices: OrderedDict[SliceId, bytes] = OrderedDict()
        self._slice_bytes = 0
        self._asked: OrderedDict[SliceId, None] = OrderedDict()  # read once from disk lately

    def accepts(self, length: int | None) -> bool:
        """Whether an object of ``length`` bytes may live here."""
        return self.max_bytes > 0 and length is not None and length <= self.max_object

    def get(self, key: str, now: float) -> HotEntry | None:
        """The fresh entry of ``key``, or None."""
        epoch = self.epoch.read()
        if epoch != self._seen_epoch:
            self.clear()
            self._seen_epoch = epoch
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.fresh_until or self.epoch.generation(entry.slot) != entry.generation:
            self.pop(key)  # stale (the full path revalidates it), or changed by some worker
            return None
        entry.hits += 1
        return entry

    def facts(self, key: str, now: float) -> ObjectMeta | None:
        """Fresh facts of ``key`` remembered for an object too large to keep whole."""
        epoch = self.epoch.read()
        if epoch != self._seen_epoch:
            self.clear()  # a purge in some worker: drop everything kept here
            self._seen_epoch = epoch
            return None
        remembered = self._facts.get(key)
        if remembered is None:
            return None
        meta, fresh_until, slot, generation = remembered
        if fresh_until <= now or self.epoch.generation(slot) != generation:
            del self._facts[key]
            return None
        return meta

    def mark(self, key: str) -> tuple[int, int]:
        """``key``'s slot and generation, to be taken *before* its facts are read from the
        index: facts read after a change but remembered after the change's bump would
        otherwise pass for current (`remember_facts`)."""
        slot = self.epoch.slot(key)
        return slot, self.epoch.generation(slot)

    def remember_facts(self, key: str, meta: ObjectMeta, fresh_until: float,
                       mark: tuple[int, int] | None = None) -> None:
        """Keep the facts (not the body) of a large object: its hits skip the index query.
        ``mark``: as `mark` gave it before the facts were read (else taken now)."""
        slot, generation = mark if mark is not None else self.mark(key)
        self._facts[key] = (meta, fresh_until, slot, generation)
        self._facts.move_to_end(key)
        if len(self._facts) > FACTS_SIZE:
            self._facts.popitem(last=False)

    def changed(self, key: str) -> None:
        """``key``'s object changed or is gone (a purge, an invalidation): every worker
        forgets what it keeps of it."""
        self.epoch.bump_slot(self.epoch.slot(key))
        self.pop(key)

    def committed(self, key: str, written: bool = True) -> None:
        """Facts of ``key`` reached the index from this worker: every other worker forgets
        what it keeps of the key. What this worker keeps of it stays: it let go of the key
        when it learnt the facts it wrote (`CacheNode._plan`, `mark_verified`), so what it
        kept since came from them (the index's reads here see pending writes first).
        ``written`` False: a refresh of them was refused (another version is stored), so what
        this worker kept of the refresh goes too."""
        if not written:
            self.changed(key)
            return
        slot = self.epoch.slot(key)
        generation = self.epoch.bump_slot(slot)
        entry = self._entries.get(key)
        if entry is not None and entry.slot == slot:
            entry.generation = generation
        remembered = self._facts.get(key)
        if remembered is not None:
            self._facts[key] = (remembered[0], remembered[1], slot, generation)

    def slice(self, sid: SliceId) -> bytes | None:
        """A slice kept in memory (the caller has looked at the facts, and so the epoch)."""
        data = self._slices.get(sid)
        if data is not None:
            self._slices.move_to_end(sid)
        return data

    def wants_slice(self, sid: SliceId, size: int) -> bool:
        """Whether a slice just read from disk should be kept: the second read of it
        lately, when it fits the slices' share. A scan of many slices, each read once,
        keeps none of them and evicts nothing."""
        if size > self.max_bytes // SLICE_SHARE:
            return False
        if sid in self._asked:
            del self._asked[sid]
            return True
        self._asked[sid] = None
        if len(self._asked) > SLICES_ASKED:
            self._asked.popitem(last=False)
        return False

    def put_slice(self, sid: SliceId, data: bytes) -> None:
        """Keep a slice (checked as read), evicting the least recently used ones."""
        old = self._slices.pop(sid, None)
        self._slice_bytes += len(data) - (len(old) if old is not None else 0)
        self._slices[sid] = data
        while self._slice_bytes > self.max_bytes // SLICE_SHARE and self._slices:
            _sid, gone = self._slices.popitem(last=False)
            self._slice_bytes -= len(gone)

    def put(self, key: str, entry: HotEntry) -> None:
        """Keep ``entry``, evicting the entries of least worth beyond the byte bound (perhaps
        ``entry`` itself, when everything kept is worth more)."""
        if not self.accepts(len(entry.body)):
            return
        entry.slot, entry.generation = self.mark(key)
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old.body)
            entry.hits += old.hits  # a newer copy of the same object: as often asked for
        self._entries[key] = entry
        self._bytes += len(entry.body)
        self._rank(key, entry)
        while self._bytes > self.max_bytes and self._entries:
            self._evict_one()
        if len(self._heap) > 2 * len(self._entries) + 64:
            # places of entries gone (stale, purged, replaced): drop them rather than let
            # them pile up (each live entry has exactly one)
            self._heap = [item for item in self._heap if self._entries.get(item[2]) is item[3]]
            heapq.heapify(self._heap)

    def _rank(self, key: str, entry: HotEntry) -> None:
        entry.ranked = entry.hits
        worth = self._clock + min(entry.hits, HITS_CAP) / max(1, len(entry.body))
        heapq.heappush(self._heap, (worth, next(self._sequence), key, entry))

    def _least(self) -> _Ranked | None:
        """The entry of least worth, its place brought up to date: places of entries gone
        are dropped, and an entry hit since it was ranked is ranked anew at the present
        clock."""
        heap = self._heap
        while heap:
            top = heap[0]
            _worth, _seq, key, entry = top
            if self._entries.get(key) is not entry:
                heapq.heappop(heap)  # gone already (stale, purged, replaced)
            elif entry.ranked != entry.hits:
                heapq.heappop(heap)
                self._rank(key, entry)
            else:
                return top
        return None

    def _evict_one(self) -> None:
        """Evict the entry of least worth; the clock moves up to its worth."""
        least = self._least()
        if least is None:
            raise AssertionError("bytes counted for entries the heap does not hold")
        worth, _seq, key, entry = heapq.heappop(self._heap)
        self._clock = worth
        del self._entries[key]
        self._bytes -= len(entry.body)

    def pop(self, key: str) -> None:
        """Forget ``key`` (here only)."""
        self._facts.pop(key, None)
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry.body)

    def purged(self) -> None:
        """A purge of many objects happened: empty this tier and every other worker's."""
        self.epoch.bump()
        self.clear()
        self._seen_epoch = self.epoch.read()

    def clear(self) -> None:
        """Forget everything (here only)."""
        self.on_clear()
        self._entries.clear()
        self._heap.clear()
        self._clock = 0.0
        self._facts.clear()
        self._bytes = 0
        self._slices.clear()
        self._asked.clear()
        self._slice_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)
