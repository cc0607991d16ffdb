"""Sequential miss cost: CPU milliseconds per miss per tier, edge → shield → origin.

One client on one keep-alive connection asks a freshly started pair (`twotier`) for N distinct
fresh 4 KiB objects, one after the other, so every request is a miss at both tiers and reaches
the origin once. Each tier's CPU time (user + system, psutil, summed over its whole process
tree: supervisor and workers, nginx master and workers, Varnish manager and child) is read
before and after; CPU ms per miss = delta / N, after subtracting what the tier burns when idle
(measured just before and just after, as a rate, times the run's wall time). The origin's
figure is the same measurement of the bench origin, for reference. A few misses before the
measured ones warm up connections and lazy imports.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from .deploy import Origin
from .interference import ForeignCpu, tree_cpu
from .twotier import KINDS, Pair, running

OBJECT_BYTES = 4 * 1024
WARMUP = 20


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {tier: tree_cpu([pid]) for tier, pid in pids.items()}


def _idle_rate(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU seconds per wall second of each tier with no traffic."""
    c0, t0 = _cpu(pids), time.monotonic()
    time.sleep(seconds)
    c1, t1 = _cpu(pids), time.monotonic()
    return {tier: (c1[tier] - c0[tier]) / (t1 - t0) for tier in pids}


def _fetch(client: httpx.Client, path: str) -> httpx.Response:
    resp = client.get(path)
    if resp.status_code != 200 or len(resp.content) != OBJECT_BYTES:
        raise RuntimeError(f"{path}: status {resp.status_code}, {len(resp.content)} bytes")
    return resp


def measure(pair: Pair, origin: Origin, *, requests: int, idle_seconds: float,
            our_pids: list[int], log: Callable[[str], None]) -> dict[str, Any]:
    """N sequential misses through ``pair``; CPU per miss for edge, shield and origin."""
    paths = origin.small_objects([OBJECT_BYTES] * (WARMUP + requests))
    pids = {"edge": pair.tiers["edge"].pid, "shield": pair.tiers["shield"].pid,
            "origin": origin.proc.pid}
    with httpx.Client(base_url=pair.server.url, timeout=60) as client:
        for path in paths[:WARMUP]:
            _fetch(client, path)
        idle_before = _idle_rate(pids, idle_seconds)
        origin_before = origin.stats(paths=False)["total_requests"]  # outside the CPU window
        latencies, hits = [], 0
        with ForeignCpu([*pids.values(), *our_pids]) as foreign:
            c0, t0 = _cpu(pids), time.monotonic()
            for path in paths[WARMUP:]:
                started = time.perf_counter()
                resp = _fetch(client, path)
                latencies.append(time.perf_counter() - started)
                hits += pair.server.is_hit(resp.headers)
            c1, t1 = _cpu(pids), time.monotonic()
        origin_requests = origin.stats(paths=False)["total_requests"] - origin_before
        idle_after = _idle_rate(pids, idle_seconds)
    wall = t1 - t0
    tiers = {}
    for tier in pids:
        idle = (idle_before[tier] + idle_after[tier]) / 2
        raw = c1[tier] - c0[tier]
        tiers[tier] = {"cpu_s": raw, "idle_cores": idle,
                       "cpu_ms_per_miss": max(0.0, raw - idle * wall) * 1000 / requests,
                       "raw_cpu_ms_per_miss": raw * 1000 / requests}
    latencies.sort()
    result = {
        "server": pair.server.name, "requests": requests, "wall_s": wall, "tiers": tiers,
        "hits": hits, "origin_requests": origin_requests,
        "foreign_cores": round(foreign.foreign_cores, 3),
        "latency_p50_ms": statistics.median(latencies) * 1000,
        "latency_p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000,
    }
    log(f"  misscost {pair.kind:<10} {requests} misses in {wall:.1f} s (p50 "
        f"{result['latency_p50_ms']:.2f} ms), origin requests {origin_requests}, edge hits "
        f"{hits}; CPU ms per miss: " + ", ".join(
            f"{tier} {t['cpu_ms_per_miss']:.3f} (raw {t['raw_cpu_ms_per_miss']:.3f})"
            for tier, t in tiers.items()) + f"; other {foreign.foreign_cores:.2f} cores")
    return result


def run_all(origin: Origin, workdir: Path, *, requests: int, idle_seconds: float,
            workers: int, our_pids: list[int], log: Callable[[str], None]) -> dict[str, Any]:
    """Every kind's pair in turn, each freshly started and alone on the machine."""
    servers = {}
    for kind in KINDS:
        with running(kind, workdir, origin.url, tag="misscost", workers=workers) as pair:
            servers[kind] = measure(pair, origin, requests=requests,
                                    idle_seconds=idle_seconds, our_pids=our_pids, log=log)
    return {"requests": requests, "object_bytes": OBJECT_BYTES, "warmup": WARMUP,
            "idle_seconds": idle_seconds, "edgeproxy_workers": workers, "servers": servers}
