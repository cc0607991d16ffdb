"""The origin's Prometheus metrics, in a registry of its own (one per app, so tests and several
apps in one process never share counters).

Totals about what is *stored* — bytes and blobs kept, bytes saved by store-once, unfinished
uploads — are read from the metadata database at scrape time, so they survive restarts and every
worker process reports the same numbers. Event counters (uploads by result, bytes received) are
summed over the worker processes when there are several (`edgeproxy.workermetrics`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..crypto import enc_length
from ..workermetrics import exposition

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Around seed 000's "upload p99 (1MB) > 5s" alert, up to what a 100 MiB upload may take.
UPLOAD_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# size_class of an upload by its media size (the blob's size minus the format's overhead).
UPLOAD_SIZE_CLASSES = (("le_1MiB", 1024**2), ("le_10MiB", 10 * 1024**2),
                       ("le_100MiB", 100 * 1024**2))  # fmt: skip


def upload_size_class(blob_size: int) -> str:
    """``le_1MiB``, ``le_10MiB``, ``le_100MiB`` or ``gt_100MiB``: the media size of a blob."""
    for name, media_size in UPLOAD_SIZE_CLASSES:
        if blob_size <= enc_length(media_size):
            return name
    return "gt_100MiB"


class _StoreCollector(Collector):
    """Metrics computed from `Records.stats` on every scrape."""

    def __init__(self) -> None:
        self.latest: dict[str, int] | None = None  # the totals read for this scrape

    def _families(self, stats: dict[str, int] | None) -> Iterator[Metric]:
        saved = CounterMetricFamily(
            "edgeproxy_origin_dedup_bytes_saved",
            "Bytes not stored because a confirmed blob was already kept (store-once)")
        stored = GaugeMetricFamily("edgeproxy_origin_stored_bytes",
                                   "Bytes of committed media blobs, each stored once, by "
                                   "storage tier (hot, or cold past storage.cold_after)",
                                   labels=["tier"])  # fmt: skip
        blobs = GaugeMetricFamily("edgeproxy_origin_stored_blobs", "Committed media blobs")
        unfinished = GaugeMetricFamily("edgeproxy_origin_unfinished_uploads",
                                       "Uploads requested but not yet confirmed or expired")
        lag = GaugeMetricFamily("edgeproxy_replication_lag_seconds",
                                "Age of the oldest committed blob not yet copied to every "
                                "replica store (0: all copied, or no replicas)")  # fmt: skip
        if stats is not None:
            lag.add_metric([], stats.get("replication_lag_seconds", 0))
            saved.add_metric([], stats["dedup_bytes_saved"])
            cold = stats.get("cold_bytes", 0)
            stored.add_metric(["hot"], stats["media_bytes"] - cold)
            stored.add_metric(["cold"], cold)
            blobs.add_metric([], stats["media_count"])
            unfinished.add_metric([], stats["unfinished_uploads"])
        yield from (saved, stored, blobs, unfinished, lag)

    def describe(self) -> Iterator[Metric]:
        """Names only: registering must not touch the database."""
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        """The totals read for this scrape (`OriginMetrics.render`)."""
        return self._families(self.latest)


class OriginMetrics:
    """Counters the origin updates as things happen, plus the database-backed totals."""

    def __init__(self, stats: Callable[[], Awaitable[dict[str, int] | None]]) -> None:
        self._stats = stats
        self.registry = CollectorRegistry()
        self.uploads = Counter(
            "edgeproxy_origin_uploads",
            "Upload outcomes: created, committed, deduplicated (committed, blob already kept), "
            "refusals by error code, expired, terminated", ["result"], registry=self.registry)
        self.received_bytes = Counter(
            "edgeproxy_origin_upload_received_bytes",
            "Body bytes stored from PUT and PATCH requests on upload URLs",
            registry=self.registry)
        self.upload_duration = Histogram(
            "edgeproxy_origin_upload_duration_seconds",
            "Seconds from the upload request to its commit at confirm, per committed upload, "
            "by media size class", ["size_class"], buckets=UPLOAD_BUCKETS,
            registry=self.registry)  # fmt: skip
        self._store = _StoreCollector()
        self.registry.register(self._store)

    def count(self, result: str) -> None:
        """One more upload with outcome ``result``."""
        self.uploads.labels(result=result).inc()

    def observe_upload(self, blob_size: int, seconds: float) -> None:
        """One committed upload of ``blob_size`` bytes that took ``seconds`` end to end."""
        self.upload_duration.labels(size_class=upload_size_class(blob_size)).observe(
            max(seconds, 0.0))

    async def render(self) -> bytes:
        """The text exposition, with the database's totals if it answers them in time."""
        self._store.latest = await self._stats()
        return await asyncio.to_thread(exposition, self.registry, [self._store])
