"""A director over several parents: each cache key goes to one parent, failing over in order.

Like Varnish's shard director, nginx ``hash … consistent`` or Traffic Server's parent.config,
a `Director` is itself a `Transport`, so a node with several upstreams sees one.

- **Which parent:** weighted rendezvous (HRW) hashing of ``bereq.key``. Each parent scores a
  key ``-weight / ln(h)``, with ``h`` a hash of (parent, key) in (0, 1); parents are tried in
  decreasing score. Each object is therefore filled into one shield (the shield tier's hit
  ratio is a single shield's), a parent holds a share of keys proportional to its weight, and
  removing a parent moves only its own keys. A parent's identity is its URL, so every edge
  configured with the same URLs picks the same parent for a key.
- **Passive health:** a connection that cannot be made (refused, no route, TLS), a timeout or a
  5xx marks a parent down for ``backoff`` seconds. A connection reset or a protocol error on an
  exchange already under way is counted and failed over, but marks nothing down (as the node's
  own back-off, it says one connection failed, not the parent): a parent that died refuses the
  next connection, and probes see it.
- **Active health:** with ``probe_interval`` > 0, a background task (`start`/`aclose`) asks
  every parent's ``/healthz``; a failed probe keeps it down until a probe succeeds, and a
  successful one brings it back at once (its keys return to it: HRW order never changes).
- **Backups:** parents marked ``backup`` (like nginx's ``backup`` servers; a region's edges list
  the other region's shields so) get keys only while every primary is down, again by HRW.
- **Failover:** a request that fails before any response headers came back is retried on the
  next parent in HRW order: primaries that are up, backups that are up, then those down as a
  last resort. A 5xx is
  returned as it is when no other parent is up. A request with a body is never retried (the
  body may be consumed). Nothing is retried after headers were returned: a failure mid-stream
  is the caller's to abort.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..config import Config
from ..errors import (
    ConfigError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from .transport import BeReq, RawHeaders, Transport, UpstreamResponse, transport_for

log = logging.getLogger("edgeproxy.director")

HEALTH_PATH = "/healthz"
_TWO64 = float(2**64)


def hrw_score(parent_id: bytes, key: str, weight: float) -> float:
    """The weighted rendezvous score of ``key`` on a parent: ``-weight / ln(h)``.

    ``h`` is the first 8 bytes of BLAKE2b(parent_id NUL key) mapped into the open interval
    (0, 1). With weights w_i, the parent of highest score is parent i with probability
    w_i / sum(w) (Resch, "New Hashing Algorithms for Data Storage", weighted HRW).
    """
    digest = hashlib.blake2b(parent_id + b"\0" + key.encode(), digest_size=8).digest()
    h = (int.from_bytes(digest, "big") + 0.5) / _TWO64
    return -weight / math.log(h)


def error_kind(exc: BaseException) -> str:
    """The label of an upstream failure in the metrics."""
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamRefused):
        return "refused"
    if isinstance(exc, UpstreamUnreachable):
        return "reset"
    if isinstance(exc, UpstreamProtocolError):
        return "protocol"
    return "other"


@dataclass(eq=False)
class Parent:
    """One parent of a `Director`: its transport, weight and health."""

    url: str
    weight: float
    transport: Transport
    backup: bool = False  # used only while no primary is up
    down_until: float = 0.0  # passive: down until then (monotonic clock)
    probe_failed: bool = False  # active: down until a probe succeeds
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ConfigError(f"upstream {self.url}: weight must be positive, got {self.weight}")
        self.id = self.url.rstrip("/").encode()

    def is_up(self, now: float) -> bool:
        """Neither backing off after a failure nor failing its probes."""
        return not self.probe_failed and now >= self.down_until

    def failed(self, kind: str) -> None:
        """Count one failure of ``kind``."""
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Director:
    """A `Transport` over weighted parents with HRW key affinity, health and failover."""

    def __init__(self, parents: Sequence[tuple[str, float, Transport]], *, backoff: float = 2.0,
                 probe_interval: float = 0.0, probe_timeout: float = 2.0,
                 backups: Sequence[tuple[str, float, Transport]] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        if not parents:
            raise ConfigError("a director needs at least one upstream that is not a backup")
        self.parents = [Parent(url, weight, t) for url, weight, t in parents]
        self.parents += [Parent(url, weight, t, backup=True) for url, weight, t in backups]
        if len({p.id for p in self.parents}) != len(self.parents):
            raise ConfigError("upstreams: the same URL is listed twice")
        self.backoff = backoff
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.clock = clock
        self.retries = 0
        self._prober: asyncio.Task[None] | None = None

    # --- choosing ------------------------------------------------------------------------------

    def order(self, key: str) -> list[Parent]:
        """Every parent for ``key``: primaries, then backups, each in decreasing HRW score
        (health not considered)."""
        return sorted(self.parents, key=lambda p: (not p.backup, hrw_score(p.id, key, p.weight)),
                      reverse=True)  # fmt: skip

    def candidates(self, key: str) -> list[Parent]:
        """The parents to try for ``key``: those up in `order`, then those down."""
        now = self.clock()
        ordered = self.order(key)
        return [p for p in ordered if p.is_up(now)] + [p for p in ordered if not p.is_up(now)]

    # --- Transport -----------------------------------------------------------------------------

    async def send(self, bereq: BeReq) -> UpstreamResponse:
        """Send ``bereq`` to the first parent able to answer it (see the module docstring)."""
        candidates = self.candidates(bereq.key)
        last: UpstreamError | None = None
        for i, parent in enumerate(candidates):
            if i:
                if bereq.body is not None:
                    break
                self.retries += 1
            parent.requests += 1
            try:
                response = await parent.transport.send(bereq)
            except UpstreamError as exc:
                self._failed(parent, exc)
                last = exc
                continue
            if response.status >= 500:
                self._mark_down(parent, "status_5xx", None)
                now = self.clock()
                if bereq.body is None and any(p.is_up(now) for p in candidates[i + 1:]):
                    await response.aclose()
                    continue
                return response
            parent.down_until = 0.0  # it answered: no need to wait out a back-off
            return _Observed(response, self, parent)
        assert last is not None
        raise last

    def _failed(self, parent: Parent, exc: UpstreamError) -> None:
        """Count a failed exchange; mark the parent down if it says the parent is."""
        if isinstance(exc, UpstreamRefused | UpstreamTimeout):
            self._mark_down(parent, error_kind(exc), exc)
        else:
            parent.failed(error_kind(exc))

    def _mark_down(self, parent: Parent, kind: str, exc: BaseException | None) -> None:
        parent.failed(kind)
        if parent.is_up(self.clock()):
            log.warning("upstream %s marked down for %.1fs: %s", parent.url, self.backoff,
                        exc or kind)  # fmt: skip
        parent.down_until = self.clock() + self.backoff

    async def aclose(self) -> None:
        """Stop probing and close every parent's transport."""
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
            self._prober = None
        for parent in self.parents:
            await parent.transport.aclose()

    # --- active health -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the ``/healthz`` prober (needs the running loop; a no-op without an interval)."""
        if self.probe_interval > 0 and self._prober is None:
            self._prober = asyncio.get_running_loop().create_task(self._probe_forever())

    async def _probe_forever(self) -> None:
        while True:
            try:
                await self.probe_all()
            except Exception:  # a probe that broke must not end probing
                log.exception("probing upstreams failed")
            await asyncio.sleep(self.probe_interval)

    async def probe_all(self) -> None:
        """Probe every parent once, concurrently."""
        await asyncio.gather(*(self._probe(p) for p in self.parents))

    async def _probe(self, parent: Parent) -> None:
        bereq = BeReq("GET", HEALTH_PATH, [(b"accept", b"application/json")], HEALTH_PATH)
        try:
            async with asyncio.timeout(self.probe_timeout):
                response = await parent.transport.send(bereq)
                try:
                    async for _ in response.aiter_body():
                        pass
                finally:
                    await response.aclose()
            healthy = response.status == 200
        except (UpstreamError, TimeoutError):
            healthy = False
        if healthy:
            if not parent.is_up(self.clock()):
                log.info("upstream %s is back", parent.url)
            parent.probe_failed, parent.down_until = False, 0.0
        else:
            if not parent.probe_failed:
                log.warning("upstream %s failed its health probe", parent.url)
            parent.failed("probe")
            parent.probe_failed = True

    # --- metrics -------------------------------------------------------------------------------

    def collector(self, tier: str) -> DirectorMetrics:
        """A prometheus collector of this director's per-upstream state, requests and errors."""
        return DirectorMetrics(self, tier)


class _Observed:
    """A parent's response whose body, if it breaks off, marks the parent down."""

    __slots__ = ("_director", "_parent", "_response", "headers", "status")

    def __init__(self, response: UpstreamResponse, director: Director, parent: Parent) -> None:
        self._response, self._director, self._parent = response, director, parent
        self.status: int = response.status
        self.headers: RawHeaders = response.headers

    async def aiter_body(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_body():
                yield chunk
        except UpstreamError as exc:
            self._director._failed(self._parent, exc)
            raise

    async def aclose(self) -> None:
        await self._response.aclose()


class DirectorMetrics(Collector):
    """``edgeproxy_director_*`` families with ``tier`` and ``upstream`` labels."""

    def __init__(self, director: Director, tier: str) -> None:
        self.director, self.tier = director, tier

    def collect(self) -> Iterable[Metric]:
        d, tier, now = self.director, self.tier, self.director.clock()
        up = GaugeMetricFamily("edgeproxy_director_upstream_up",
                               "1 if the upstream is taking requests, 0 while it is down",
                               labels=["tier", "upstream"])  # fmt: skip
        weight = GaugeMetricFamily("edgeproxy_director_upstream_weight",
                                   "Configured HRW weight of the upstream (negative: a backup)",
                                   labels=["tier", "upstream"])  # fmt: skip
        requests = CounterMetricFamily("edgeproxy_director_requests",
                                       "Requests sent to the upstream (retries included)",
                                       labels=["tier", "upstream"])  # fmt: skip
        errors = CounterMetricFamily("edgeproxy_director_errors",
                                     "Failures of the upstream by kind (refused, timeout, "
                                     "reset, protocol, status_5xx, probe)",
                                     labels=["tier", "upstream", "kind"])  # fmt: skip
        for p in d.parents:
            up.add_metric([tier, p.url], 1.0 if p.is_up(now) else 0.0)
            weight.add_metric([tier, p.url], -p.weight if p.backup else p.weight)
            requests.add_metric([tier, p.url], p.requests)
            for kind, count in sorted(p.errors.items()):
                errors.add_metric([tier, p.url, kind], count)
        retries = CounterMetricFamily("edgeproxy_director_retries",
                                      "Requests retried on the next parent in HRW order",
                                      labels=["tier"])  # fmt: skip
        retries.add_metric([tier], d.retries)
        return [up, weight, requests, errors, retries]


def transport_for_node(config: Config, tier: str, *,
                       ssl_context: ssl.SSLContext | None = None) -> Transport:  # fmt: skip
    """The upstream transport of ``tier``: one `HTTPTransport`, or a `Director` over several.

    A `Director` must be started with the node (`Director.start`, in the running loop) and
    closed with it (`Director.aclose`); its `Director.collector` goes into the node's registry.
    """
    parents = config.node(tier).parents
    if not parents:
        raise ConfigError(f"{tier}.upstream: no upstream URL configured")
    timeout = config.cache.upstream_timeout
    if len(parents) == 1:
        return transport_for(parents[0].url, timeout=timeout, ssl_context=ssl_context,
                             s3=config.s3)

    def listed(backup: bool) -> list[tuple[str, float, Transport]]:
        return [(p.url, p.weight, transport_for(p.url, timeout=timeout, ssl_context=ssl_context,
                                                s3=config.s3))
                for p in parents if p.backup == backup]  # fmt: skip

    return Director(listed(False), backups=listed(True), backoff=config.cache.upstream_backoff,
                    probe_interval=config.cache.upstream_probe_interval)  # fmt: skip
