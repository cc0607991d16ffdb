"""A caching node (edge or shield) as a lean ASGI app.

A client request moves ``recv → lookup → hit | miss | stale → fetch → deliver``, as in Varnish.
Client-side names are ``req``/``resp``; upstream-side ones ``bereq``/``beresp`` (in `fetch`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import httpx

from ..config import Config, ContentClass
from ..errors import ConfigError, HTTPError, UpstreamError
from ..http import ByteRange, RangeNotSatisfiable, parse_range, resolve_ranges
from ..signing import (
    BadSignature,
    DownloadSigner,
    SignatureExpired,
    has_download_signature,
    signature_params,
)
from . import admin, asgi, policy
from .beresp import BeResp
from .deliver import CLAIM_ATTEMPTS, BodySource, Multipart, Send
from .facts import Facts
from .fetch import Fetcher
from .fills import FOREIGN_POLL, SpanFetch
from .hot import HotEntry, HotTier, PurgeEpoch
from .metrics import CONTENT_TYPE_LATEST, NodeMetrics
from .passthrough import pass_request
from .store import CacheStore, ObjectMeta, SliceBody

log = logging.getLogger("edgeproxy.cache")

Receive = Any
Scope = dict[str, Any]

# Request headers that take a request off the hot path (the full path answers them).
_NOT_PLAIN = frozenset({b"range", b"if-none-match", b"if-range", b"if-modified-since",
                        b"authorization"})


@dataclass
class Req:
    """The client request as a cache sees it (``req``)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    key: str

    @classmethod
    def from_scope(cls, scope: Scope) -> Req:
        """Parse the ASGI scope (first value of each header, names lower-cased)."""
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        query = scope.get("query_string", b"").decode("latin-1")
        path = scope["path"]
        # Signature parameters are not part of the key: one copy serves every signed URL.
        key = policy.cache_key(path, query, signature_params())
        return cls(scope["method"], path, query, headers, key)

    @property
    def upstream_path(self) -> str:
        """Path and query as sent upstream (raw, as received)."""
        return self.path + (f"?{self.query}" if self.query else "")


class CacheNode:
    """The ASGI application of one edge or shield."""

    def __init__(self, config: Config, tier: str, *, upstream: str | None = None) -> None:
        self.config = config
        self.tier = tier
        self.upstream = (upstream or config.node(tier).upstream).rstrip("/")
        if not self.upstream:
            raise ConfigError(f"{tier}.upstream: no upstream URL configured")
        self.classes: dict[str, ContentClass] = {c.name: c for c in config.content_classes}
        self.store = CacheStore(config.cache_dir(tier), config.node(tier).cache_size)
        self.facts = Facts(config, tier, self.store)
        self.signer = DownloadSigner.from_config(config.download_signing)
        self.hot = HotTier(config.cache.memory_size, config.cache.memory_max_object,
                           PurgeEpoch(self.store.directory / "purge.epoch"))
        self._signed_classes = {c.name for c in config.content_classes if c.require_signature}
        self._hit_x_cache = f"HIT from {tier}".encode()
        self.metrics = NodeMetrics(tier)
        self._client: httpx.AsyncClient | None = None
        self._fetcher: Fetcher | None = None
        self._refreshing: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    # --- ASGI plumbing ---

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/healthz":
            await asgi.send_json(send, 200, {"status": "ok", "role": self.tier})
            return
        if path == "/metrics":
            body = self.metrics.render(self.store.volume(), self.config.node(self.tier).cache_size)
            await asgi.send_simple(send, 200, body, CONTENT_TYPE_LATEST)
            return
        if path.startswith(admin.PREFIX):
            try:
                await admin.handle(self, scope, receive, send)
            except HTTPError as exc:
                await asgi.send_json(send, exc.status, exc.body(), exc.headers)
            return
        started = time.perf_counter()
        if await self._serve_hot(scope, send, started):
            return
        req = Req.from_scope(scope)
        result, cls, nbytes = "ERROR", policy.DEFAULT_CLASS, 0
        try:
            result, cls, nbytes = await self.recv(req, scope, receive, send)
        except HTTPError as exc:
            await asgi.send_json(send, exc.status, exc.body(), exc.headers,
                                 head=req.method == "HEAD")
        finally:
            self.metrics.observe(result, cls, nbytes, time.perf_counter() - started)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def startup(self) -> None:
        """Open the upstream connection pool (needs the running loop)."""
        timeout = self.config.cache.upstream_timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
        )
        self._fetcher = Fetcher(self.store, self._client, self.upstream,
                                slice_size=self.config.cache.slice_size, tier=self.tier,
                                on_headers=self._on_headers,
                                on_upstream=self.metrics.upstream,
                                backoff=self.config.cache.upstream_backoff,
                                on_integrity_failure=self._integrity_failure)

    async def shutdown(self) -> None:
        """Stop fills and close the pool and the index."""
        if self._fetcher is not None:
            await self._fetcher.aclose()
        if self._client is not None:
            await self._client.aclose()
        self.store.close()

    def _on_headers(self, key: str, beresp: BeResp) -> tuple[str | None, str | None]:
        # Any upstream answer may carry new facts: the memory copy must not outlive them.
        self.hot.pop(key)
        return self.facts.on_headers(key, beresp)

    def _integrity_failure(self, key: str, why: str) -> None:
        self.metrics.integrity_failures.labels(self.tier).inc()

    # --- admin ---

    def purge(self, path: str) -> int:
        """Drop one object (all its slices); fills in flight for it will not be stored."""
        key = policy.cache_key(*path.partition("?")[::2])
        self.fetcher.forget(key)
        self.hot.purged()
        return 1 if self.store.purge(key) else 0

    def clear(self) -> None:
        """Empty this node's cache (disk and every worker's memory tier)."""
        self.hot.purged()
        self.store.clear()

    def purge_prefix(self, prefix: str) -> int:
        """Drop every object whose key starts with ``prefix``."""
        self.fetcher.forget_prefix(prefix)
        self.hot.purged()
        return self.store.purge_prefix(prefix)

    @property
    def fetcher(self) -> Fetcher:
        """The upstream side (available after startup)."""
        assert self._fetcher is not None, "lifespan startup has not run"
        return self._fetcher

    # --- recv → lookup → hit | miss | stale ---

    async def recv(self, req: Req, scope: Scope, receive: Receive,
                   send: Send) -> tuple[str, str, int]:
        """Route one client request; returns (result, content class, body bytes sent)."""
        self._check_signature(req)
        if req.method not in ("GET", "HEAD") or "authorization" in req.headers:
            if req.method not in ("GET", "HEAD", "OPTIONS", "TRACE"):
                self.store.purge(req.key)  # RFC 9111 §4.4: unsafe methods invalidate
                self.hot.purged()
            assert self._client is not None
            nbytes = await pass_request(self._client, self.upstream, self.tier, scope,
                                        receive, send)
            return "PASS", policy.DEFAULT_CLASS, nbytes
        now = time.time()  # lookup: memory first, then the index
        hot = self.hot.get(req.key, now)
        if hot is not None:
            return await self.deliver(req, hot.meta, send, result="HIT", upstream_cache=None,
                                      prefetched={0: hot.body})
        meta = self.hot.facts(req.key, now) or self.store.get_meta(req.key)
        if meta is not None and meta.freshness.is_fresh(now):
            return await self.hit(req, meta, send)
        if meta is not None and meta.status == 200 and \
                meta.freshness.may_serve_stale_while_revalidating(now):
            self._refresh_in_background(req, meta)
            return await self.deliver(req, meta, send, result="STALE", upstream_cache=None)
        return await self.miss(req, meta, send)

    def _check_signature(self, req: Req) -> None:
        """Signed URLs are checked here, before any lookup or upstream traffic (seed 004:
        signed URLs with expiry). A signature that is present must be valid even where the
        content class does not require one."""
        params = dict(parse_qsl(req.query, keep_blank_values=True)) if req.query else {}
        signed = has_download_signature(params)
        if not signed:
            if not self._signed_classes:
                return
            cls = policy.classify(req.path, None, self.config.content_classes)
            if cls is not None and cls.require_signature:
                raise HTTPError(403, "signature_required",
                                f"{cls.name} URLs must be signed (exp, kid, sig)")
            return
        try:
            self.signer.verify_download(req.path, params, time.time())
        except SignatureExpired as exc:
            raise HTTPError(403, "signature_expired", str(exc)) from None
        except BadSignature as exc:
            raise HTTPError(403, "bad_signature", str(exc)) from None

    def _refresh_in_background(self, req: Req, stale: ObjectMeta) -> None:
        """One revalidation per key while clients keep getting the stale copy (RFC 5861)."""
        if req.key in self._refreshing:
            return
        self._refreshing.add(req.key)
        bg = Req("GET", req.path, req.query, {}, req.key)

        async def refresh() -> None:
            try:
                beresp, _span = await self.fetch(bg, stale)
                if beresp.status == 304:
                    self.facts.revalidated(bg.key, stale, beresp)
            except UpstreamError as exc:
                log.info("background refresh of %s failed: %s", bg.key, exc)
            finally:
                self._refreshing.discard(bg.key)

        task = asyncio.get_running_loop().create_task(refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def hit(self, req: Req, meta: ObjectMeta, send: Send) -> tuple[str, str, int]:
        """Serve a fresh stored object (slices missing from the store are fetched).

        The first slice is looked up before any header is sent: if it is gone (evicted, or a
        fill that failed), the stored facts are checked upstream first, so a changed object is
        never announced with the old length and then cut short.
        """
        prefetched: dict[int, SliceBody] = {}
        first = self._first_byte(req, meta)
        if req.method == "GET" and meta.status == 200 and meta.length and first is not None:
            index = first // meta.slice_size
            if self.fetcher.fill_for(req.key, index) is None:
                body = self.store.get_slice(req.key, meta.version, index)
                if body is not None:
                    prefetched[index] = self._keep_hot(req.key, meta, index, body)
                elif not self.fetcher.locks.held_elsewhere(req.key, index):
                    return await self.miss(req, meta, send)
                # else: another worker is filling it right now; delivery follows that fill
        return await self.deliver(req, meta, send, result="HIT", upstream_cache=None,
                                  prefetched=prefetched)

    def _keep_hot(self, key: str, meta: ObjectMeta, index: int, body: SliceBody) -> SliceBody:
        """Copy a small, complete object into the hot tier; returns the body to send."""
        if index != 0 or not self.hot.accepts(meta.length) or meta.length is None \
                or meta.length > meta.slice_size:
            if meta.length is not None and meta.status == 200:
                now = time.time()
                self.hot.remember_facts(key, meta, now + meta.freshness.remaining(now))
            return body
        if isinstance(body, bytes):
            data = body
        else:
            with body:
                data = os.pread(body.fileno(), meta.length, 0)
        if len(data) == meta.length:
            headers = [(n.encode("latin-1"), v.encode("latin-1"))
                       for n, v in self._base_headers(meta)]
            headers.append((b"content-length", str(meta.length).encode()))
            fresh_until = time.time() + meta.freshness.remaining(time.time())
            self.hot.put(key, HotEntry(meta, data, headers, fresh_until))
        return data

    async def _serve_hot(self, scope: Scope, send: Send, started: float) -> bool:
        """The hit path for hot objects: a dict lookup and two sends, nothing else."""
        if scope["method"] != "GET" or scope["query_string"]:
            return False
        entry = self.hot.get(scope["path"], time.time())
        if entry is None or entry.meta.content_class in self._signed_classes:
            return False
        for name, _value in scope["headers"]:
            if name in _NOT_PLAIN:
                return False  # ranges, validators, credentials: the full path handles them
        age = str(int(entry.meta.freshness.age(time.time()))).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*entry.headers, (b"age", age), (b"x-cache", self._hit_x_cache)]})
        await send({"type": "http.response.body", "body": entry.body})
        self.metrics.observe("HIT", entry.meta.content_class, len(entry.body),
                             time.perf_counter() - started)
        return True

    def _base_headers(self, meta: ObjectMeta) -> list[tuple[str, str]]:
        """The stored end-to-end headers as this tier sends them (its Cache-Control, Via)."""
        headers = [(n, v) for n, v in meta.headers if n.lower() not in ("cache-control", "via")]
        cc = policy.downstream_cache_control(self.classes.get(meta.content_class), self.tier,
                                             meta.header("cache-control"))
        if cc:
            headers.append(("cache-control", cc))
        headers.append(("via", policy.via(meta.header("via"), self.tier)))
        if meta.status == 200:
            headers.append(("accept-ranges", "bytes"))
        return headers

    async def miss(self, req: Req, stale: ObjectMeta | None,
                   send: Send) -> tuple[str, str, int]:
        """Fetch the object's facts upstream (coalesced), then deliver as they stream in."""
        self.hot.pop(req.key)
        try:
            beresp, span = await self.fetch(req, stale)
        except UpstreamError as exc:
            if stale is not None and stale.freshness.may_serve_stale_on_error(time.time()):
                return await self.deliver(req, stale, send, result="STALE", upstream_cache=None)
            status = 504 if "timed out" in str(exc) else 502
            raise HTTPError(status, "upstream_unavailable", str(exc), tier=self.tier) from None
        if beresp.status == 304 and stale is not None:
            meta = self.facts.revalidated(req.key, stale, beresp)
            return await self.deliver(req, meta, send, result="REVALIDATED",
                                      upstream_cache=beresp.x_cache)
        if beresp.status in policy.NEGATIVE_STATUSES:
            meta = self.facts.negative(req.key, beresp)
            return await self.deliver(req, meta, send, result="MISS", upstream_cache=beresp.x_cache)
        if beresp.status == 416:
            if beresp.length is None:
                raise HTTPError(502, "bad_upstream_answer", "upstream sent 416 without a length")
            raise HTTPError(416, "range_not_satisfiable", "no satisfiable range",
                            headers={"content-range": f"bytes */{beresp.length}"})
        if beresp.status not in (200, 206):
            if stale is not None and beresp.status >= 500 \
                    and stale.freshness.may_serve_stale_on_error(time.time()):
                return await self.deliver(req, stale, send, result="STALE", upstream_cache=None)
            return await self._relay_error(req, beresp, send)
        stored = self.store.get_meta(req.key)
        if stored is None or stored.version != beresp.version:
            fleeting = self.facts.meta_from(req.key, beresp, store=False)  # uncacheable
            return await self.deliver(req, fleeting, send, result="MISS",
                                      upstream_cache=beresp.x_cache, span=span)
        return await self.deliver(req, stored, send, result="MISS", upstream_cache=beresp.x_cache)

    async def fetch(self, req: Req, stale: ObjectMeta | None) -> tuple[BeResp, SpanFetch | None]:
        """Start (or join) the upstream fetch that tells us the object's facts."""
        timeout = self.config.cache.fill_wait_timeout
        first = self._first_byte(req, stale)
        if first is None:  # a suffix range on an unknown object: learn its length first
            beresp = await self.fetcher.head(req.key, req.upstream_path, timeout)
            if beresp.status == 200:
                self._on_headers(req.key, beresp)
            return beresp, None
        index = first // self.config.cache.slice_size
        for _attempt in range(CLAIM_ATTEMPTS):
            fill = self.fetcher.fill_for(req.key, index)
            if fill is None and self.fetcher.locks.held_elsewhere(req.key, index):
                # Another worker process leads this fill: wait for the facts it stores.
                self.metrics.collapsed.labels(self.tier).inc()
                known = await self._facts_from_other_worker(req, index, stale, timeout)
                if known is not None:
                    return known, None
                continue
            if fill is not None:
                self.metrics.collapsed.labels(self.tier).inc()
                span = fill.span
            else:
                started = self.fetcher.start_span(req.key, req.upstream_path, index,
                                                  self._last_slice(req),
                                                  validators=self._validators(stale))
                if started is None:
                    continue  # claimed by another worker a moment ago
                span = started
            try:
                return await asyncio.wait_for(asyncio.shield(span.headers_ready), timeout), span
            except TimeoutError:
                raise UpstreamError(f"upstream timed out: no answer in {timeout:.0f}s") from None
        raise UpstreamError(f"could not take part in the fill of slice {index}")

    @staticmethod
    def _validators(stale: ObjectMeta | None) -> dict[str, str]:
        if stale is None or stale.status != 200:
            return {}
        if stale.etag:
            return {"if-none-match": stale.etag}
        return {"if-modified-since": stale.last_modified} if stale.last_modified else {}

    async def _facts_from_other_worker(self, req: Req, index: int, stale: ObjectMeta | None,
                                       timeout: float) -> BeResp | None:
        """Poll the shared index for the facts another worker's fill stores.

        None if that fill ended without storing any (uncacheable, failed): fetch ourselves.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        since = stale.freshness.response_time if stale is not None else 0.0
        while loop.time() < deadline:
            meta = self.store.get_meta(req.key)
            if meta is not None and meta.freshness.response_time > since:
                return BeResp(
                    status=200, headers=list(meta.headers), length=meta.length,
                    etag=meta.etag, last_modified=meta.last_modified,
                    content_type=meta.content_type, request_time=meta.freshness.response_time,
                    response_time=meta.freshness.response_time, x_cache=meta.upstream_cache)
            if not self.fetcher.locks.held_elsewhere(req.key, index):
                return None
            await asyncio.sleep(FOREIGN_POLL)
        raise UpstreamError(f"upstream timed out: no answer in {timeout:.0f}s")

    # --- policy glue ---

    def _first_byte(self, req: Req, known: ObjectMeta | None) -> int | None:
        specs = parse_range(req.headers.get("range")) if req.method == "GET" else None
        if specs is None:
            return 0
        if known is not None and known.length is not None:
            try:
                return resolve_ranges(specs, known.length)[0].start
            except RangeNotSatisfiable:
                return 0
        firsts = [s.first for s in specs]
        return None if None in firsts else min(f for f in firsts if f is not None)

    def _last_slice(self, req: Req) -> int | None:
        specs = parse_range(req.headers.get("range")) if req.method == "GET" else None
        if not specs or any(s.first is None or s.last is None for s in specs):
            return None
        return max(s.last for s in specs if s.last is not None) // self.config.cache.slice_size

    # --- deliver ---

    async def deliver(self, req: Req, meta: ObjectMeta, send: Send, *, result: str,
                      upstream_cache: str | None,
                      span: SpanFetch | None = None,
                      prefetched: dict[int, SliceBody] | None = None) -> tuple[str, str, int]:
        """Send status, headers and body (whole, one range, or multipart) to the client."""
        now = time.time()
        x_cache = f"{result} from {self.tier}"
        if upstream_cache and result != "HIT":
            x_cache += f", {upstream_cache}"
        headers = self._base_headers(meta)
        headers += [("age", str(int(meta.freshness.age(now)))), ("x-cache", x_cache)]
        if meta.status != 200:  # a stored negative answer
            body = meta.body or b""
            headers.append(("content-length", str(len(body))))
            await asgi.start(send, meta.status, headers)
            await asgi.end(send, b"" if req.method == "HEAD" else body)
            return result, meta.content_class, len(body)
        inm = req.headers.get("if-none-match")
        if inm is not None and policy.etag_matches(inm, meta.etag):
            keep = {"cache-control", "etag", "age", "x-cache", "expires", "vary",
                    "last-modified", "content-location", "date"}
            await asgi.start(send, 304, [(n, v) for n, v in headers if n.lower() in keep])
            await asgi.end(send, b"")
            return result, meta.content_class, 0
        assert meta.length is not None
        ranges = self._ranges(req, meta)
        status, multipart = 200, None
        if ranges is None:
            ranges = [ByteRange(0, meta.length - 1)] if meta.length else []
            headers.append(("content-length", str(meta.length)))
        elif len(ranges) == 1:
            status = 206
            headers += [("content-range", ranges[0].content_range(meta.length)),
                        ("content-length", str(ranges[0].length))]
        else:
            status = 206
            multipart = Multipart(ranges, meta.length, meta.content_type or
                                  "application/octet-stream")
            headers = [(n, v) for n, v in headers if n.lower() != "content-type"]
            headers += [("content-type", multipart.media_type),
                        ("content-length", str(multipart.content_length))]
        # A span passed in means an answer we may not store: read it only from that fetch.
        source = BodySource(
            self.store, self.fetcher, req.key, req.upstream_path,
            None if span is not None else meta.version, meta.length, meta.slice_size,
            self.config.cache.read_chunk_size, self.config.cache.fill_wait_timeout, span,
            prefetched=prefetched or {},
        )
        if req.method != "HEAD":
            # Readers on fills in flight are taken before the first await, so no slice can
            # complete and vanish (uncacheable answers) between our lookup and our read.
            for r in ranges:
                source.attach(policy.slice_span(r.start, r.end, meta.slice_size))
        if source.attached and result == "HIT":
            result, x_cache = "MISS", f"MISS from {self.tier}"
            headers = [(n, v) if n != "x-cache" else (n, x_cache) for n, v in headers]
        await asgi.start(send, status, headers)
        sent = 0
        try:
            if req.method != "HEAD":
                sent = await self._send_body(source, ranges, multipart, send)
            await asgi.end(send, b"")
        finally:
            source.release()
        if source.fetched and result == "HIT":
            result = "MISS"
        return result, meta.content_class, sent

    async def _send_body(self, source: BodySource, ranges: list[ByteRange],
                         multipart: Multipart | None, send: Send) -> int:
        sent = 0
        for i, rng in enumerate(ranges):
            if multipart is not None:
                await send({"type": "http.response.body", "body": multipart.part_head(rng, i == 0),
                            "more_body": True})
            # An error past this point cannot change the status line: the exception aborts
            # the connection, so the client sees a short body, never a complete-looking one.
            sent += await source.stream(rng, send)
        if multipart is not None:
            await send({"type": "http.response.body", "body": multipart.closing,
                        "more_body": True})
        return sent

    def _ranges(self, req: Req, meta: ObjectMeta) -> list[ByteRange] | None:
        specs = parse_range(req.headers.get("range"))
        if specs is None:
            return None
        if_range = req.headers.get("if-range")
        if if_range is not None and not policy.if_range_matches(if_range, meta.etag,
                                                                 meta.last_modified):
            return None  # RFC 9110 §13.1.5: the representation changed, send it whole
        assert meta.length is not None
        try:
            return resolve_ranges(specs, meta.length)
        except RangeNotSatisfiable as exc:
            raise HTTPError(416, "range_not_satisfiable",
                            f"no satisfiable range in {req.headers.get('range')!r} for "
                            f"{meta.length} bytes",
                            headers={"content-range": exc.content_range}) from None

    async def _relay_error(self, req: Req, beresp: BeResp,
                           send: Send) -> tuple[str, str, int]:
        body = beresp.body or b""
        headers = [(n, v) for n, v in beresp.headers if n.lower() not in policy.REGENERATED]
        headers += [("content-length", str(len(body))), ("x-cache", f"MISS from {self.tier}")]
        await asgi.start(send, beresp.status, headers)
        await asgi.end(send, b"" if req.method == "HEAD" else body)
        return "MISS", policy.DEFAULT_CLASS, len(body)
