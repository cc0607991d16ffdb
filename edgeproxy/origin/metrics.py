"""The origin's Prometheus metrics, in a registry of its own (one per app, so tests and several
apps in one process never share counters).

Totals about what is *stored* — bytes and blobs kept, bytes saved by store-once, unfinished
uploads — are read from the SQLite database at scrape time, so they survive restarts and every
worker process reports the same numbers. Event counters (uploads by result, bytes received) are
per process, like any prometheus-client counter without multiprocess mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _StoreCollector(Collector):
    """Metrics computed from `Records.stats` on every scrape."""

    def __init__(self, stats: Callable[[], dict[str, int] | None]) -> None:
        self._stats = stats

    def _families(self, stats: dict[str, int] | None) -> Iterator[Metric]:
        saved = CounterMetricFamily(
            "edgeproxy_origin_dedup_bytes_saved",
            "Bytes not stored because a confirmed blob was already kept (store-once)")
        stored = GaugeMetricFamily("edgeproxy_origin_stored_bytes",
                                   "Bytes of committed media blobs, each stored once")
        blobs = GaugeMetricFamily("edgeproxy_origin_stored_blobs", "Committed media blobs")
        unfinished = GaugeMetricFamily("edgeproxy_origin_unfinished_uploads",
                                       "Uploads requested but not yet confirmed or expired")
        if stats is not None:
            saved.add_metric([], stats["dedup_bytes_saved"])
            stored.add_metric([], stats["media_bytes"])
            blobs.add_metric([], stats["media_count"])
            unfinished.add_metric([], stats["unfinished_uploads"])
        yield from (saved, stored, blobs, unfinished)

    def describe(self) -> Iterator[Metric]:
        """Names only: registering must not touch the database."""
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        """The current totals."""
        return self._families(self._stats())


class OriginMetrics:
    """Counters the origin updates as things happen, plus the database-backed totals."""

    def __init__(self, stats: Callable[[], dict[str, int] | None]) -> None:
        self.registry = CollectorRegistry()
        self.uploads = Counter(
            "edgeproxy_origin_uploads",
            "Upload outcomes: created, committed, deduplicated (committed, blob already kept), "
            "refusals by error code, expired, terminated", ["result"], registry=self.registry)
        self.received_bytes = Counter(
            "edgeproxy_origin_upload_received_bytes",
            "Body bytes stored from PUT and PATCH requests on upload URLs",
            registry=self.registry)
        self.registry.register(_StoreCollector(stats))

    def count(self, result: str) -> None:
        """One more upload with outcome ``result``."""
        self.uploads.labels(result=result).inc()

    async def render(self) -> bytes:
        """The text exposition (run in a thread: the totals query SQLite)."""
        return await asyncio.to_thread(generate_latest, self.registry)
