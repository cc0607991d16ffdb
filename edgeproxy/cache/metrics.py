"""Prometheus metrics of a cache node: requests *and bytes* by tier, result and class.

With several workers the scrape sums every worker's counters (`edgeproxy.workermetrics`); the
cache-size gauges are set from the shared disk index at each scrape, so the most recent value
is the right one whichever worker set it.

An answered request is tallied in plain integers and the tallies go to the shared counters once
per turn of the event loop (`NodeMetrics.flush`): with several workers each increment of a
shared counter is a locked write to a memory-mapped file, four per request, which cost about
8 % of a worker's CPU on a hit-heavy load. A scrape sees a request once the worker that
answered it has finished that turn, microseconds later.
"""

from __future__ import annotations

import asyncio
import bisect
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ..workermetrics import exposition

__all__ = ["CONTENT_TYPE_LATEST", "NodeMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 2.5, 5,
                    10, 30)


class NodeMetrics:
    """The metric families of one node, in a registry of its own."""

    def __init__(self, tier: str) -> None:
        self.tier = tier
        self.registry = CollectorRegistry()
        self._extra: list[Collector] = []
        r = self.registry
        self.requests = Counter("edgeproxy_requests", "Client requests answered",
                                ["tier", "result", "content_class"], registry=r)
        self.response_bytes = Counter("edgeproxy_response_bytes",
                                      "Body bytes sent to clients",
                                      ["tier", "result", "content_class"], registry=r)
        self.upstream_requests = Counter("edgeproxy_upstream_requests",
                                         "Requests sent upstream", ["tier", "status"],
                                         registry=r)
        self.upstream_bytes = Counter("edgeproxy_upstream_bytes",
                                      "Body bytes received from upstream", ["tier"],
                                      registry=r)
        self.collapsed = Counter("edgeproxy_collapsed_requests",
                                 "Client requests that joined a fill already in flight",
                                 ["tier"], registry=r)
        self.storage_faults = Counter("edgeproxy_storage_faults",
                                      "Disk or index faults; their requests passed through",
                                      ["tier", "reason"], registry=r)
        # reason: body_hash (a whole body's SHA-256), content_digest (an answer's RFC 9530
        # Content-Digest, a range's), slice_checksum (a stored slice's xxh3), upstream_slice (a
        # slice whose bytes differ from the xxh3 its upstream node named: `slicesums`)
        self.integrity_failures = Counter("edgeproxy_integrity_failures",
                                          "Bytes discarded for a wrong length, hash or checksum",
                                          ["tier", "reason"], registry=r)
        self.latency = Histogram("edgeproxy_request_duration_seconds",
                                 "Time to answer a client request (until the last byte)",
                                 ["tier", "result"], buckets=_LATENCY_BUCKETS,
                                 registry=r)
        self.cache_size_limit = Gauge("edgeproxy_cache_size_limit_bytes",
                                      "Configured size bound of the disk cache", ["tier"],
                                      registry=r, multiprocess_mode="mostrecent")
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._upstream: dict[int, Any] = {}
        self._upstream_bytes: Any = None  # (made at the first bytes, as before)
        # (result, class) → [requests, bytes, seconds, count per latency bucket]
        self._tallies: dict[tuple[str, str], list[Any]] = {}
        self._bounds = [*_LATENCY_BUCKETS, float("inf")]
        self._flush_due = False
        self.cache_size = Gauge("edgeproxy_cache_size_bytes", "Bytes in the disk cache",
                                ["tier"], registry=r, multiprocess_mode="mostrecent")

    def observe(self, result: str, content_class: str, nbytes: int, seconds: float) -> None:
        """Account one answered client request (shared with the scrape at `flush`)."""
        tally = self._tallies.get((result, content_class))
        if tally is None:
            tally = self._tallies[(result, content_class)] = [0, 0, 0.0, [0] * len(self._bounds)]
        tally[0] += 1
        tally[1] += nbytes
        tally[2] += seconds
        tally[3][bisect.bisect_left(self._bounds, seconds)] += 1  # as Histogram.observe
        if not self._flush_due:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (a script, a test): at once
                self.flush()
                return
            self._flush_due = True

    def flush(self) -> None:
        """Add the tallies of the requests answered since the last flush to the counters."""
        self._flush_due = False
        tallies, self._tallies = self._tallies, {}
        for (result, content_class), (count, nbytes, seconds, buckets) in tallies.items():
            children = self._children.get((result, content_class))
            if children is None:
                # labels() hashes and validates on every call: resolve each series once
                children = (self.requests.labels(self.tier, result, content_class),
                            self.response_bytes.labels(self.tier, result, content_class),
                            self.latency.labels(self.tier, result))
                self._children[(result, content_class)] = children
            requests, response_bytes, latency = children
            # the children's values directly, as Counter.inc and Histogram.observe do after
            # their checks (of a label set resolved above, with amounts that are never < 0)
            requests._value.inc(count)
            if nbytes:
                response_bytes._value.inc(nbytes)
            # Histogram.observe, n at a time: its sum and the count of each bucket
            latency._sum.inc(seconds)
            for index, n in enumerate(buckets):
                if n:
                    latency._buckets[index].inc(n)

    def storage_fault(self, reason: str) -> None:
        """Account one storage fault (``no_space``, ``corrupt_index``, ``index``, ``io``)."""
        self.storage_faults.labels(self.tier, reason).inc()

    def upstream(self, status: int, nbytes: int) -> None:
        """Account one upstream response."""
        child = self._upstream.get(status)
        if child is None:  # (labels() hashes and validates: once per status)
            child = self._upstream[status] = self.upstream_requests.labels(self.tier,
                                                                           str(status))
        child.inc()
        if nbytes:
            if self._upstream_bytes is None:
                self._upstream_bytes = self.upstream_bytes.labels(self.tier)
            self._upstream_bytes.inc(nbytes)

    def add_collector(self, collector: Collector) -> None:
        """A collector computed at scrape time (per-upstream state of a director)."""
        self.registry.register(collector)
        self._extra.append(collector)

    def render(self, cache_bytes: int, cache_limit: int) -> bytes:
        """The text exposition format."""
        self.flush()
        self.cache_size.labels(self.tier).set(cache_bytes)
        self.cache_size_limit.labels(self.tier).set(cache_limit)
        return exposition(self.registry, self._extra)
