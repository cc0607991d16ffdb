"""A node's request metrics are tallied per turn of the event loop and then added to the
shared counters: what a scrape reads is exactly what one ``observe`` per request would give."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.utils import floatToGoString

from edgeproxy.cache.metrics import _LATENCY_BUCKETS, NodeMetrics

# (result, class, bytes, seconds): bucket edges exactly, between them, and past the last one
ANSWERS = [("HIT", "media", 100, 0.0005), ("HIT", "media", 0, 0.0007), ("MISS", "default", 5, 0.1),
           ("HIT", "media", 7, 0.0), ("MISS", "default", 1, 31.0), ("HIT", "thumb", 3, 2.5)]


def _reference() -> CollectorRegistry:
    registry = CollectorRegistry()
    latency = Histogram("edgeproxy_request_duration_seconds", "", ["tier", "result"],
                        buckets=_LATENCY_BUCKETS, registry=registry)
    for result, _cls, _n, seconds in ANSWERS:
        latency.labels("edge", result).observe(seconds)
    return registry


def test_a_turn_of_the_loop_adds_up_to_one_observe_per_request() -> None:
    metrics = NodeMetrics("edge")

    async def answer() -> float | None:
        for result, cls, nbytes, seconds in ANSWERS:
            metrics.observe(result, cls, nbytes, seconds)
        before = metrics.registry.get_sample_value(
            "edgeproxy_requests_total", {"tier": "edge", "result": "HIT", "content_class": "media"})
        await asyncio.sleep(0)  # the turn ends: the tallies go to the counters
        return before

    assert asyncio.run(answer()) is None  # not yet shared during the turn
    got, want = metrics.registry, _reference()
    assert got.get_sample_value("edgeproxy_requests_total", {
        "tier": "edge", "result": "HIT", "content_class": "media"}) == 3
    assert got.get_sample_value("edgeproxy_response_bytes_total", {
        "tier": "edge", "result": "MISS", "content_class": "default"}) == 6
    for result in ("HIT", "MISS"):
        for bound in [*map(floatToGoString, _LATENCY_BUCKETS), "+Inf"]:
            labels = {"tier": "edge", "result": result, "le": bound}
            name = "edgeproxy_request_duration_seconds_bucket"
            value = got.get_sample_value(name, labels)
            assert value is not None and value == want.get_sample_value(name, labels), \
                (result, bound)
        for suffix in ("_count", "_sum"):
            name, labels = "edgeproxy_request_duration_seconds" + suffix, {
                "tier": "edge", "result": result}
            assert got.get_sample_value(name, labels) == want.get_sample_value(name, labels)


def test_a_scrape_in_the_same_turn_sees_every_request() -> None:
    metrics = NodeMetrics("edge")

    async def scrape() -> bytes:
        metrics.observe("HIT", "media", 10, 0.001)
        return metrics.render(0, 1)

    assert b'edgeproxy_requests_total{content_class="media",result="HIT",tier="edge"} 1.0' \
        in asyncio.run(scrape())
