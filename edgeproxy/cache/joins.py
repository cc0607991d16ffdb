"""Where the slices of an answer come from: joined (stored, filling here or in another
worker, or fetched anew with ``If-Range``) for the steps, which never start fetches themselves.

Functions over the node, as the steps are; the coalescer (`coalesce`) decides each slice.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from ..errors import FillAborted
from ..http import ByteRange, RangeNotSatisfiable, resolve_ranges
from . import fields, policy
from .facts import FlightContext
from .fetch import MAX_RUN
from .foreign import poll
from .hot import HotEntry
from .meta import ObjectMeta, whole_body_digest
from .sources import FillSource, Source, StoredSource
from .waits import shared

if TYPE_CHECKING:
    from .fills import SliceFill
    from .node import CacheNode
    from .tx import Tx

# How many slices past the first a hit looks at for a missing one before its headers go out.
MISSING_WINDOW = 16
# The most slices of an object without a validator an answer holds open before its headers
# (`pin`): one descriptor each, shared by the worker's requests; past them they are joined
# as they come, as a validated object's are.
PINNED = MAX_RUN


async def join(node: CacheNode, tx: Tx, meta: ObjectMeta, index: int) -> Source:
    """The source of slice ``index`` of ``meta``'s object for ``tx`` (see `Coalescer.join`).

    A slice missing from a known object is fetched with ``If-Range``: one request, and a
    changed object is detected by its answer.
    """
    req = tx.req
    if meta.length is None:
        return await _join_growing(node, tx, meta, index)

    def lead(i: int) -> Any:
        assert meta.length is not None
        end = meta.length - 1
        if req.ranges and all(s.first is not None and s.last is not None
                              for s in req.ranges):
            end = min(end, max(s.last for s in req.ranges if s.last is not None))
        last = min(max(i, end // meta.slice_size), i + MAX_RUN - 1)
        if last > i:
            # The run stops before the next stored slice: fetching to the answer's end
            # stored the slices after a dropped one again, and replacing a slice's file
            # pulled it from under the workers sending it.
            stored = node.store.stored_slices(req.key, meta.version, range(i + 1, last + 1))
            if stored:
                last = min(stored) - 1
        spec = node.spec(req, first=i, last=last, whole=False, known=meta)
        flight = node.fetcher.start(spec, facts=False,
                                    context=FlightContext(req.headers, known=meta))
        if flight is not None and tx.flight is None:
            tx.flight, tx.led = flight, True
        return flight

    own = tx.flight.fills.get(index) if tx.flight is not None else None
    kept = _in_memory(node, req.key, meta) if index == 0 else None
    if own is not None and own.private and own.error is None \
            and own.flight.version == meta.version:
        source: Source = FillSource(own)  # this answer's own bytes of it (`Coalescer.keep`)
    elif own is not None and own.done and own.error is None and _readable(own) \
            and own.flight.version == meta.version:
        # a slice of the flight this request follows, finished and left unstored (a
        # storage fault), in memory still, or held for its requests (`Coalescer.hold`):
        # read it there rather than fetch it again
        source = FillSource(own)
    elif kept is not None:
        return StoredSource(kept)  # (kept only once checked, as `_keep_hot` keeps it)
    else:
        source = await node.coalescer.join(req.key, index, meta.version, lead)
    source = _hot_first(node, req.key, meta, index, source)
    flight = tx.flight
    if tx.led and flight is not None and not flight.headers.done():
        started = time.perf_counter()
        try:
            beresp = await shared(flight.headers, node.wait_timeout)
            tx.upstream_cache = beresp.x_cache
        finally:
            tx.upstream_time += time.perf_counter() - started
    return source


def first_missing(node: CacheNode, tx: Tx, meta: ObjectMeta, first: int) -> list[int]:
    """The first slice after ``first`` that the answer needs and that is neither stored
    nor filling (a look at a bounded window: one changed object is caught before its
    headers; past the window a change aborts the answer midway instead)."""
    assert meta.length is not None
    end = meta.length - 1
    if tx.req.ranges and meta.status == 200:
        ends = [s.last if s.first is not None else end for s in tx.req.ranges]
        end = min(end, max(e if e is not None else end for e in ends))
    window = range(first + 1, min(end // meta.slice_size, first + MISSING_WINDOW) + 1)
    if not window:
        return []
    key, fills = tx.req.key, node.coalescer.fills
    # Slices filling here need no look at the index: the followers of a flight that fills
    # them all (a stampede) asked it, ~0.3 ms each, before their first byte.
    unfilled = [index for index in window if (key, index) not in fills]
    if not unfilled:
        return []
    # one query for the window (a whole 16 MiB hit asked 15 times, once per slice)
    stored = node.store.stored_slices(key, meta.version, unfilled)
    for index in unfilled:
        if index not in stored:
            return [index]
    return []


def needed(tx: Tx, meta: ObjectMeta) -> list[int]:
    """The slices the answer sends, in order (none for a 416)."""
    assert meta.length is not None
    whole = [ByteRange(0, meta.length - 1)]
    try:
        ranges = resolve_ranges(tx.req.ranges, meta.length) \
            if tx.req.ranges and meta.status == 200 else whole
    except RangeNotSatisfiable:
        return []  # a 416 needs no byte
    return sorted({i for r in ranges for i in policy.slice_span(r.start, r.end, meta.slice_size)})


def missing(node: CacheNode, tx: Tx, meta: ObjectMeta) -> list[int]:
    """The slices the answer needs that are neither stored nor filling here: none is what a
    request with ``only-if-cached`` may be answered from without an upstream request of its
    own (RFC 9111 §5.2.1.7), and an object without validators without joining two answers."""
    fills = node.coalescer.fills
    unfilled = [i for i in needed(tx, meta) if (tx.req.key, i) not in fills]
    if not unfilled:
        return []
    stored = node.store.stored_slices(tx.req.key, meta.version, unfilled)
    return [i for i in unfilled if i not in stored]


def pin(node: CacheNode, tx: Tx, meta: ObjectMeta) -> dict[int, Source] | None:
    """Every slice an answer of an object without a validator sends (the first `PINNED`),
    held open before its headers go out; None, with nothing held, when one is not at hand.

    Nothing can fetch such a slice again (no ``If-Range`` ties a new answer to this one),
    and any other flight of the object, in any worker, replaces it: looked up once the
    headers were out, a slice stored or filled a moment before was gone, and the answer was
    cut after its head (~1% of such answers under churn, most of them following a flight
    of their own that had ended). A slice filled by another worker is not at hand either:
    that worker's claim says nothing of which answer it fills (`answered_elsewhere` waits
    for it instead, and the slice is stored, or not, once it is done).
    """
    key, flight = tx.req.key, tx.flight
    pinned: dict[int, Source] = {}
    for index in needed(tx, meta)[:PINNED]:
        own = flight.fills.get(index) if flight is not None else None
        fill = node.coalescer.fills.get((key, index))
        source: Source | None = None
        if own is not None and own.error is None and own.flight.version == meta.version \
                and (not own.done or _readable(own)):
            source = FillSource(own)  # this flight's, read where it is (the store may not be)
        elif fill is not None and fill.error is None and fill.flight.version == meta.version:
            source = FillSource(fill)
        elif index == 0 and (kept := _in_memory(node, key, meta)) is not None:
            source = StoredSource(kept)
        elif (body := node.store.get_slice(key, meta.version, index)) is not None:
            source = _hot_first(node, key, meta, index, StoredSource(body))
        if source is None:
            for held in pinned.values():
                held.close()
            return None
        pinned[index] = source
    return pinned


async def answered_elsewhere(node: CacheNode, tx: Tx, meta: ObjectMeta) -> bool:
    """Whether another worker's answer may hold the bytes of an object that cannot be
    answered from its slices (no validator joins two answers): its fill of a missing slice
    was waited for, or it replaced facts this worker remembered (`CacheNode.remember`,
    forgotten then). Without it, two workers fetched such an object in turn, each replacing
    the other's copy (a third answer fetched for each request, at times)."""
    key = tx.req.key
    held = [i for i in missing(node, tx, meta) if node.coalescer.claims.held_elsewhere(key, i)]
    if held:  # its slices are claimed until committed: then they are in the index
        await poll(lambda: not node.coalescer.claims.held_elsewhere(key, held[0]),
                   node.wait_timeout, "the worker filling this object")
        node.hot.pop(key)
        return True
    remembered = node.hot.facts(key, time.time())
    if remembered is not None and remembered is not meta:
        return False  # this worker learnt newer facts since: no news in the index
    node.hot.pop(key)
    indexed = node.store.get_meta(key)
    return indexed is not None and indexed.version != meta.version


def attach(node: CacheNode, tx: Tx, meta: ObjectMeta, ranges: list[ByteRange] | None,
           bodiless: bool) -> dict[int, Source]:
    """The sources of the slices an answer will send that are at hand: those the steps
    joined (`Tx.ready`, taken from it), and readers on the fills now in flight (none for an
    answer without a body). Taken before the answer awaits anything: a fill that fails and
    leaves the registry meanwhile must fail the answer, not be fetched again."""
    ready: dict[int, Source] = {}
    if not bodiless and meta.length is not None and tx.direct is None:
        spans = [policy.slice_span(r.start, r.end, meta.slice_size) for r in ranges] \
            if ranges else [range(policy.slice_count(meta.length, meta.slice_size))]
        own = tx.flight.fills if tx.flight is not None else {}
        for span in spans:
            for index in span:
                fill = node.coalescer.fills.get((tx.req.key, index))
                if fill is None and index in own and own[index].private:
                    fill = own[index]  # (`Coalescer.keep`: this answer's own bytes of it)
                if fill is not None and fill.error is None and \
                        fill.flight.version == meta.version and index not in ready:
                    ready[index] = FillSource(fill)
    for index, source in tx.ready.items():
        replaced = ready.pop(index, None)
        if replaced is not None:
            replaced.close()
        ready[index] = source
    tx.ready = {}
    return ready


async def _join_growing(node: CacheNode, tx: Tx, meta: ObjectMeta, index: int) -> Source:
    """A slice of a body whose length is not known yet: wait until it exists or the
    flight has ended. Past the end the body learnt it is empty; a flight that ended
    without learning its end broke off, and the answer must be cut, not completed."""
    flight = tx.flight
    while True:
        fill = node.coalescer.fills.get((tx.req.key, index))
        own = flight.fills.get(index) if flight is not None else None
        if own is not None and (own.private or (own.done and _readable(own))):
            fill = own  # this answer's own (unclaimed: `Coalescer.keep`; held: `hold`)
        if fill is not None and fill.error is None and fill.flight.version == meta.version:
            return FillSource(fill)
        body = node.store.get_slice(tx.req.key, meta.version, index)
        if body is not None:
            return StoredSource(body)
        if flight is None or flight.ended.done():
            if flight is not None and flight.length is not None:
                if index * meta.slice_size >= flight.length:
                    return StoredSource(b"")
                # stored, then evicted before this reader got to it (a slow reader, a
                # small cache): fetched again as a missing slice of a known object
                return await join(node, tx, meta.with_length(flight.length), index)
            raise FillAborted(f"slice {index} of {tx.req.key}: the upstream body broke "
                              "off before it")
        await flight.wait_growth(node.wait_timeout)


def _readable(fill: SliceFill) -> bool:
    """Whether a finished fill's bytes can still be read from it (in memory, or its file
    held open), whatever the store did with the slice since."""
    return fill.buf is not None or fill.fd >= 0


def _hot_first(node: CacheNode, key: str, meta: ObjectMeta, index: int,
               source: Source) -> Source:
    """``source``, a small object's whole body found stored being copied to memory first."""
    assert meta.length is not None
    if isinstance(source, StoredSource) and index == 0 and meta.status == 200 \
            and meta.length <= meta.slice_size and node.hot.accepts(meta.length) \
            and whole_body_digest(key, meta) is None:
        return _keep_hot(node, key, meta, source)
    return source


def _in_memory(node: CacheNode, key: str, meta: ObjectMeta) -> bytes | None:
    """The whole body of ``meta``'s object from the memory tier, if it is there. The fast
    lane answers most such hits; the ones it leaves to the steps (a query string, a
    validator, a signed class, HEAD) read the index and put the body back here each time
    otherwise: a fifth of such a hit's Python calls."""
    if meta.length is None or meta.length > meta.slice_size:
        return None
    entry = node.hot.get(key, time.time())
    if entry is None or entry.meta.version != meta.version or len(entry.body) != meta.length:
        return None
    return entry.body


def _keep_hot(node: CacheNode, key: str, meta: ObjectMeta, source: StoredSource) -> StoredSource:
    """Copy a small, complete object into the memory tier; returns the source to send."""
    body = source.body
    if not isinstance(body, bytes):
        with body:
            body = os.pread(body.fileno(), meta.length or 0, 0)
    if len(body) != meta.length or meta.vary:
        return StoredSource(body)
    now = time.time()
    headers = [(n.encode("latin-1"), v.encode("latin-1"))
               for n, v in node.stored_headers(meta)]
    headers.append((b"content-length", str(len(body)).encode()))
    digest = fields.content_digest((0, len(body) - 1), meta.length, policy.expected_sha256(
        key.partition("?")[0], {n.lower(): v for n, v in meta.headers}), None)
    if digest is not None:  # as `deliver.with_content_digest` sends it on a whole answer
        headers.append((b"content-digest", digest.encode()))
    node.hot.put(key, HotEntry.of(meta, body, headers, now + meta.freshness.remaining(now)))
    return StoredSource(body)
