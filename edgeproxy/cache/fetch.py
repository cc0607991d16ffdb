"""``fetch``: run one flight (one upstream request) and fill the slices it carries.

A `Flight` asks the upstream for slices ``first..last`` of one object (or for the whole body).
Once the answer's headers are in, the node's facts decide what becomes of it (`Plan`): stored
as slices, handed whole to the one request that led it (``direct``: not shareable), or a 304
that refreshes a stored copy. Stored bodies are written into claimed slice files that any
number of requests follow as they grow; a slice is committed only when complete and of the
right length, and, when the answer's bytes have a known SHA-256 (its RFC 9530
``Content-Digest``, or a content address or ``Repr-Digest`` for a whole body), only once the
answer's whole body matched it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from ..errors import (
    FillAborted,
    StorageFault,
    UpstreamProtocolError,
    UpstreamRefused,
)
from ..quietlog import QuietLog
from . import policy, resume, slicesums
from .beresp import BeResp, from_upstream
from .boundary import UPSTREAM_LOG_WINDOW
from .coalesce import Coalescer
from .commits import Commits
from .facts import FactsContradicted, Plan
from .fills import SliceFill
from .flight import Flight, FlightSpec
from .landing import Landing
from .store import CacheStore
from .transport import BeReq, Transport, UpstreamResponse, upstream_error
from .waits import shared

log = logging.getLogger("edgeproxy.fetch")

READ_SIZE = 256 * 1024
# A fill lets the other ready requests run after this many body bytes (see `_pump`).
YIELD_BYTES = 256 * 1024
# A body's first bytes up to this many land alone, and its readers send them before the rest
# of the first read lands (see `_pump`).
FIRST_BYTES = 64 * 1024
# The most slices one flight claims before its answer's headers are in.
MAX_RUN = 64
# How long an answer handed to its leading request waits to be taken before it is dropped.
DIRECT_TAKE_TIMEOUT = 30.0


OnHeaders = Callable[[Flight, BeResp], Plan]


class Fetcher:
    """Runs flights against the node's transport, registering fills with the coalescer."""

    def __init__(self, store: CacheStore, coalescer: Coalescer, transport: Transport, *,
                 on_headers: OnHeaders, on_upstream: Callable[[int, int], None],
                 on_integrity_failure: Callable[[str, str, str], None],
                 on_contradicted: Callable[[str], None], backoff: float) -> None:
        self.store = store
        self.coalescer = coalescer
        self.transport = transport
        self.on_headers = on_headers
        self.on_contradicted = on_contradicted  # drops a key whose stored facts proved wrong
        self.on_upstream = on_upstream
        self.on_integrity_failure = on_integrity_failure
        self.backoff = backoff
        # After a failed connect, new flights fail at once until this time: clients that can
        # be served stale are answered now instead of each waiting out a connect timeout.
        self.down_until = 0.0
        self.down_reason = ""
        self._failures = QuietLog(log, UPSTREAM_LOG_WINDOW)  # (a down upstream fails them all)
        self._tasks: set[asyncio.Task[None]] = set()
        self.commits = Commits(store, coalescer, on_integrity_failure)
        self.landing = Landing(self._grow, self.commits.complete)

    def start(self, spec: FlightSpec, *, facts: bool, context: Any = None) -> Flight | None:
        """Start one flight for ``spec``'s slices not already stored or in flight.

        The first slice is claimed synchronously, so a concurrent request for it joins this
        flight instead of starting its own: that is collapsed forwarding. None if another
        flight (here or in another worker) already fills the first slice.
        """
        flight = self.claim(spec, facts=facts, context=context)
        if flight is not None:
            self.run(flight, spec)
        return flight

    def claim(self, spec: FlightSpec, *, facts: bool, context: Any = None) -> Flight | None:
        """`start` without the run: the flight, its slices claimed, for a caller that sends
        its request itself (`small`); None if another flight fills the first slice."""
        if spec.last is not None:
            # a client's last-byte-pos names no slice until the length is known: one flight
            # claims a bounded run, and the rest is joined (and fetched) as delivery gets there
            spec.last = min(spec.last, spec.first + MAX_RUN - 1)
        flight = Flight(spec.key, spec.first, spec.last, context=context)
        if self.coalescer.claim(flight, spec.first) is None:
            return None
        if spec.last is not None:
            for i in range(spec.first + 1, spec.last + 1):
                if self.coalescer.claim(flight, i) is None:
                    flight.last = i - 1  # filled by someone else: stop the run before it
                    break
        if facts:
            self.coalescer.flights[spec.key] = flight
        return flight

    def run(self, flight: Flight, spec: FlightSpec,
            answer: tuple[UpstreamResponse, BeResp] | None = None) -> None:
        """Run ``flight`` in a task of its own; ``answer``: its request was sent already,
        and this is the answer, headers in, body unread."""
        task = asyncio.get_running_loop().create_task(self._run(flight, spec, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Cancel flights in progress (shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.landing.close()

    # --- one flight ---

    def bereq(self, flight: Flight, spec: FlightSpec, whole: bool = False) -> BeReq:
        headers = list(spec.headers)
        if not (spec.whole or whole):
            size = spec.slice_size
            end = "" if flight.last is None else str((flight.last + 1) * size - 1)
            headers.append((b"range", f"bytes={flight.first * size}-{end}".encode()))
        headers += spec.validators
        return BeReq("GET", spec.target, headers, spec.key)

    async def _run(self, flight: Flight, spec: FlightSpec,
                   answer: tuple[UpstreamResponse, BeResp] | None) -> None:
        resp: UpstreamResponse | None = None
        handed = False
        try:
            if answer is None:
                resp, beresp = await self.send(flight, spec)
            else:
                resp, beresp = answer
            if not spec.whole and resume.whole_instead(flight, beresp, spec.slice_size):
                self.on_upstream(beresp.status, 0)
                await resp.aclose()
                resp = None  # (closed: a failed send below must not close it again)
                t0 = time.time()
                resp = await self.transport.send(self.bereq(flight, spec, whole=True))
                beresp = from_upstream(resp, t0)
            plan = self.on_headers(flight, beresp)
            flight.meta = plan.meta
            flight.content_digest = beresp.content_digest
            if plan.kind != "store":
                self.commits.drop_fills(flight, None)
                flight.shareable = plan.kind == "not_modified"
                if plan.kind == "direct":
                    flight.direct = resp
                    handed = True
                flight.headers.set_result(beresp)
                if handed:
                    await shared(flight.taken, DIRECT_TAKE_TIMEOUT)
                else:
                    self.on_upstream(beresp.status, 0)
                return
            flight.version = plan.meta.version
            flight.digest = plan.digest
            self._claim_body(flight, beresp, spec.slice_size)
            self.plan_fills(flight, beresp, plan, spec.slice_size)
            self.commits.vouching(flight, spec.slice_size)
            flight.headers.set_result(beresp)
            received = await self._pump(flight, resp, beresp, spec.slice_size)
            self.on_upstream(beresp.status, received)
            for _ in range(resume.MAX_CONTINUATIONS):
                span = resume.rest(flight, beresp, received, spec.slice_size)
                if span is None:
                    break
                await resp.aclose()
                resp, before = None, beresp
                resp = await self.transport.send(resume.bereq(spec, span, before))
                beresp = from_upstream(resp, time.time())
                resume.check(beresp, span, before)
                resume.checks_for(flight, beresp, spec.slice_size)
                received = await self._pump(flight, resp, beresp, spec.slice_size)
                self.on_upstream(beresp.status, received)
            if any(not f.done and f.error is None for f in flight.fills.values()):
                raise FillAborted("upstream body ended early at byte "
                                  f"{beresp.body_start + received}")
        except BaseException as exc:  # incl. cancellation: followers must hear of it
            self.failed(flight, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if resp is not None and not handed:
                await resp.aclose()
            elif handed and not flight.taken.done():
                await resp.aclose() if resp is not None else None
            self.ended(flight)

    async def send(self, flight: Flight, spec: FlightSpec) -> tuple[UpstreamResponse, BeResp]:
        """Send the flight's request (unless backing off); its answer, headers in."""
        t0 = time.time()
        if t0 < self.down_until:
            raise UpstreamRefused(f"backing off after: {self.down_reason}")
        resp = await self.transport.send(self.bereq(flight, spec))
        return resp, from_upstream(resp, t0)

    def failed(self, flight: Flight, exc: BaseException) -> None:
        """The flight failed: its waiters hear why, its fills are dropped; a refused connect
        makes the next flights fail at once for a while (`down_until`); an answer that
        contradicts the object's stored facts drops them first (`FactsContradicted`: from
        its headers or a continuation's), before any waiter hears of it."""
        if isinstance(exc, FactsContradicted):
            self.on_contradicted(flight.key)
        err = upstream_error(exc)
        if isinstance(err, UpstreamRefused) and not flight.headers.done() \
                and time.time() >= self.down_until:
            self.down_until = time.time() + self.backoff
            self.down_reason = str(err)
        if not flight.headers.done():
            flight.headers.set_exception(err)
            flight.headers.exception()  # retrieved: every waiter may be gone
        self.commits.drop_fills(flight, err)
        if not isinstance(exc, (TimeoutError, asyncio.CancelledError)):
            self._failures.log(logging.WARNING, type(err).__name__, "fill of %s failed: %s",
                               flight.key, err)

    def ended(self, flight: Flight) -> None:
        """The flight is over, whatever became of it: out of the registry, waiters woken."""
        if self.coalescer.flights.get(flight.key) is flight:
            del self.coalescer.flights[flight.key]
        flight.grew()
        if not flight.ended.done():
            flight.ended.set_result(None)
        self.coalescer.drop_first(flight)

    def _claim_body(self, flight: Flight, beresp: BeResp, size: int) -> None:
        """Claim every slice the answer will carry beyond those asked for (bytes pass by
        anyway), up to the first slice stored at this version or filled by someone else."""
        version = flight.version
        assert version is not None
        if beresp.status == 206:
            if beresp.body_start != flight.first * size:
                raise UpstreamProtocolError("upstream answered a different range than asked")
            end = resume.cut_short(flight, beresp, size)
            if end is not None and beresp.length is not None:  # the rest is joined anew
                last = policy.last_whole_slice(beresp.body_start, end, beresp.length, size)
                if last is None and beresp.if_range is None:  # (`resume.whole_instead`)
                    raise UpstreamProtocolError("upstream answered less than a slice, "
                                                "with no validator to ask for the rest")
                if last is None:
                    last = flight.first  # finished by this flight (`resume`)
                flight.last = last
                for index in [i for i in flight.fills if i > last]:
                    self.commits.discard(flight.fills.pop(index), FillAborted("not answered"))
        elif flight.first > 0 and beresp.length is not None:
            # A whole body for a range request: take the slices before ours as well, as far
            # as the body goes: the range may start far past its end (ours was asked for a
            # client's range; a body of unknown length claims its slices as they come).
            before = range(0, min(flight.first, policy.slice_count(beresp.length, size)))
            stored = self.store.stored_slices(flight.key, version, before)
            for i in before:
                if i not in stored:
                    self.coalescer.claim(flight, i)
        if beresp.length is None or (flight.last is not None and beresp.status == 206):
            return
        count = policy.slice_count(beresp.length, size)
        after = range(max(flight.first, max(flight.fills, default=0)) + 1, count)
        if not after:
            return
        stored = self.store.stored_slices(flight.key, version, after)
        own = flight.meta is not None and flight.meta.unvalidated
        for i in after:
            if i in stored:
                break
            if self.coalescer.claim(flight, i) is None:
                if not own:
                    break  # filled by someone else, for this representation too: joined
                # Another worker fills it for an answer of its own, which nothing ties to
                # this one: this answer's readers take its own bytes (a whole answer was cut
                # where it went on with the other answer's), unstored.
                self.coalescer.keep(flight, i)

    def plan_fills(self, flight: Flight, beresp: BeResp, plan: Plan, size: int) -> None:
        """Fix each claimed slice's expected length now that the body's extent is known."""
        flight.store_meta = plan.store_meta
        length = beresp.length
        value = flight.content_digest[2] if flight.content_digest is not None else None
        flight.checks, flight.whole = policy.body_checks(
            value, plan.digest, beresp.body_start, beresp.body_length, length)
        if flight.checks:
            flight.hasher = hashlib.sha256()
        last = (beresp.body_start + max(0, beresp.body_length - 1)) // size \
            if beresp.body_length is not None else None  # the slice of the answer's last byte
        if last is not None and flight.last is not None and beresp.status == 206:
            last = min(last, flight.last)  # (an answer cut short: its last whole slice)
        count = policy.slice_count(length, size) if length is not None else None
        if length is None and plan.meta.unvalidated:
            # A body of unknown length is read by its requests behind the flight, slice after
            # slice, from the store once committed (`joins._join_growing`); without a
            # validator another answer's flight replaced a slice there before a slow reader
            # got to it, which could fetch it only anew, as another representation: cut.
            for fill in flight.fills.values():
                if not fill.private:
                    self.coalescer.hold(flight, fill)
        sums = slicesums.expected(beresp.slice_sums, size)  # (checked by `Commits.complete`)
        for index, fill in list(flight.fills.items()):
            fill.want = sums.get(index)
            if count is not None and index >= count:
                self.commits.discard(fill, FillAborted("slice beyond the end of the object"))
                del flight.fills[index]
                continue
            if length is not None:
                lo, hi = policy.slice_bounds(index, size, length)
                fill.expected = hi - lo + 1
                fill.hold_last = flight.hasher is not None and index == last
                if fill.expected == 0:
                    self.commits.complete(flight, fill)  # an empty body: nothing will arrive

    async def _pump(self, flight: Flight, resp: UpstreamResponse, beresp: BeResp,
                    size: int) -> int:
        received = 0
        unyielded = 0
        async for chunk in resp.aiter_body():
            if received == 0 and len(chunk) > FIRST_BYTES:
                # The leader's first byte waited for a whole first read (256 KiB: a new file's
                # pages, two hashes) to land: ~0.9 ms of a cold 16 MiB miss's 3 ms to first
                # byte. Its first bytes land alone; the readers send them, then the rest lands.
                await self.landing.write(flight, beresp.body_start, chunk[:FIRST_BYTES], size,
                                         beresp.length, 0)
                received, chunk = FIRST_BYTES, chunk[FIRST_BYTES:]
                await asyncio.sleep(0)
            offloaded = await self.landing.write(flight, beresp.body_start + received, chunk,
                                                 size, beresp.length, received)
            received += len(chunk)
            unyielded = 0 if offloaded else unyielded + len(chunk)
            if unyielded >= YIELD_BYTES:
                # Bytes already buffered come without a pause; hashing and writing a backlog
                # of them in one go made a turn of the loop last tens of milliseconds while
                # many fills ran (a stampede), and every request waiting for its turn, the
                # leaders' first bytes included, waited that long.
                unyielded = 0
                await asyncio.sleep(0)
            if beresp.length is not None and not any(not f.done for f in flight.fills.values()):
                break  # everything we claimed is in; don't pull bytes nobody needs
        if beresp.length is None:
            self._end_unknown(flight, beresp, received, size)
        if flight.hasher is not None and received == beresp.body_length:
            self.commits.vouch(flight, size)
        return received

    def _grow(self, flight: Flight, index: int, size: int) -> SliceFill | None:
        """The next slice of a body of unknown length, claimed as its first byte arrives."""
        fill = self.coalescer.claim(flight, index)
        if fill is None:
            flight.store_meta = "no"  # someone else holds a slice: the object stays partial
            # ... and its readers here take this answer's own bytes of it (`Coalescer.keep`)
            fill = self.coalescer.keep(flight, index)
        elif flight.meta is not None and flight.meta.unvalidated:
            self.coalescer.hold(flight, fill)  # (as `plan_fills` holds the first ones)
        flight.grew()
        return fill

    def _end_unknown(self, flight: Flight, beresp: BeResp, received: int, size: int) -> None:
        """A body without Content-Length has ended: now its length, and last slice, are known."""
        flight.length = beresp.body_start + received
        end = flight.length // size if flight.length % size else max(0, flight.length // size - 1)
        for index in [i for i in flight.fills if i > end]:
            # Claimed for a range past the end (a body of exactly N slices, a client's range
            # from its end on): no byte will come, and none is missing. It ends empty, stored
            # nowhere; a reader of it (the slice after the last, to a body of unknown length)
            # reads the end of the body there.
            beyond = flight.fills.pop(index)
            beyond.discard = True
            self.commits.commit(flight, beyond)
        last = flight.fills.get(end)
        if received == 0 and 0 not in flight.fills:
            last = self._grow(flight, 0, size)
        if last is not None and not last.done and last.error is None:
            last.expected = last.written
            self.commits.complete(flight, last)
        if flight.store_meta != "no" and flight.meta is not None and flight.version:
            meta = flight.meta.with_length(flight.length)
            flight.meta = meta
            if not any(f.discard for f in flight.fills.values()):
                with contextlib.suppress(StorageFault):  # its slices then go unused
                    self.store.set_meta(flight.key, meta)
