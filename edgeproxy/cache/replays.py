"""Replays: fast-lane answers kept by the exact bytes of the request head that asked them.

A player seeking, a health check, a load balancer's probe send the same head again and
again, and each time llhttp parsed it, the protocol and the guard checked it field by field,
and the lane looked the object up and encoded the same fields. The server protocol offers
`Replays` a received chunk that is one whole request head at a request boundary; a head the
lane answered before from memory (a hot object, or a range of a slice kept in memory) is
answered again from its record, once the lane finds its object still the one it answered
from (the same facts, fresh, no purge since, the bytes still in memory). A head the lane
answered from stored slice files (a large object whole, a large range) is answered again
from those files, each found and checked as the lane finds them (`lanebodies.file_pieces`),
where the server sends files. Only Age and Date are set anew, once a second at most.

A record holds the facts, encoded fields and where its bytes are, never the bytes: memory
given back by the hot tier is not held here. Anything else (a head not seen, several heads
in one chunk, a head in pieces, a record whose object changed) goes the usual way, and the
usual way keeps the record.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from .hot import SliceId
from .lanebodies import file_pieces
from .meta import ObjectMeta
from .slicefiles import FilePiece

if TYPE_CHECKING:
    from .fastlane import FastLane

Fields = list[tuple[bytes, bytes]]

GATHER = 16384  # bodies from this size on are written beside the head, not copied after it
HEAD_MAX = 2048  # longer heads are not kept (a key of their bytes would cost more)
RECORDS_MAX = 1024  # per worker; the oldest goes first


class BodyAt(NamedTuple):
    """Where a lane answer's body is: bytes ``start:stop`` (``stop`` None: to the end) of
    the hot entry (``sid`` None), of a slice kept in memory (``sid``), or, with ``files``,
    of the stored object's slice files (``start``, ``stop``: offsets in the object)."""

    sid: SliceId | None
    start: int
    stop: int | None
    files: bool = False


class Replay:
    """One answer of the lane, to give again for the same head."""

    __slots__ = ("at", "content_class", "dated", "extra", "head", "headers", "meta", "path",
                 "prefix", "status", "tail", "until", "url")

    def __init__(self, path: str, url: bytes, headers: Fields, meta: ObjectMeta,
                 at: BodyAt, status: int, prefix: bytes, tail: bytes, dated: bool) -> None:
        self.path, self.url, self.headers, self.meta = path, url, headers, meta
        self.content_class = meta.content_class
        self.at = at
        self.status, self.prefix, self.tail, self.dated = status, prefix, tail, dated
        self.head = b""  # the encoded head, valid before ``until`` with ``extra``
        self.until = 0.0
        self.extra: Fields | None = None

    def head_at(self, now: float, extra: Fields, moment: Callable[[], Fields]) -> bytes:
        """The answer's head at ``now`` (the fields of the moment are encoded again once
        Age or Date would read differently, or the server's own fields changed)."""
        if now < self.until and extra is self.extra:
            return self.head
        age = self.meta.freshness.age(now)
        self.head = b"".join([self.prefix, *[b"%s: %s\r\n" % pair for pair in moment()],
                              self.tail, *[b"%s: %s\r\n" % pair for pair in extra], b"\r\n"])
        # Age is whole seconds of the age, Date whole seconds of the clock: the head holds
        # until either would change
        self.until = min(now + (math.floor(age) + 1 - age), math.floor(now) + 1.0)
        self.extra = extra
        return self.head


class Replays:
    """The records of one worker, by request head."""

    def __init__(self, size: int = RECORDS_MAX) -> None:
        self.size = size
        self._records: dict[bytes, Replay] = {}

    def get(self, head: bytes) -> Replay | None:
        """The record of ``head``, if one is kept."""
        return self._records.get(head)

    def keep(self, head: bytes, record: Replay) -> None:
        """Keep ``record`` for ``head`` (not for a head too long to be worth a key)."""
        if len(head) > HEAD_MAX:
            return
        records = self._records
        if head not in records and len(records) >= self.size:
            del records[next(iter(records))]  # (the oldest: a popular head is kept again)
        records[head] = record

    def drop(self, head: bytes) -> None:
        """Forget the record of ``head`` (its object changed)."""
        self._records.pop(head, None)

    def clear(self) -> None:
        """Forget every record (the stored fields changed, after a reload)."""
        self._records.clear()

    def __len__(self) -> int:
        return len(self._records)


def answer(lane: FastLane, record: Replay, started: float, extra: Fields, files: bool = False,
           ) -> tuple[list[bytes | memoryview | FilePiece], int] | None:
    """The answer of ``record`` now, as buffers for one gathered write (the last one a
    `FilePiece` for the server to send from its files, if ``files``), and its body's length
    (accounted as the lane accounts a hit); None when its object is no longer the one it
    was made from."""
    now = time.time()
    node = lane.node
    hot = node.hot
    at, path = record.at, record.path
    body: bytes | memoryview | FilePiece
    if at.sid is None and not at.files:  # the hot entry: the same facts (and so bytes)
        entry = hot.get(path, now)
        if entry is None or entry.meta is not record.meta:
            return None
        body = entry.body if at.stop is None else memoryview(entry.body)[at.start:at.stop]
    else:  # stored slices, of the same facts, the object not in memory whole
        if hot.get(path, now) is not None or hot.facts(path, now) is not record.meta:
            return None
        if at.files:
            assert at.stop is not None
            pieces = file_pieces(node, path, record.meta, at.start, at.stop - 1) \
                if files else None
            if pieces is None:
                return None
            body = pieces
        else:
            assert at.sid is not None
            data = hot.slice(at.sid)
            if data is None:
                return None
            body = memoryview(data)[at.start:at.stop]
    head = record.head_at(now, extra, lambda: lane.moment(record.meta, record.dated, now))
    node.answered += 1
    node.metrics.observe("HIT", record.content_class, len(body), time.perf_counter() - started)
    if len(body) < GATHER and not isinstance(body, FilePiece):
        return [head + body], len(body)
    return [head, body], len(body)
