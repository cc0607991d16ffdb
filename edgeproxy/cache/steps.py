"""The request pipeline of a cache node: Varnish's ``cnt_*`` steps, hishel's state loop.

``recv → lookup → hit | miss | pass | stale → fetch → deliver`` (a cold whole GET fetches by
itself: ``fetch_small``; ``pass`` is `relay.pass_`, ``deliver`` is `respond.deliver`). Each
step takes the node and the transaction and returns the next step, or None when the answer is
complete; `run` is the loop.
The rules each step applies are pure functions in `policy`, `fields` and `deliver`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..errors import FillLost, HTTPError, UpstreamError, UpstreamTimeout
from ..http import satisfiable
from . import fields, joins, policy, smallfetch
from .beresp import from_upstream
from .deliver import refuse_wrong_empty
from .facts import FactsContradicted, FlightContext
from .relay import pass_
from .respond import deliver
from .sources import FillSource, ForeignSource, Source, StoredSource
from .transport import BeReq
from .tx import Tx
from .verdict import Verdict
from .waits import shared

if TYPE_CHECKING:
    from .meta import ObjectMeta
    from .node import CacheNode

Step = Callable[["CacheNode", "Tx"], Awaitable["Step | None"]]

# How often a miss may lose the race for a claim and look up again before giving up.
LOOKUP_TRIES = 3
# Far more steps than any request takes (looking up again is bounded by LOOKUP_TRIES).
MAX_STEPS = 64
# Request preconditions evaluated before Range (RFC 9110 §13.2.2).
CONDITIONALS = ("if-range", "if-none-match", "if-modified-since")


async def run(node: CacheNode, tx: Tx) -> None:
    """Drive ``tx`` through the steps until one answers (a loop that would not end fails
    the request rather than the worker: a step may answer without awaiting)."""
    step: Step | None = recv
    for _ in range(MAX_STEPS):
        if step is None:
            return
        try:
            step = await step(node, tx)
        except FillLost:
            if tx.responded or tx.restarted or tx.direct is not None:
                raise  # (once the head is out, an error cuts the answer short)
            step = _restart(tx)
    raise RuntimeError(f"the steps for {tx.req.key} did not end in {MAX_STEPS}")


def _restart(tx: Tx) -> Step:
    """Varnish's ``restart``: a slice this request was to read went away before its head
    went out (`FillLost`: joins that kept losing the claim to the other worker under
    eviction churn, its fill there gone unstored), so look up once more rather than answer
    502 (8 of 35,705 answers under an oracle's churn). Once per request; never for a fill
    that failed (an upstream error, bytes that failed their check): that is the answer's
    502."""
    for source in tx.ready.values():
        source.close()
    tx.ready.clear()
    tx.meta = tx.stale = tx.known = None
    tx.flight, tx.led, tx.verdict, tx.restarted = None, False, Verdict.MISS, True
    return lookup


async def recv(node: CacheNode, tx: Tx) -> Step:
    """Check the signature (before any lookup or upstream traffic), then route."""
    node.gate.check(tx.req)
    way = fields.route(tx.req.method)
    if way == "refuse":
        raise HTTPError(405, "method_not_allowed", f"{tx.req.method} is not relayed by this "
                        "cache", headers={"Allow": fields.ALLOWED_METHODS})
    return lookup if way == "lookup" else pass_


async def lookup(node: CacheNode, tx: Tx) -> Step:
    """Memory first, then the index; the stored copy decides hit, stale or miss."""
    req, now = tx.req, time.time()
    meta = node.hot.facts(req.key, now)
    if meta is None and not node.fast.not_stored(req.key) and not node.coalescer.cold(req.key):
        mark = node.hot.mark(req.key)  # (before the read: see `HotTier.mark`)
        meta = node.store.get_meta(req.key)
        if meta is not None:
            node.remember(req.key, meta, now, mark)
    tx.absent = meta is None
    if meta is not None and meta.vary:
        values = fields.vary_values(meta.vary, req.headers)
        if values != meta.vary_values:  # another variant is the latest: ours, if stored
            meta = node.store.get_variant(req.key, values) if values is not None else None
    if meta is not None and meta.freshness.is_fresh(now):
        tx.meta, tx.verdict = meta, Verdict.HIT
        return hit
    if meta is not None and meta.freshness.may_serve_stale_while_revalidating(now):
        tx.meta, tx.verdict = meta, Verdict.STALE
        return stale
    if policy.only_if_cached(req.headers.get("cache-control")):
        raise HTTPError(504, "not_cached", "only-if-cached: nothing stored can answer this")
    tx.stale = meta
    return miss


async def hit(node: CacheNode, tx: Tx) -> Step:
    """Join the first slice, and the first one missing from the store (all of them without a
    validator: `joins.pin`), before any header goes out: a missing slice is fetched with
    ``If-Range``, and an object that changed meanwhile is answered anew rather than announced
    with the old facts (RFC 9111 §3.4)."""
    meta, req = tx.meta, tx.req
    assert meta is not None
    if req.method == "HEAD" or meta.length == 0 or meta.length is None:
        return deliver
    if req.ranges and meta.if_range_fails(req.headers.get("if-range")):  # §13.1.5: whole
        tx.req = req = dataclasses.replace(req, ranges=None)
    first = req.first_byte(meta.length) if meta.status == 200 else 0
    if first is None or first >= meta.length:
        return deliver  # 416, or a ranged request answered whole
    only_cached = policy.only_if_cached(req.headers.get("cache-control"))
    if (policy.request_no_store(req.headers.get("cache-control"))
            or "authorization" in req.headers) and not only_cached \
            and joins.missing(node, tx, meta):
        # What is fetched for it may not be stored (RFC 9111 §5.2.1.5), or not shared (§3.5:
        # its credentials went upstream): its own answer, relayed. A no-store fill was dropped
        # under its own answer (a 502); a credentialed one was stored, and served to others.
        return pass_
    # (held before the headers: once they are out, none that went could be fetched again)
    pinned = joins.pin(node, tx, meta) if meta.unvalidated else {}
    if (only_cached and joins.missing(node, tx, meta)) or pinned is None:
        if only_cached:
            raise HTTPError(504, "not_cached",
                            "only-if-cached: the bytes asked for are not all stored")
        # Without a validator no two answers' bytes are known to be one representation's: all
        # anew, from one unconditional answer of our own, once any under way is in (anywhere).
        running = node.coalescer.flight_for(req.key)
        if running is not None and running is tx.flight and running.version is None:
            del node.coalescer.flights[req.key]  # its answer (a 304) is in: none to join
            running = None
        tx.tries += 1  # (bytes stored and gone at once, each time: an answer of our own)
        if tx.tries > LOOKUP_TRIES:
            return pass_
        try:
            if running is None and await joins.answered_elsewhere(node, tx, meta):
                return lookup
        except UpstreamTimeout:
            return pass_  # the other worker's fetch outlasts the wait: relay our own
        if running is None:  # (a stale copy it revalidated is that meta: not again)
            tx.meta, tx.known, tx.stale, tx.flight, tx.led = None, meta, None, None, False
            return miss
        try:
            await shared(running.ended, node.wait_timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"no answer from upstream in {node.wait_timeout:.0f}s") \
                from None
        return lookup
    if pinned:
        if any(not isinstance(source, StoredSource) for source in pinned.values()):
            tx.verdict = Verdict.MISS if tx.verdict is Verdict.HIT else tx.verdict  # upstream's
        tx.ready.update(pinned)
        return deliver
    start = first // meta.slice_size
    for index in [start, *joins.first_missing(node, tx, meta, start)]:
        source = await joins.join(node, tx, meta, index)
        if isinstance(source, ForeignSource) and \
                not await source.fill.ours(node.wait_timeout, wait=index == start):
            _drop_ready(tx, source)  # the object changed: its new facts, not our old head
            return await _wait_then_look_again(node, tx, index, meta)
        # The flight bringing the slice, led or joined here, was sent with If-Range: its
        # answer may be another version's. Known before our head goes out, not after.
        flight = tx.flight if tx.led else \
            source.fill.flight if isinstance(source, FillSource) else None
        if flight is not None and flight.meta is None:
            with contextlib.suppress(UpstreamError, TimeoutError):  # (deliver meets it)
                await shared(flight.headers, node.wait_timeout)
        if flight is not None and flight.meta is not None and \
                flight.meta.version != meta.version:
            _drop_ready(tx, source)  # the object changed: answer with the new one
            tx.meta, tx.verdict = flight.meta, Verdict.MISS
            if flight.direct is not None:
                if not tx.led:
                    return pass_  # (not stored, and its body is the leader's to relay)
                # an answer that is not stored (an upstream error): relay its own body, never
                # slices fetched anew under its facts
                tx.take_direct(flight, flight.headers.result().body_start)
                return deliver
            return hit
        if not isinstance(source, StoredSource) and tx.verdict is Verdict.HIT:
            tx.verdict = Verdict.MISS  # bytes come from upstream
        tx.ready[index] = source
    return deliver


def _drop_ready(tx: Tx, source: Source) -> None:
    source.close()
    for other in tx.ready.values():
        other.close()
    tx.ready.clear()


async def stale(node: CacheNode, tx: Tx) -> Step:
    """Serve the stale copy now and refresh it once in the background (RFC 5861)."""
    assert tx.meta is not None
    if node.coalescer.flight_for(tx.req.key) is None:
        ctx = FlightContext(tx.req.headers, stale=tx.meta)
        spec = node.spec(tx.req, first=0, last=None, whole=True, stale=tx.meta)
        node.fetcher.start(spec, facts=True, context=ctx)
    return hit


async def miss(node: CacheNode, tx: Tx) -> Step:
    """Lead or join the flight that brings the object's facts, then deliver as bytes come."""
    req = tx.req
    stored = tx.stale or tx.known
    length = stored.length if stored is not None else None
    first = req.first_byte(length)
    if first is None:
        if not tx.whole:
            return await _learn_length(node, tx)
        first = 0
    index = first // node.slice_size
    private = "authorization" in req.headers
    # RFC 9111 §3.5: a request with credentials never waits for, nor shares, another's answer;
    # it leads its own flight, whose answer others may use only if it is storable.
    flight = None if private else node.coalescer.flight_for(req.key)
    tx.led = False  # (a request back from another look may have led a flight before)
    if flight is None:
        if tx.stale is None and tx.known is None and not private and \
                node.coalescer.claims.held_elsewhere(req.key, index):
            node.metrics.collapsed.labels(node.tier).inc()
            try:
                meta = await node.coalescer.foreign_facts(req.key, index, 0.0)
            except UpstreamTimeout:
                return pass_  # that fetch outlasts the wait (a long body of unknown length)
            if meta is not None:
                if not fields.selects(meta.vary, meta.vary_values, req.headers):
                    return pass_  # another variant's facts: an answer of our own
                tx.meta = meta
                return hit
        if smallfetch.eligible(req, tx, private):
            return fetch_small
        last = req.last_slice(node.slice_size)
        spec = node.spec(req, first=index, last=last, whole=not req.ranges or tx.whole,
                         stale=tx.stale, known=tx.known)
        flight = node.fetcher.start(spec, facts=not private,
                                    context=FlightContext(req.headers, stale=tx.stale,
                                                          known=tx.known, private=private,
                                                          absent=tx.absent))
        tx.led = flight is not None
        if flight is None and private:
            return pass_
        if flight is None:
            flight = node.coalescer.flight_for(req.key)
            if flight is None:
                return await _wait_then_look_again(node, tx, index)
    if not tx.led:
        node.metrics.collapsed.labels(node.tier).inc()
    tx.flight = flight
    return fetch


async def fetch_small(node: CacheNode, tx: Tx) -> Step:
    """A cold whole GET, sent by this request itself: a small answer is stored and delivered
    from memory at once; any other is left to its flight, as a miss's (`smallfetch`)."""
    req = tx.req
    spec = node.spec(req, first=0, last=None, whole=True)
    flight = node.fetcher.claim(spec, facts=True,
                                context=FlightContext(req.headers, absent=True))
    if flight is None:  # slice 0 filled here by a flight of no facts (a range's): as a miss
        return await _wait_then_look_again(node, tx, 0)
    tx.flight, tx.led = flight, True
    started = time.perf_counter()
    try:
        small = await smallfetch.fetch(node.fetcher, flight, spec, node.wait_timeout)
    finally:
        tx.upstream_time += time.perf_counter() - started
    if small is None:
        return fetch
    beresp, body = small
    tx.meta, tx.verdict, tx.upstream_cache = flight.meta, Verdict.MISS, beresp.x_cache
    tx.interims = beresp.interims  # (the exchange was this request's: not stored)
    tx.ready = {0: StoredSource(body)}
    return deliver


async def fetch(node: CacheNode, tx: Tx) -> Step:
    """The answer of the flight joined or led comes in: deliver its bytes, or those of the
    stored copy it revalidated (or the stale one it failed to), or pass."""
    req, flight = tx.req, tx.flight
    assert flight is not None
    started = time.perf_counter()
    try:
        beresp = await shared(flight.headers, node.wait_timeout)
    except TimeoutError:
        raise UpstreamTimeout(f"no answer from upstream in {node.wait_timeout:.0f}s") from None
    except FactsContradicted:  # (a 304 of another representation, a 416 inside the stored
        # length or another length: `facts.contradiction`; the copy was dropped)
        if tx.stale is None or tx.tries >= LOOKUP_TRIES:
            raise
        tx.stale, tx.flight, tx.led, tx.tries = None, None, False, tx.tries + 1
        return lookup  # to be fetched anew, unconditionally
    except UpstreamError:
        if tx.stale is not None and tx.stale.freshness.may_serve_stale_on_error(time.time()):
            tx.meta, tx.verdict = tx.stale, Verdict.STALE
            return hit
        raise
    finally:
        tx.upstream_time += time.perf_counter() - started
    tx.upstream_cache = beresp.x_cache
    if tx.led:
        tx.interims = beresp.interims  # (the exchange was this request's: not stored)
    if not tx.led and (not flight.shareable or (flight.meta is not None and not fields.selects(
            flight.meta.vary, flight.meta.vary_values, req.headers))):
        return pass_  # not ours to share (private, another variant, Vary: *): our own
    if flight.direct is not None and tx.led:
        tx.take_direct(flight, beresp.body_start)
        if beresp.status == 206 and (flight.meta.if_range_fails(req.headers.get("if-range"))
                                     or not fields.holds_ranges(req.ranges, beresp.body_start,
                                                                beresp.body_length,
                                                                beresp.length)):
            # an unstored range is no whole (§13.1.5), nor one of fewer bytes than the
            # client's (§15.3.7, an origin that caps ranges): the client's request, relayed
            await node.drop_direct(tx)
            return pass_
    if beresp.status >= 500 and tx.stale is not None and \
            tx.stale.freshness.may_serve_stale_on_error(time.time()):
        await node.drop_direct(tx)
        tx.meta, tx.verdict = tx.stale, Verdict.STALE
        return hit
    if beresp.status == 416 and beresp.length is not None:
        # The slice asked for starts past the end, and so does the client's first range:
        # our own 416. The upstream's body is not relayed, as its fields would describe the
        # representation (a Content-Length of the whole object over an empty body).
        await node.drop_direct(tx)
        if beresp.length == 0:  # (an empty one's bytes are known: are they its address's?)
            refuse_wrong_empty(policy.expected_sha256(req.path, beresp.header_map))
        if any(name in req.headers for name in CONDITIONALS) or \
                satisfiable(req.ranges, beresp.length):
            # Preconditions come before Range (RFC 9110 §13.2.2), and an object that shrank
            # may still hold the client's range (a suffix): its own facts decide
            tx.flight, tx.led = None, False
            return await _learn_length(node, tx)
        raise HTTPError(416, "range_not_satisfiable",
                        f"no satisfiable range for {beresp.length} bytes",
                        headers={"content-range": f"bytes */{beresp.length}"})
    tx.meta = flight.meta
    if beresp.status == 304:
        tx.verdict = Verdict.REVALIDATED
        return hit
    tx.verdict = Verdict.MISS
    return deliver if tx.direct is not None else hit


async def _wait_then_look_again(node: CacheNode, tx: Tx, index: int,
                                held: ObjectMeta | None = None) -> Step:
    """Another worker, or a flight here of no facts, claimed the slice since our look
    (``held``: facts its fill turned out not to be of)."""
    tx.tries += 1
    if tx.tries > LOOKUP_TRIES:
        # Others keep winning the claim (an object never fresh, revalidated by every
        # request): relay this request's own answer, unstored, rather than fail it.
        return pass_
    local = node.coalescer.fills.get((tx.req.key, index))
    if local is not None:
        with contextlib.suppress(UpstreamError, TimeoutError):
            await shared(local.flight.headers, node.wait_timeout)
    else:
        # facts newer than the copy we hold, or the claim's end: the copy itself is no news
        held = held or tx.stale or tx.known
        since = held.freshness.response_time if held is not None else 0.0
        try:
            await node.coalescer.foreign_facts(tx.req.key, index, since)
        except UpstreamTimeout:
            return pass_  # that fetch outlasts the wait (as in `miss`): relay our own
    return lookup


async def _learn_length(node: CacheNode, tx: Tx) -> Step:
    """The object's facts first, by HEAD: for a suffix range on an object of unknown
    length, and for a conditional range that turned out to start past the end."""
    req = tx.req
    t0 = time.time()
    resp = await node.transport.send(BeReq("HEAD", req.target,
                                           fields.fill_headers(req.raw_headers, node.name),
                                           req.key))
    await resp.aclose()
    beresp = from_upstream(resp, t0)
    if beresp.status != 200 or beresp.length is None:
        tx.req = dataclasses.replace(req, ranges=None)
        return miss  # not rangeable: answer whole
    meta = node.facts.head_facts(req.key, beresp, req.headers)
    if meta is None:  # facts we may not keep (no validator ties them to a GET's bytes):
        tx.whole = True  # the range comes from the object fetched whole, one answer
        return miss
    tx.meta, tx.verdict, tx.upstream_cache = meta, Verdict.MISS, beresp.x_cache
    return hit
