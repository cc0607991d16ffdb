"""Replays: fast-lane answers kept by the exact bytes of the request head that asked them.

A player seeking, a health check, a load balancer's probe send the same head again and
again, and each time llhttp parsed it, the protocol and the guard checked it field by field,
and the lane looked the object up and encoded the same fields. The server protocol offers
`Replays` a received chunk that is one whole request head at a request boundary; a head the
lane answered before from memory (a hot object, or a range of a slice kept in memory) is
answered again from its record, once the lane finds its object still the one it answered
from (`FastLane.current`: the same facts, fresh, no purge since, the bytes still in memory).
Only Age and Date are set anew, once a second at most.

A record holds the facts, encoded fields and where its bytes are, never the bytes: memory
given back by the hot tier is not held here. Anything else (a head not seen, several heads
in one chunk, a head in pieces, a record whose object changed) goes the usual way, and the
usual way keeps the record.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .meta import ObjectMeta

if TYPE_CHECKING:
    from .fastlane import FastLane

Fields = list[tuple[bytes, bytes]]

GATHER = 16384  # bodies from this size on are written beside the head, not copied after it
HEAD_MAX = 2048  # longer heads are not kept (a key of their bytes would cost more)
RECORDS_MAX = 1024  # per worker; the oldest goes first


class Replay:
    """One answer of the lane, to give again for the same head."""

    __slots__ = ("content_class", "dated", "extra", "head", "headers", "meta", "path",
                 "prefix", "sid", "start", "status", "stop", "tail", "until", "url")

    def __init__(self, path: str, url: bytes, headers: Fields, meta: ObjectMeta,
                 sid: tuple[str, str, int] | None, start: int, stop: int | None,
                 status: int, prefix: bytes, tail: bytes, dated: bool) -> None:
        self.path, self.url, self.headers, self.meta = path, url, headers, meta
        self.content_class = meta.content_class
        # where the body is: a kept slice (``sid``) or the hot entry of ``path`` (None);
        # ``start:stop`` of it (``stop`` None: all of it)
        self.sid, self.start, self.stop = sid, start, stop
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


def answer(lane: FastLane, record: Replay, started: float, extra: Fields,
           ) -> tuple[list[bytes | memoryview], int] | None:
    """The answer of ``record`` now, as buffers for one gathered write, and its body's
    length (accounted as the lane accounts a hit); None when its object is no longer the
    one it was made from."""
    now = time.time()
    hot = lane.node.hot
    sid, path = record.sid, record.path
    if sid is None:  # the hot entry: the same facts (its bytes are those of its version)
        entry = hot.get(path, now)
        if entry is None or entry.meta is not record.meta:
            return None
        body: bytes | memoryview = entry.body if record.stop is None \
            else memoryview(entry.body)[record.start:record.stop]
    else:  # a slice kept in memory, of the same facts, the object not in memory whole
        if hot.get(path, now) is not None or hot.facts(path, now) is not record.meta:
            return None
        data = hot.slice(sid)
        if data is None:
            return None
        body = memoryview(data)[record.start:record.stop]
    head = record.head_at(now, extra, lambda: lane.moment(record.meta, record.dated, now))
    node = lane.node
    node.answered += 1
    node.metrics.observe("HIT", record.content_class, len(body), time.perf_counter() - started)
    if len(body) < GATHER:
        return [head + body], len(body)
    return [head, body], len(body)
