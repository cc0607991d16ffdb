"""A caching node (edge or shield) as a lean ASGI app.

The node owns the services (store, coalescer, fetcher, transport) and the boundary where
errors become statuses; a request itself moves through `steps`. A plain hit on a small hot
object takes a measured fast lane in front of the steps: a dict lookup and two sends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable

from ..config import Config, ContentClass
from ..errors import ConfigError, EdgeProxyError, HTTPError, StorageFault, UpstreamError
from ..http import format_http_date
from ..tls import client_context
from . import admin, asgi, boundary, fields, policy, replays, slicesums, steps
from .beresp import BeResp
from .chores import Chores
from .coalesce import Coalescer
from .director import Director, transport_for_node
from .facts import Facts, Plan
from .fastlane import FastLane
from .fetch import Fetcher
from .flight import Flight, FlightSpec
from .gate import Gate
from .hot import HotTier, PurgeEpoch
from .meta import ObjectMeta, whole_body_digest
from .metrics import CONTENT_TYPE_LATEST, NodeMetrics
from .replays import Replay
from .req import Req, target_key
from .scrub import ObjectPass
from .slicefiles import FilePiece
from .store import CacheStore
from .transport import Transport, transport_for
from .tx import Tx
from .types import INFORMATIONAL, Receive, Scope, Send
from .verdict import Verdict, x_cache

log = logging.getLogger("edgeproxy.cache")

# How long a worker trusts facts it remembered (`remember`): changes reach it at once (`hot`'s
# key generations); this bounds what none announces (an object culled by the size bound).
FACTS_TTL = 60.0


class CacheNode:
    """The ASGI application of one edge or shield.

    ``transport`` is the upstream seam: tests inject one; by default it is built from the
    configured upstream URL when the node starts.
    """

    def __init__(self, config: Config, tier: str, *, upstream: str | None = None,
                 transport: Transport | None = None) -> None:
        self.config = config
        self.tier = tier
        self.name = getattr(config.node(tier), "node_name", "") or tier
        self._upstream_given = bool(upstream)
        self.upstream = (upstream or config.node(tier).upstream).rstrip("/")
        if not upstream and not config.node(tier).parents and transport is None:
            raise ConfigError(f"{tier}.upstream: no upstream URL configured")
        self.classes: dict[str, ContentClass] = {c.name: c for c in config.content_classes}
        self.store = CacheStore(config.cache_dir(tier), config.node(tier).cache_size,
                                config.cache.min_free)
        self.facts = Facts(config, tier, self.store)
        self.gate = Gate(config)
        self.hot = HotTier(config.cache.memory_size, config.cache.memory_max_object,
                           PurgeEpoch(self.store.directory / "purge.epoch"),
                           on_clear=self.store.forget_files)
        self.metrics = NodeMetrics(tier)
        self.store.on_fault = self.metrics.storage_fault
        self.store.on_corrupt = self.slice_corrupt
        self.store.on_facts = self.hot.committed
        self.slice_size = config.cache.slice_size
        self.read_size = config.cache.read_chunk_size
        self.wait_timeout = config.cache.fill_wait_timeout
        self.coalescer = Coalescer(self.store, self.wait_timeout)
        self._injected = transport
        self._transport: Transport | None = transport
        self._fetcher: Fetcher | None = None
        self.answered = 0  # requests answered by this worker (the fast lane's too)
        self._chores = Chores(self.store, lambda: self.answered)
        self.fast = FastLane(self)
        asgi.allow_any_status()

    # --- ASGI plumbing ---

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/healthz":
            # still up when the disk fails (answers pass through), but say so
            status = "degraded" if self.store.degraded(time.time()) else "ok"
            await asgi.send_json(send, 200, {"status": status, "role": self.tier})
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
        if await self.fast.serve(scope, send, started):
            return
        await self._serve(scope, receive, send, started)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, started: float) -> None:
        tx: Tx | None = None
        try:
            tx = Tx(Req.from_scope(scope), scope, receive, send)
            await steps.run(self, tx)
        except UpstreamError as exc:
            await self._error(tx, send, boundary.http_error(exc, self.name))
        except HTTPError as exc:
            await self._error(tx, send, exc)
        except Exception as exc:  # a bug: still a JSON answer, and the worker goes on
            key = tx.req.key if tx is not None else None
            await self._error(tx, send, boundary.internal_error(exc, self.name, key))
        finally:
            self.answered += 1
            verdict = tx.verdict if tx is not None else Verdict.ERROR
            cls = tx.meta.content_class if tx is not None and tx.meta else policy.DEFAULT_CLASS
            self.metrics.observe(verdict.value, cls, tx.sent if tx else 0,
                                 time.perf_counter() - started)
            if tx is not None:
                scope.setdefault("edgeproxy", {})["upstream_time"] = tx.upstream_time
                for source in tx.ready.values():
                    source.close()
                tx.flight = None  # (what its flight kept for it may go: `Coalescer.keep`)
                await self.drop_direct(tx)

    async def _error(self, tx: Tx | None, send: Send, exc: HTTPError) -> None:
        if tx is not None and tx.responded:
            # Past the status line nothing can be taken back: aborting the connection is
            # how the client learns the body is short, never complete-looking.
            raise exc
        if tx is not None:
            tx.verdict = Verdict.ERROR
        head = tx is not None and tx.req.method == "HEAD"
        await asgi.send_json(send, exc.status, exc.body(), exc.headers, head=head)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.startup()
                except (OSError, ValueError, EdgeProxyError) as exc:  # (ssl.SSLError too)
                    # No way to its upstream: a node that started anyway was "ok" and
                    # answered 500 to everything (uvicorn's "auto" lifespan ate the error)
                    await send({"type": "lifespan.startup.failed",
                                "message": f"{self.tier} cannot start: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def startup(self) -> None:
        """Open the upstream transport (needs the running loop)."""
        if self._transport is None:
            ssl_context = client_context(self.config.node(self.tier).upstream_tls)
            if self._upstream_given:
                self._transport = transport_for(
                    self.upstream, timeout=self.config.cache.upstream_timeout,
                    ssl_context=ssl_context, s3=self.config.s3)
            else:
                self._transport = transport_for_node(self.config, self.tier,
                                                     ssl_context=ssl_context)
            if isinstance(self._transport, Director):
                self._transport.start()
                self.metrics.add_collector(self._transport.collector(self.tier))
        self._chores.start(self.config.cache.scrub_interval, self.config.cache.scrub_rate,
                           self.object_pass())
        self._fetcher = Fetcher(self.store, self.coalescer, self._transport,
                                on_headers=self._plan, on_upstream=self.metrics.upstream,
                                on_integrity_failure=self.integrity_failure,
                                on_contradicted=self._contradicted,
                                backoff=self.config.cache.upstream_backoff)

    async def shutdown(self) -> None:
        """Stop flights and close the transport and the index."""
        await self._chores.stop()
        if self._fetcher is not None:
            await self._fetcher.aclose()
        if self._transport is not None and self._injected is None:
            await self._transport.aclose()
        self.metrics.flush()
        self.store.commit()  # releases the claims of committed fills, before the lock file closes
        self.coalescer.close()
        self.store.close()

    def reload(self, config: Config) -> None:
        """Take new content classes and TTLs (SIGHUP); listeners and connections stay, and
        so does the slice size (stored objects and flights under way are cut by it)."""
        if config.cache.slice_size != self.slice_size:
            log.warning("cache.slice_size is %d bytes until a restart (the reloaded config "
                        "says %d)", self.slice_size, config.cache.slice_size)
        self.config = config
        self.classes = {c.name: c for c in config.content_classes}
        self.facts.config = config
        self.facts.classes = dict(self.classes)
        self.gate = Gate(config)
        self.hot.clear()  # its entries carry prebuilt headers (Cache-Control) of the old TTLs
        self.fast.forget()

    def _plan(self, flight: Flight, beresp: BeResp) -> Plan:
        plan = self.facts.plan(flight, beresp)
        if plan.kind != "direct":
            self.hot.pop(flight.key)  # new facts: the memory copy must not outlive them
        return plan

    def _contradicted(self, key: str) -> None:
        with contextlib.suppress(StorageFault):  # (memory tiers and flights go at least)
            self._purge_key(key)

    def remember(self, key: str, meta: ObjectMeta, now: float,
                 mark: tuple[int, int] | None = None) -> None:
        """Keep a large fresh object's facts in memory, so its hits skip the index query
        (``mark``: `HotTier.mark`, taken before they were read from the index)."""
        if meta.status == 200 and not meta.vary and meta.freshness.is_fresh(now):
            self.hot.remember_facts(key, meta, now + min(FACTS_TTL,
                                                         meta.freshness.remaining(now)), mark)

    def mark_verified(self, key: str, meta: ObjectMeta) -> None:
        """A whole answer assembled from this object's slices matched its hash: the slices
        are good, and its hits need not hash them again (a slice stored by Range later
        clears the mark)."""
        stored = self.store.get_meta(key)
        if meta.verified or stored is None or stored.version != meta.version or stored.verified:
            return  # already marked, or the object changed meanwhile
        with contextlib.suppress(StorageFault):
            self.store.set_meta(key, dataclasses.replace(stored, verified=True))
        self.hot.pop(key)

    def vouched(self, key: str, meta: ObjectMeta) -> bool:
        """Whether the object stored under ``key`` is ``meta``'s representation, and its
        slices all came from one body whose whole hash matched (`deliver.vouched_send`)."""
        stored = self.store.get_meta(key)
        return stored is not None and stored.version == meta.version and stored.verified

    def integrity_failure(self, key: str, why: str, reason: str = "body_hash") -> None:
        """Bytes failed their check: count it, and drop what is stored under ``key`` (a
        slice that failed the sum its upstream named was never stored: the rest stays)."""
        log.error("integrity failure on %s (%s): dropped", key, why)
        self.metrics.integrity_failures.labels(self.tier, reason).inc()
        if reason != "upstream_slice":
            self._purge_key(key)

    def object_pass(self) -> ObjectPass:
        """What a scrub's object pass needs of this node (`scrub`)."""
        return ObjectPass(whole_body_digest, self.mark_verified,
                          lambda key, why: self.integrity_failure(key, why, "body_hash"))

    def slice_corrupt(self, key: str, index: int, why: str) -> None:
        """A stored slice failed its checksum and the store dropped it (it is fetched again
        when next needed): count it, and have every worker let go of the descriptors it
        keeps, which may be on that file (their memory tiers go too: rare, and cheap)."""
        self.metrics.integrity_failures.labels(self.tier, "slice_checksum").inc()
        self.hot.purged()

    @property
    def fetcher(self) -> Fetcher:
        """The upstream side (available after startup)."""
        assert self._fetcher is not None, "lifespan startup has not run"
        return self._fetcher

    @property
    def transport(self) -> Transport:
        """The upstream seam (available after startup)."""
        assert self._transport is not None, "lifespan startup has not run"
        return self._transport

    # --- services the steps use ---

    def spec(self, req: Req, *, first: int, last: int | None, whole: bool,
             stale: ObjectMeta | None = None, known: ObjectMeta | None = None) -> FlightSpec:
        """The flight that fetches slices ``first..last`` of ``req``'s object."""
        validators: list[tuple[bytes, bytes]] = []
        # Only a stored 200 is revalidated: a 304 says the answer "would have been 200"
        # (RFC 9110 §15.4.5) and preconditions hold for 2xx answers only (§13.2.1), so the
        # validators of a stored 404 or 500 ask nothing of it, and a 304 matching them (the
        # resource is now a 200 under that tag) would freshen the error and serve it on as the
        # 200 (Varnish revalidates only 200s too: OF_IMSCAND). Anything else is fetched anew.
        if stale is not None and stale.status == 200:
            if stale.etag:
                validators.append((b"if-none-match", stale.etag.encode("latin-1")))
            elif stale.last_modified:
                validators.append((b"if-modified-since", stale.last_modified.encode("latin-1")))
        if known is not None and known.if_range is not None:
            validators.append((b"if-range", known.if_range.encode("latin-1")))
        headers = fields.fill_headers(req.raw_headers, self.name)
        if self.tier == "edge":  # (its upstream is a shield; a shield's is the origin)
            headers += slicesums.request_fields(self.slice_size)
        return FlightSpec(req.key, req.target, headers, first, last, self.slice_size,
                          validators, whole)

    def stored_headers(self, meta: ObjectMeta) -> list[tuple[str, str]]:
        """The stored end-to-end fields as this tier sends them (its Cache-Control, Via)."""
        # (a Content-Digest stored by an older version is never replayed: see `fields`)
        headers = [(n, v) for n, v in meta.headers
                   if n.lower() not in ("cache-control", "via", "content-digest")]
        lines = [v for n, v in meta.headers if n.lower() == "cache-control"]  # all of them
        cc = policy.downstream_cache_control(self.classes.get(meta.content_class), self.tier,
                                             ", ".join(lines) if lines else None)
        if cc:
            headers.append(("cache-control", cc))
        headers.append(("via", fields.via(meta.header("via"), self.name)))
        if meta.status == 200:
            headers.append(("accept-ranges", "bytes"))
        return headers

    def response_headers(self, meta: ObjectMeta, tx: Tx) -> list[tuple[str, str]]:
        """Every field of an answer from ``meta`` but its length and range fields."""
        headers = self.stored_headers(meta)
        now = time.time()
        if meta.header("date") is None:  # RFC 9110 §6.6.1: a recipient with a clock adds one
            headers.append(("date", format_http_date(now)))
        headers.append(("age", str(int(meta.freshness.age(now)))))
        headers.append(("x-cache", x_cache(tx.verdict, self.name, tx.upstream_cache)))
        return headers

    async def start_response(self, tx: Tx, status: int,
                             headers: list[tuple[str, str]]) -> None:
        """Send the status line and fields (after which errors abort the connection), after
        the interim answers of the upstream exchange, where the server can send them."""
        tx.responded = True
        if tx.interims and INFORMATIONAL in (tx.scope.get("extensions") or ()):
            for code, fields in tx.interims:
                await tx.send({"type": INFORMATIONAL, "status": code, "headers": fields})
        await asgi.start(tx.send, status, headers)

    async def drop_direct(self, tx: Tx) -> None:
        """Release an unstored upstream body this request did not (fully) read."""
        direct, tx.direct = tx.direct, None
        if direct is not None:
            await direct.aclose()

    def invalidate(self, paths: list[str]) -> None:
        """RFC 9111 §4.4: drop what is stored under these targets (a Location with no
        canonical form names nothing stored)."""
        for target in paths:
            with contextlib.suppress(HTTPError):
                self._purge_key(target_key(target))

    # --- admin ---

    def _purge_key(self, key: str) -> int:
        self.coalescer.forget(lambda k: k == key)
        try:
            return 1 if self.store.purge(key) else 0
        finally:  # (after the rows went: a worker that forgets it now reads the index anew)
            self.hot.changed(key)

    def purge(self, path: str) -> int:
        """Drop one object (all its slices); fills in flight for it will not be stored."""
        return self._purge_key(target_key(path))

    def clear(self) -> None:
        """Empty this node's cache (disk and every worker's memory tier)."""
        self.hot.purged()
        self.store.clear()

    def purge_prefix(self, prefix: str) -> int:
        """Drop every object whose key starts with ``prefix`` (spelt as a request's)."""
        prefix = target_key(prefix)
        self.coalescer.forget(lambda k: k.startswith(prefix))
        self.hot.purged()
        return self.store.purge_prefix(prefix)

    # --- the fast lane (`fastlane`) ---

    def fast_reply(self, path: str, headers: Iterable[tuple[bytes, bytes]], started: float,
                   extra: list[tuple[bytes, bytes]], files: bool = False,
                   ) -> tuple[list[bytes | memoryview | FilePiece], int, int] | None:
        """A plain hit's whole HTTP/1.1 answer (buffers for one gathered write, the last
        perhaps a `FilePiece` when ``files``) for the server protocol, or None."""
        return self.fast.reply(path, headers, started, extra, files)

    def fast_replay(self, head: bytes, started: float, extra: list[tuple[bytes, bytes]],
                    files: bool = False,
                    ) -> tuple[list[bytes | memoryview | FilePiece], Replay, int] | None:
        """The answer kept for a request of exactly ``head`` bytes, given again now (with its
        record and its body's length; ``files``: the server sends a `FilePiece` itself), or
        None: then the request goes the usual way (`replays`)."""
        record = self.fast.replays.get(head)
        if record is None:
            return None
        answer = replays.answer(self.fast, record, started, extra, files)
        if answer is None:
            self.fast.replays.drop(head)  # its object changed: the usual way answers
            return None
        return answer[0], record, answer[1]

    def keep_fast_reply(self, head: bytes) -> None:
        """Keep the answer `fast_reply` just gave for requests of exactly ``head``."""
        self.fast.keep_replay(head)

    @property
    def hit_x_cache(self) -> str:
        """The X-Cache value of a hit here."""
        return self.fast.hit_x_cache.decode()
