"""The fast lane: fresh hits answered before the steps, from memory or one stored slice.

A GET with no validator or credential for an object in the memory tier (whole, or one byte
range of it), or for one range inside one stored slice of an object whose facts are
remembered, needs none of the pipeline's decisions: its answer is the stored fields, the
clock's Age and Date, and bytes already at hand (a stored slice is read and checked as the
steps read it). The server protocol asks `reply` as it parses a request head and writes the
answer in one go; under any other ASGI server `serve` sends it. Anything else returns None
and goes through the steps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..http import RangeNotSatisfiable, format_http_date, parse_range, resolve_ranges
from .store import ObjectMeta
from .types import Scope, Send
from .verdict import Verdict, x_cache

if TYPE_CHECKING:
    from .node import CacheNode

# Request fields that take a request off the fast lane (the steps answer them).
_NOT_PLAIN = frozenset({b"if-none-match", b"if-range", b"if-modified-since", b"authorization",
                        b"if-match", b"if-unmodified-since"})
_STATUS_LINES = {200: b"HTTP/1.1 200 OK\r\n", 206: b"HTTP/1.1 206 Partial Content\r\n"}

Hit = tuple[ObjectMeta, int, list[tuple[bytes, bytes]], bytes]


class FastLane:
    """The fast lane of one cache node."""

    def __init__(self, node: CacheNode) -> None:
        self.node = node
        self.hit_x_cache = x_cache(Verdict.HIT, node.name).encode()

    def hit(self, path: str, headers: Iterable[tuple[bytes, bytes]]) -> Hit | None:
        """A GET of a fresh object, whole from memory or by one byte range from memory or
        one stored slice, with no validator or credential: its facts, status, fields and
        body; else None (the steps answer it).

        ``path`` must be canonical and without a query (the callers check the raw target).
        """
        range_value = None
        for name, value in headers:
            if name == b"range":
                if range_value is not None:
                    return None
                range_value = value
            elif name in _NOT_PLAIN:
                return None  # validators, credentials: the steps handle them
        now = time.time()
        entry = self.node.hot.get(path, now)
        if entry is None:
            return None if range_value is None else self._stored_range(path, range_value, now)
        meta = entry.meta
        if meta.content_class in self.node.gate.signed_classes:
            return None
        fields = [*entry.headers, (b"age", str(int(meta.freshness.age(now))).encode()),
                  (b"x-cache", self.hit_x_cache)]
        if not entry.dated:
            fields.append((b"date", format_http_date(now).encode()))
        body = entry.body
        specs = parse_range(range_value.decode("latin-1")) if range_value is not None else None
        if specs is None or meta.status != 200:  # RFC 9110 §14.2: ignored, whole
            return meta, 200, fields, body
        try:
            ranges = resolve_ranges(specs, len(body))
        except RangeNotSatisfiable:
            return None  # 416 from the steps
        if len(ranges) != 1:
            return None  # multipart from the steps
        (rng,) = ranges
        # the whole body's Content-Digest is not this range's (RFC 9530 §2)
        fields = [(n, v) for n, v in fields if n not in (b"content-length", b"content-digest")]
        fields += [(b"content-range", rng.content_range(len(body)).encode()),
                   (b"content-length", str(rng.length).encode())]
        return meta, 206, fields, body[rng.start:rng.end + 1]

    def _stored_range(self, key: str, range_value: bytes, now: float) -> Hit | None:
        """One range within one stored slice of an object whose facts are remembered (a
        video seek, a late range of a large blob), read and checked like the steps read it."""
        meta = self.node.hot.facts(key, now)
        if meta is None or meta.length is None or meta.status != 200 \
                or meta.content_class in self.node.gate.signed_classes:
            return None
        specs = parse_range(range_value.decode("latin-1"))
        if specs is None:
            return None
        try:
            ranges = resolve_ranges(specs, meta.length)
        except RangeNotSatisfiable:
            return None
        if len(ranges) != 1 or ranges[0].start // meta.slice_size \
                != ranges[0].end // meta.slice_size:
            return None  # several ranges or slices: the steps
        (rng,) = ranges
        index = rng.start // meta.slice_size
        stored = self.node.store.get_slice(key, meta.version, index)
        if stored is None:
            return None  # missing: the steps fetch it
        offset = rng.start - index * meta.slice_size
        if isinstance(stored, bytes):
            data = stored[offset:offset + rng.length]
        else:
            with stored:
                data = os.pread(stored.fileno(), rng.length, offset)
                if not stored.unchanged():
                    return None  # written to while read: the steps check it again
        if len(data) != rng.length:
            return None
        fields = [(n.encode("latin-1"), v.encode("latin-1"))
                  for n, v in self.node.stored_headers(meta)]
        if meta.header("date") is None:
            fields.append((b"date", format_http_date(now).encode()))
        fields += [(b"age", str(int(meta.freshness.age(now))).encode()),
                   (b"x-cache", self.hit_x_cache),
                   (b"content-range", rng.content_range(meta.length).encode()),
                   (b"content-length", str(rng.length).encode())]
        return meta, 206, fields, data

    def reply(self, path: str, headers: Iterable[tuple[bytes, bytes]], started: float,
              extra: list[tuple[bytes, bytes]]) -> tuple[bytes, int, int] | None:
        """The whole HTTP/1.1 answer to a plain hit, for a server protocol to write as it
        reads the request head (no task, no ASGI messages); None: take the request through
        the app. ``extra``: the server's own fields. With the answer, its status and its
        body's length."""
        hit = self.hit(path, headers)
        if hit is None:
            return None
        meta, status, fields, body = hit
        self.node.metrics.observe("HIT", meta.content_class, len(body),
                                  time.perf_counter() - started)
        return b"".join([_STATUS_LINES[status],
                         *[b"%s: %s\r\n" % pair for pair in fields],
                         *[b"%s: %s\r\n" % pair for pair in extra], b"\r\n",
                         body]), status, len(body)

    async def serve(self, scope: Scope, send: Send, started: float) -> bool:
        """The hit path for hot objects under any ASGI server: a dict lookup and two sends."""
        if scope["method"] != "GET" or scope["query_string"]:
            return False
        raw = scope.get("raw_path")
        if raw is not None and (b"%" in raw or b"/." in raw):
            return False  # not obviously canonical: recv canonicalises it first
        hit = self.hit(scope["path"], scope["headers"])
        if hit is None:
            return False
        meta, status, fields, body = hit
        await send({"type": "http.response.start", "status": status, "headers": fields})
        await send({"type": "http.response.body", "body": body})
        self.node.metrics.observe("HIT", meta.content_class, len(body),
                                  time.perf_counter() - started)
        return True

