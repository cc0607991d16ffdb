"""The fast lane: fresh hits answered before the steps, from memory or stored slices.

A GET with no validator or credential for a fresh object in the memory tier (whole, or one
byte range of it), for one range inside one stored slice, or for the whole of a stored object
(one slice up to 1 MiB, or up to `lanebodies.PIECES_MAX` slices sent from their files; its
SHA-256 checked already), needs none of the pipeline's decisions: its answer is the stored
fields, the clock's Age and Date, and bytes at hand (a stored slice is read and checked as the
steps read it; facts the worker does not remember are read from the index and remembered, as
`steps.lookup` does; a small object read whole is kept in memory, as the steps keep it; a
slice ranges ask for again is kept in memory too). The server protocol asks `reply` as it
parses a request head and writes the answer in one go; under any other ASGI server `serve`
sends it. Anything else returns None and goes through the steps.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..http import format_http_date
from .fields import content_digest
from .hot import HotEntry, field_lines
from .lanebodies import file_pieces, read_slice
from .lanehit import MEMO_SIZE, STEPS, WHOLE, Fields, Hit, KeptRange, StoredFields, one_range
from .meta import ObjectMeta, whole_body_digest
from .policy import expected_sha256
from .replays import GATHER, HEAD_MAX, BodyAt, Replay, Replays
from .slicefiles import FilePiece
from .slicesums import WANT, of_run, size_asked
from .sources import ZEROCOPY_MIN
from .types import FAST_DECLINED, Scope, Send
from .verdict import Verdict, x_cache

if TYPE_CHECKING:
    from .node import CacheNode

# Request fields that take a request off the fast lane: validators and credentials (the
# steps answer them), a body or an upgrade (the app's path reads or refuses them).
_NOT_PLAIN = frozenset({b"if-none-match", b"if-range", b"if-modified-since", b"authorization",
                        b"if-match", b"if-unmodified-since", b"content-length",
                        b"transfer-encoding", b"expect", b"upgrade"})


def plain_target(target: bytes) -> bool:
    """Whether a raw request target is a plain path, canonical as it stands: no query,
    percent-encoding, fragment or dot segment (recv canonicalises those first)."""
    # `find`, not `in`: on Python 3.11 `bytes in bytes` first tries the needle as an integer
    # and formats a TypeError each time (4 of them were 5 % of a range hit's instructions)
    return target[:1] == b"/" and target.find(b"?") < 0 and target.find(b"%") < 0 \
        and target.find(b"#") < 0 and target.find(b"/.") < 0


_STATUS_LINES = {200: b"HTTP/1.1 200 OK\r\n", 206: b"HTTP/1.1 206 Partial Content\r\n"}
# Stored-field blocks remembered per worker (`lanehit.MEMO_SIZE`), the least recently used
# dropped first: a Zipf tail of objects each asked for once in a while must not wipe out
# the popular ones' (it did when the memo was emptied whenever full).
_RANGES_SIZE = 1024  # kept ranges (~1 KB each)
WHOLE_MAX = 1024 * 1024  # a larger one-slice answer streams from the steps
ABSENT_FOR = 0.02  # seconds a "not stored" the lane found stands for the steps' lookup
_ABSENT_SIZE = 1024  # keys found absent remembered at most (the oldest go first)


def _sums(want: int | None, run: FilePiece, start: int, meta: ObjectMeta) -> Fields:
    """The slice sums of an answer from files, where asked for slices of this size."""
    if want is None or want != meta.slice_size or meta.length is None:
        return []
    return of_run(run, start, meta.slice_size, meta.length)


class FastLane:
    """The fast lane of one cache node."""

    def __init__(self, node: CacheNode) -> None:
        self.node = node
        self.hit_x_cache = x_cache(Verdict.HIT, node.name).encode()
        self._stored: OrderedDict[str, StoredFields] = OrderedDict()
        self._ranges: OrderedDict[tuple[str, bytes], KeptRange] = OrderedDict()
        self._second = -1
        self._date = b""
        # Keys the lane just found nowhere in the index, and when: the request goes on to the
        # steps at once, and neither their lookup nor the lane for the requests for the same
        # key that came with it look again (a stampede's hundred requests, taken in before
        # any of them starts a fill, read the index twice each: ~13 ms of a 30 ms turn).
        self._absent: OrderedDict[str, float] = OrderedDict()
        self.replays = Replays()
        self.last: tuple[str, Iterable[tuple[bytes, bytes]], Hit, BodyAt] | None = None
        # where the last hit's body came from, for its replay record; None: nowhere a
        # replay may find it again
        self.source: BodyAt | None = None

    def not_stored(self, key: str) -> bool:
        """Whether the lane has just found ``key`` nowhere in the index (once: the steps
        take the answer, and lead or join the fill from then on). A fill committed in
        between costs one more upstream request, never a byte."""
        absent = self._known_absent(key)
        self._absent.pop(key, None)
        return absent

    def _known_absent(self, key: str) -> bool:
        seen = self._absent.get(key)
        return seen is not None and time.monotonic() - seen < ABSENT_FOR

    def forget(self) -> None:
        """Drop the encoded fields (new TTLs after a reload change them)."""
        self._stored.clear()
        self._ranges.clear()
        self.replays.clear()

    def _now_date(self, now: float) -> bytes:
        second = int(now)
        if second != self._second:
            self._date, self._second = format_http_date(now).encode(), second
        return self._date

    def hit(self, path: str, headers: Iterable[tuple[bytes, bytes]],
            files: bool = False) -> Hit | None:
        """A GET of a fresh object, whole from memory or by one byte range from memory or
        one stored slice, with no validator or credential; else None (the steps answer it).

        ``path`` must be canonical and without a query (the callers check the raw target).
        ``files``: the caller sends a `FilePiece` itself (a large whole body is one).
        """
        self.source = None
        range_value = None
        want: int | None = None  # the slice size of the sums asked for (`slicesums`)
        for name, value in headers:
            if name == b"range":
                if range_value is not None:
                    return None
                range_value = value
            elif name in _NOT_PLAIN:
                return None  # validators, credentials: the steps handle them
            elif name == WANT:
                want = size_asked(value)
        now = time.time()
        entry = self.node.hot.get(path, now)
        if entry is None:
            if range_value is not None:
                kept = self._ranges.get((path, range_value))
                if kept is not None and self.node.hot.facts(path, now) is kept.meta:
                    data = self.node.hot.slice(kept.sid)
                    if data is not None:
                        self._ranges.move_to_end((path, range_value))
                        self.source = BodyAt(kept.sid, kept.start, kept.end)
                        return self._range_hit(kept, memoryview(data)[kept.start:kept.end], now)
            return self._stored_range(path, range_value, now, files, want)
        meta = entry.meta
        if meta.content_class in self.node.gate.signed_classes:
            return None
        more = [(b"age", str(int(meta.freshness.age(now))).encode()),
                (b"x-cache", self.hit_x_cache)]
        if not entry.dated:
            more.append((b"date", self._now_date(now)))
        body = entry.body
        if range_value is None or meta.status != 200:  # RFC 9110 §14.2: ignored, whole
            self.source = BodyAt(None, 0, None)
            return Hit(meta, 200, entry.lines, more, body)
        found = one_range(range_value, len(body))
        if found is WHOLE:
            self.source = BodyAt(None, 0, None)
            return Hit(meta, 200, entry.lines, more, body)
        if found is STEPS:
            return None  # 416 or multipart from the steps
        assert not isinstance(found, bool)
        rng, content_range, content_length = found
        # the whole body's Content-Digest is not this range's (RFC 9530 §2)
        more += [(b"content-range", content_range), (b"content-length", content_length)]
        self.source = BodyAt(None, rng.start, rng.end + 1)
        return Hit(meta, 206, entry.range_lines, more, memoryview(body)[rng.start:rng.end + 1])

    def _fields(self, key: str, meta: ObjectMeta) -> StoredFields:
        stored = self._stored.get(key)
        # (facts read anew from the index are equal, not the same: the fields are)
        if stored is not None and (stored.meta is meta or stored.meta == meta):
            self._stored.move_to_end(key)
        else:
            fields = [(n.encode("latin-1"), v.encode("latin-1"))
                      for n, v in self.node.stored_headers(meta)]
            whole: Fields = []
            complete = False
            if meta.length is not None and (meta.length <= min(meta.slice_size, WHOLE_MAX)
                                            or meta.length > meta.slice_size) \
                    and whole_body_digest(key, meta) is None:
                complete = True
                whole.append((b"content-length", str(meta.length).encode()))
                # as `deliver.with_content_digest` sends it on a whole answer
                digest = content_digest((0, meta.length - 1), meta.length, expected_sha256(
                    key.partition("?")[0], {n.lower(): v for n, v in meta.headers}), None)
                if digest is not None:
                    whole.append((b"content-digest", digest.encode()))
            stored = StoredFields(meta, field_lines(fields), meta.header("date") is not None,
                             complete, field_lines(whole))
            self._stored[key] = stored
            self._stored.move_to_end(key)
            if len(self._stored) > MEMO_SIZE:
                self._stored.popitem(last=False)
        return stored

    def _stored_range(self, key: str, range_value: bytes | None, now: float,
                      files: bool = False, want: int | None = None) -> Hit | None:
        """An object whose facts are remembered, from its stored slices, read and checked
        like the steps read them: one range within one slice (a video seek, a late range of
        a large blob), a large range or the whole object from the slices' files, or the whole
        of an object of one slice; a whole answer only where its bytes need no hashing."""
        meta = self.node.hot.facts(key, now)
        if meta is None:
            if self.node.coalescer.cold(key) or self._known_absent(key):
                return None  # being fetched, or just found absent: the steps
            mark = self.node.hot.mark(key)
            meta = self.node.store.get_meta(key)  # as `steps.lookup` looks, and remembers
            if meta is None:
                self._absent[key] = time.monotonic()  # the steps need not look again
                if len(self._absent) > _ABSENT_SIZE:
                    self._absent.popitem(last=False)
                return None
            if meta.vary or not meta.freshness.is_fresh(now):
                return None  # a variant, stale: the steps
            self.node.remember(key, meta, now, mark)
        if meta.length is None or meta.status != 200 or meta.length == 0 \
                or meta.content_class in self.node.gate.signed_classes:
            return None
        found = WHOLE if range_value is None else one_range(range_value, meta.length)
        if found is STEPS:
            return None  # 416 or multipart: the steps
        fixed = self._fields(key, meta)
        if isinstance(found, bool):
            if not fixed.whole:
                return None  # a hash to check: the steps
            if meta.length > meta.slice_size:  # several slices: each from its file
                pieces = file_pieces(self.node, key, meta, 0, meta.length - 1) \
                    if files else None
                if pieces is None:
                    return None
                self.source = BodyAt(None, 0, meta.length, files=True)
                return Hit(meta, 200, fixed.lines + fixed.whole_lines,
                           self.moment(meta, fixed.dated, now) + _sums(want, pieces, 0, meta),
                           pieces)
            start, length, index, status = 0, meta.length, 0, 200
            ranged: Fields = []
        else:
            rng, content_range, content_length = found
            start, length, index, status = rng.start, rng.length, rng.start // meta.slice_size, 206
            ranged = [(b"content-range", content_range), (b"content-length", content_length)]
            if index != rng.end // meta.slice_size:  # several slices (a player's "bytes=0-")
                # a large range from their files; a small one through the steps
                pieces = file_pieces(self.node, key, meta, rng.start, rng.end) \
                    if files and length >= ZEROCOPY_MIN else None
                if pieces is None:
                    return None
                self.source = BodyAt(None, rng.start, rng.end + 1, files=True)
                return Hit(meta, 206, fixed.lines + field_lines(ranged), self.moment(
                    meta, fixed.dated, now) + _sums(want, pieces, rng.start, meta), pieces)
        offset = start - index * meta.slice_size
        # A large body (whole, or a range) that memory will not keep goes from its file to
        # the socket, or through the steps, which send it as the client takes it: read whole
        # into the answer, it waited in memory for a client that reads slowly (1 MiB per
        # stalled connection, traced with pipelined requests).
        piece = length >= ZEROCOPY_MIN and not self.node.hot.accepts(length)
        if piece and not files:
            return None
        data = read_slice(self.node, key, meta, index, offset, length, piece)
        if data is None:
            return None
        if isinstance(data, FilePiece):
            self.source = BodyAt(None, start, start + length, files=True)
            lines = fixed.lines + (fixed.whole_lines if status == 200 else field_lines(ranged))
            return Hit(meta, status, lines,
                       self.moment(meta, fixed.dated, now) + _sums(want, data, start, meta), data)
        if range_value is not None and status == 206:
            kept = KeptRange(meta, (key, meta.version, index), offset, offset + length,
                              fixed.lines + field_lines(ranged), fixed.dated)
            if self.node.hot.slice(kept.sid) is not None:  # (else it could not be used)
                self._ranges[(key, range_value)] = kept
                if len(self._ranges) > _RANGES_SIZE:
                    self._ranges.popitem(last=False)
                self.source = BodyAt(kept.sid, kept.start, kept.end)
            return self._range_hit(kept, data, now)
        data = bytes(data)  # (a copy only when it came from a slice kept in memory)
        lines = fixed.lines + fixed.whole_lines
        if self.node.hot.accepts(length):  # as the steps keep a small object in memory
            # (the stored fields hold no Content-Length or Content-Digest: a range's lines)
            self.node.hot.put(key, HotEntry(meta, data, lines, fixed.lines,
                                            now + meta.freshness.remaining(now), fixed.dated))
        return Hit(meta, 200, lines, self.moment(meta, fixed.dated, now), data)

    def moment(self, meta: ObjectMeta, dated: bool, now: float) -> Fields:
        """The fields of this moment: Age, X-Cache, and Date unless the stored ones have it."""
        more = [(b"age", str(int(meta.freshness.age(now))).encode()),
                (b"x-cache", self.hit_x_cache)]
        if not dated:
            more.append((b"date", self._now_date(now)))
        return more

    def _range_hit(self, kept: KeptRange, data: bytes | memoryview, now: float) -> Hit:
        return Hit(kept.meta, 206, kept.lines,
                   self.moment(kept.meta, kept.dated, now), data)

    def reply(self, path: str, headers: Iterable[tuple[bytes, bytes]], started: float,
              extra: Fields, files: bool = False,
              ) -> tuple[list[bytes | memoryview | FilePiece], int, int] | None:
        """The whole HTTP/1.1 answer to a plain hit, for a server protocol to write as it
        reads the request head (no task, no ASGI messages); None: take the request through
        the app. ``extra``: the server's own fields; ``files``: the server sends a body that
        is a `FilePiece` from its file. With the answer (buffers for one gathered write, the
        last one perhaps a piece), its status and its body's length."""
        hit = self.hit(path, headers, files)
        if hit is None:
            self.last = None
            return None
        body = hit.body
        # (its replay record is made only if the server asks to keep one: `keep_replay`)
        self.last = None if self.source is None else (path, headers, hit, self.source)
        self.node.answered += 1
        self.node.metrics.observe("HIT", hit.meta.content_class, len(body),
                                  time.perf_counter() - started)
        parts: list[bytes | memoryview] = [_STATUS_LINES[hit.status], hit.fixed_lines,
                 *[b"%s: %s\r\n" % pair for pair in hit.more],
                 *[b"%s: %s\r\n" % pair for pair in extra], b"\r\n"]
        if len(body) < GATHER and not isinstance(body, FilePiece):
            parts.append(body)
            return [b"".join(parts)], hit.status, len(body)
        return [b"".join(parts), body], hit.status, len(body)  # no copy of a large body

    def keep_replay(self, head: bytes) -> None:
        """Keep the answer `reply` just gave for requests of exactly ``head`` (the whole
        request, as received), if its body came from memory or stored slice files
        (`edgeproxy.cache.replays`)."""
        last, self.last = self.last, None
        if last is None or len(head) > HEAD_MAX:
            return
        path, headers, hit, source = last
        more = hit.more
        dated = not (len(more) > 2 and more[2][0] == b"date")  # (as `moment` made them)
        self.replays.keep(head, Replay(
            path, path.encode("latin-1"), list(headers), hit.meta, source, hit.status,
            _STATUS_LINES[hit.status] + hit.fixed_lines,
            b"".join([b"%s: %s\r\n" % pair for pair in more[2 if dated else 3:]]), dated))

    async def serve(self, scope: Scope, send: Send, started: float) -> bool:
        """The hit path for hot objects under any ASGI server: a dict lookup and two sends."""
        if scope["method"] != "GET" or scope["query_string"] or scope.get(FAST_DECLINED):
            return False  # (declined: the server asked `reply` already)
        raw = scope.get("raw_path")
        if raw is not None and not plain_target(raw):
            return False  # not obviously canonical: recv canonicalises it first
        hit = self.hit(scope["path"], scope["headers"])
        if hit is None:
            return False
        await send({"type": "http.response.start", "status": hit.status,
                    "headers": [*hit.fixed, *hit.more]})
        assert not isinstance(hit.body, FilePiece)  # (none was asked for)
        await send({"type": "http.response.body", "body": bytes(hit.body)})
        self.node.answered += 1
        self.node.metrics.observe("HIT", hit.meta.content_class, len(hit.body),
                                  time.perf_counter() - started)
        return True
