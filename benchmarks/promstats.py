"""Read a node's Prometheus ``/metrics`` into plain samples.

Caveat found while building these benchmarks: each uvicorn worker keeps its own registry, so on
a node with ``workers > 1`` one scrape shows only the worker that happened to accept it. The
benchmarks therefore read ``/metrics`` only from single-worker nodes.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str) -> Samples:
    """Samples by sample name (``edgeproxy_requests_total``), each with its labels."""
    text = httpx.get(url, timeout=10).text
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over samples whose labels include ``labels``."""
    return sum(v for lab, v in samples.get(name, [])
               if all(lab.get(k) == want for k, want in labels.items()))


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    """How much ``name`` (filtered by ``labels``) grew between two scrapes."""
    return total(after, name, **labels) - total(before, name, **labels)


# What a benchmark run must never see on a node: bytes that failed a check, storage errors.
TROUBLE = ("edgeproxy_integrity_failures_total", "edgeproxy_storage_faults_total")


def trouble(metrics: dict[str, str]) -> dict[str, dict[str, float]]:
    """Integrity failures and storage faults each node of an edgeproxy deployment counted
    (``metrics``: node -> /metrics URL), by node."""
    return {node: {name.removeprefix("edgeproxy_").removesuffix("_total"):
                   total(scrape(url), name) for name in TROUBLE}
            for node, url in metrics.items()}
