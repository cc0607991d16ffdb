"""The upstream side of a cache node: `fetch` with collapsed forwarding and streaming fills.

One `SpanFetch` is one upstream request (``bereq``) for a run of aligned slices. Each slice it
covers is a `SliceFill`: a temp file that grows as bytes arrive, which any number of client
requests follow at once (collapsed forwarding, and no waiting for the fill to end). A slice is
committed to the store only when it is complete and its length is right; a fetch that breaks
off marks its unfinished fills failed, so followers abort instead of delivering a short body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from ..errors import UpstreamError
from . import policy
from .beresp import BeResp, from_response, int_header, read_small, upstream_error
from .fills import FOREIGN_POLL, ForeignFill, SliceFill, SpanFetch
from .locks import FillLocks
from .store import CacheStore

log = logging.getLogger("edgeproxy.fetch")

# Seconds an uncacheable fill's temp file stays readable for the requests that joined it.
UNCACHEABLE_LINGER = 30.0


# Decides, from the upstream's response, whether and how to store: returns the version string
# to commit slices under (None: do not store) and the SHA-256 the body must have, if known —
# policy lives in the node, not here.
OnHeaders = Callable[[str, BeResp], tuple[str | None, str | None]]


class Fetcher:
    """Runs span fetches against one upstream and tracks in-flight slice fills."""

    def __init__(self, store: CacheStore, client: httpx.AsyncClient, upstream: str, *,
                 slice_size: int, tier: str, on_headers: OnHeaders,
                 on_upstream: Callable[[int, int], None] | None = None,
                 backoff: float = 2.0,
                 on_integrity_failure: Callable[[str, str], None] | None = None) -> None:
        self.store = store
        self.client = client
        self.upstream = upstream.rstrip("/")
        self.slice_size = slice_size
        self.tier = tier
        self.on_headers = on_headers
        self.on_upstream = on_upstream or (lambda status, nbytes: None)
        self.fills: dict[tuple[str, int], SliceFill] = {}
        self.locks = FillLocks(store)
        self.backoff = backoff
        self.on_integrity_failure = on_integrity_failure or (lambda key, why: None)
        # After a failed connect, new fetches fail at once until this time: clients that can
        # be served stale are answered now instead of each waiting out a connect timeout.
        self.down_until = 0.0
        self.down_reason = ""
        self.heads: dict[str, asyncio.Future[BeResp]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def forget(self, key: str) -> None:
        """Purge: fills in flight for ``key`` finish for their followers but are not stored."""
        for (k, _i), fill in self.fills.items():
            if k == key:
                fill.discard = True

    def forget_prefix(self, prefix: str) -> None:
        """`forget` every key that starts with ``prefix``."""
        for (k, _i), fill in self.fills.items():
            if k.startswith(prefix):
                fill.discard = True

    async def foreign_fill(self, key: str, index: int, version: str | None,
                           timeout: float) -> ForeignFill | None:
        """A follower for the slice while another worker process fills it; None once no
        other process holds it (then it is stored, or nobody fills it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.locks.held_elsewhere(key, index):
            temp = self.store.fill_record(key, index)
            if temp is not None:
                with contextlib.suppress(FileNotFoundError):  # committed just now
                    return ForeignFill(
                        key, index, Path(temp), version,
                        is_running=lambda: self.locks.held_elsewhere(key, index),
                        is_stored=lambda: version is not None
                        and self.store.has_slice(key, version, index),
                    )
            if loop.time() > deadline:
                raise UpstreamError(f"slice {index} stayed claimed by another worker")
            await asyncio.sleep(FOREIGN_POLL)  # its record is on the way
        return None

    def fill_for(self, key: str, index: int) -> SliceFill | None:
        """The in-flight fill of a slice, if any."""
        return self.fills.get((key, index))

    def start_span(self, key: str, path: str, first: int, last: int | None,
                   version: str | None = None,
                   validators: dict[str, str] | None = None) -> SpanFetch | None:
        """Start one upstream request for slices ``first..last`` not already in flight.

        Claims (registers) the slices synchronously, so a concurrent request for any of them
        follows this fetch instead of starting its own: that is collapsed forwarding. The run
        stops before the first slice that is already stored (at ``version``) or in flight.
        ``validators`` (``If-None-Match``/``If-Modified-Since``) make it a revalidation: a 304
        answer refreshes the stored facts and no body moves. None if another worker process
        holds the first slice.
        """
        if last is not None:
            for i in range(first + 1, last + 1):
                stored = version is not None and self.store.has_slice(key, version, i)
                if stored or (key, i) in self.fills:
                    last = i - 1
                    break
        span = SpanFetch(key, first, last)
        if not self._claim(span, first):
            return None  # another worker process claimed it first: follow that instead
        for i in range(first + 1, (last if last is not None else first) + 1):
            if not self._claim(span, i):
                span.last = i - 1  # another worker fills this one: stop the run before it
                break
        task = asyncio.create_task(self._run(span, path, validators or {}))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return span

    async def head(self, key: str, path: str, timeout: float) -> BeResp:
        """Learn an object's facts without its body (coalesced per key)."""
        fut = self.heads.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self.heads[key] = fut
            task = asyncio.create_task(self._run_head(key, path, fut))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await asyncio.wait_for(asyncio.shield(fut), timeout)

    async def aclose(self) -> None:
        """Cancel fills in progress (shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.locks.close()

    # --- internals ---

    def _check_up(self, now: float) -> None:
        if now < self.down_until:
            raise UpstreamError(f"upstream unreachable (backing off): {self.down_reason}")

    def _note_down(self, exc: BaseException, err: UpstreamError) -> None:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            self.down_until = time.time() + self.backoff
            self.down_reason = str(err)

    def _claim(self, span: SpanFetch, index: int) -> bool:
        if (span.key, index) in self.fills:
            return False
        temp = self.store.new_temp()
        if not self.locks.claim(span.key, index, temp):
            return False
        fill = SliceFill(span.key, index, temp, span)
        self.fills[(span.key, index)] = fill
        span.fills[index] = fill
        return True

    def _release(self, fill: SliceFill) -> None:
        if self.fills.get((fill.key, fill.index)) is fill:
            del self.fills[(fill.key, fill.index)]
            self.locks.release(fill.key, fill.index)
        fill.close()

    def _bereq_headers(self, extra: dict[str, str]) -> dict[str, str]:
        # Fills are shared by many clients, so nothing client-specific goes upstream; identity
        # encoding keeps stored bytes equal to the representation ranges refer to.
        return {"accept-encoding": "identity", "via": f"1.1 edgeproxy-{self.tier}", **extra}

    async def _run_head(self, key: str, path: str, fut: asyncio.Future[BeResp]) -> None:
        try:
            t0 = time.time()
            self._check_up(t0)
            resp = await self.client.head(self.upstream + path, headers=self._bereq_headers({}))
            beresp = from_response(resp, t0)
            if resp.status_code == 200:
                beresp.length = int_header(resp.headers.get("content-length"))
            self.on_upstream(resp.status_code, 0)
            fut.set_result(beresp)
        except Exception as exc:
            err = upstream_error(exc)
            self._note_down(exc, err)
            fut.set_exception(err)
            fut.exception()  # retrieved: every waiter may have timed out already
        finally:
            self.heads.pop(key, None)

    async def _run(self, span: SpanFetch, path: str, validators: dict[str, str]) -> None:
        size = self.slice_size
        start = span.first * size
        end = "" if span.last is None else str((span.last + 1) * size - 1)
        rng = f"bytes={start}-{end}"
        received = 0
        try:
            t0 = time.time()
            self._check_up(t0)
            bereq = self.client.build_request("GET", self.upstream + path,
                                              headers=self._bereq_headers(
                                                  {"range": rng, **validators}))
            resp = await self.client.send(bereq, stream=True)
            try:
                beresp = from_response(resp, t0)
                if resp.status_code not in (200, 206):
                    beresp.body = await read_small(resp)
                    self.on_upstream(resp.status_code, len(beresp.body))
                    span.headers_ready.set_result(beresp)
                    raise _NotABody(resp.status_code)
                self._claim_rest(span, beresp)
                version, span.digest = self.on_headers(span.key, beresp)
                span.headers_ready.set_result(beresp)
                self._plan(span, beresp, version)
                async for chunk in resp.aiter_raw(256 * 1024):
                    self._write(span, beresp.body_start + received, chunk)
                    received += len(chunk)
                    if not any(not f.done for f in span.fills.values()):
                        break  # everything we claimed is in; don't pull bytes nobody needs
                self.on_upstream(resp.status_code, received)
            finally:
                await resp.aclose()
            unfinished = [f for f in span.fills.values() if not f.done]
            if unfinished:
                raise UpstreamError(f"upstream body ended early at byte {received}")
        except _NotABody as exc:
            self._fail_all(span, UpstreamError(f"upstream answered {exc.status}"))
        except BaseException as exc:  # incl. cancellation: followers must hear of it
            err = upstream_error(exc)
            self._note_down(exc, err)
            if not span.headers_ready.done():
                span.headers_ready.set_exception(err)
                span.headers_ready.exception()  # mark retrieved: waiters may have gone
            self._fail_all(span, err)
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.warning("fill of %s failed: %s", span.key, err)

    def _claim_rest(self, span: SpanFetch, beresp: BeResp) -> None:
        """Claim the slices an answer will carry beyond those asked for.

        Runs before the object's facts are stored: a worker that sees the facts must also
        see every claim, or it would fetch the same slices again.
        """
        length = beresp.length
        if length is None:
            raise UpstreamError("upstream sent no length; cannot slice")
        count = policy.slice_count(length, self.slice_size)
        version = beresp.version
        if span.last is None:
            # Open span: claim the rest of the object, up to the first slice already stored or
            # in flight (those bytes are someone else's and are skipped).
            for i in range(span.first + 1, count):
                if self.store.has_slice(span.key, version, i) or not self._claim(span, i):
                    break
        if beresp.body_start != 0 and beresp.body_start != span.first * self.slice_size:
            raise UpstreamError("upstream answered a different range than asked")
        if beresp.body_start == 0 and span.first > 0:
            # The upstream ignored Range and sends the whole body: take the slices before ours
            # as well, since the bytes pass by anyway.
            for i in range(0, span.first):
                if not self.store.has_slice(span.key, version, i):
                    self._claim(span, i)

    def _plan(self, span: SpanFetch, beresp: BeResp, version: str | None) -> None:
        """Fix each claimed slice's expected length now that the object's length is known."""
        length = beresp.length
        assert length is not None
        count = policy.slice_count(length, self.slice_size)
        whole = span.first == 0 and beresp.body_start == 0 and (
            span.last is None or span.last >= count - 1)
        if span.digest is not None and whole:
            span.hasher = hashlib.sha256()
        for index, fill in list(span.fills.items()):
            if index >= count:
                fill.fail(UpstreamError("slice beyond the end of the object"))
                self._discard(fill)
                del span.fills[index]
                continue
            lo, hi = policy.slice_bounds(index, self.slice_size, length)
            fill.expected = hi - lo + 1
            fill.version = version
            fill.hold_last = span.hasher is not None and index == count - 1
            if fill.expected == 0:
                self._complete(span, fill)

    def _write(self, span: SpanFetch, offset: int, chunk: bytes) -> None:
        if span.hasher is not None:
            span.hasher.update(chunk)
        size = self.slice_size
        view = memoryview(chunk)
        while view:
            index, within = divmod(offset, size)
            take = min(len(view), size - within)
            fill = span.fills.get(index)
            if fill is not None and not fill.done and fill.error is None:
                assert fill.expected is not None
                if within != fill.written:
                    raise UpstreamError(f"slice {index}: bytes out of order")
                fill.write(view[: min(take, fill.expected - within)])
                if fill.written >= fill.expected:
                    self._complete(span, fill)
            view = view[take:]
            offset += take

    def _complete(self, span: SpanFetch, fill: SliceFill) -> None:
        if fill.hold_last and not self._verified(span, fill):
            return
        fill.finish()
        # Commit and unregister in one synchronous step: a request that misses the fill in the
        # registry finds the slice in the store.
        if fill.version is not None and not fill.discard:
            try:
                self.store.commit_slice(span.key, fill.version, fill.index, fill.temp, fill.written)
            except OSError as exc:
                log.error("could not commit slice %s/%d: %s", span.key, fill.index, exc)
                fill.temp.unlink(missing_ok=True)
        else:
            # Uncacheable: nothing to commit, but the requests that waited on this fetch's
            # headers may not have attached yet; let the file linger for them a while.
            asyncio.get_running_loop().call_later(UNCACHEABLE_LINGER, fill.temp.unlink, True)
        self._release(fill)

    def _verified(self, span: SpanFetch, fill: SliceFill) -> bool:
        """Check the whole body's SHA-256 before its last byte reaches anyone.

        On a mismatch nothing of the object stays stored (earlier slices included), the fill
        fails so followers abort short of the end, and the failure is counted.
        """
        got = span.hasher.hexdigest()
        if hmac.compare_digest(got, span.digest or ""):
            return True
        why = f"body SHA-256 {got[:16]}… does not match the expected {(span.digest or '')[:16]}…"
        log.error("integrity failure on %s: %s", span.key, why)
        self.store.purge(span.key)
        for other in span.fills.values():
            other.discard = True
        fill.fail(UpstreamError(f"integrity check failed: {why}"))
        self._discard(fill)
        self.on_integrity_failure(span.key, why)
        return False

    def _discard(self, fill: SliceFill) -> None:
        fill.temp.unlink(missing_ok=True)
        self._release(fill)

    def _fail_all(self, span: SpanFetch, err: BaseException) -> None:
        for fill in span.fills.values():
            if not fill.done:
                fill.fail(err)
                self._discard(fill)
        if span.hasher is not None:
            # The slices this span already committed were to be vouched for by the digest
            # at the end, which never came: drop them rather than keep unverified bytes.
            self.store.purge(span.key)


class _NotABody(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status
