"""Cold paths, with the origin throttled: a late range of a cold object, and a stampede.

Every measurement uses fresh object names (new content addresses), so every cache is cold for
it, and waits for the origin to go idle afterwards: nginx and Varnish keep filling a whole
object after the client that asked for a range has gone, and that must not slow the next run.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from . import memory, rawhttp
from .deploy import Origin, Server
from .promstats import scrape, total

LAST_64K = 64 * 1024
SIZE_100M = 100 * 1024**2


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def late_range(server: Server, origin: Origin, *, repeats: int,
               log: Callable[[str], None]) -> dict[str, Any]:
    """TTFB of the last 64 KiB of a cold 100 MiB object (fresh object per repetition)."""
    host, port = _host_port(server.url)
    runs = []
    for rep in range(repeats):
        path = origin.fresh("b100m", 1)[0]
        rng = f"bytes={SIZE_100M - LAST_64K}-{SIZE_100M - 1}"
        fetch = rawhttp.run(rawhttp.get(host, port, path, {"Range": rng}, timeout=60))
        idle = origin.wait_idle(timeout=60)
        stats = origin.stats()
        run = {
            "rep": rep, "status": fetch.status, "ttfb_s": fetch.ttfb, "total_s": fetch.total,
            "body_bytes": fetch.body_bytes, "complete": fetch.complete, "error": fetch.error,
            "origin_requests": stats["requests"].get(path, 0),
            "origin_bytes": stats["bytes"].get(path, 0), "origin_idle_after": idle,
            "cache_header": server.cache_header(fetch.headers),
        }
        runs.append(run)
        ttfb = "-" if fetch.ttfb is None else f"{fetch.ttfb * 1000:.1f} ms"
        log(f"  late range {server.name:<16} rep {rep}: status {fetch.status} TTFB {ttfb}, "
            f"origin sent {run['origin_bytes'] / 1024**2:.1f} MiB in "
            f"{run['origin_requests']} request(s)")
    ok = [r["ttfb_s"] for r in runs if r["ttfb_s"] is not None and r["complete"]]
    return {"server": server.name, "runs": runs,
            "ttfb_s": statistics.median(ok) if ok else None,
            "origin_bytes": statistics.median(r["origin_bytes"] for r in runs)}


async def _stampede(host: str, port: int, paths: list[str], clients: int,
                    timeout: float) -> list[rawhttp.Fetch]:
    gate = asyncio.Event()

    async def client(i: int) -> rawhttp.Fetch:
        await gate.wait()
        return await rawhttp.get(host, port, paths[i % len(paths)], timeout=timeout)

    tasks = [asyncio.ensure_future(client(i)) for i in range(clients)]
    await asyncio.sleep(0)  # every client is parked on the gate: release them together
    gate.set()
    return list(await asyncio.gather(*tasks))


def _percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(pct / 100 * (len(values) - 1))))
    return values[k]


def stampede(server: Server, origin: Origin, *, clients: int = 200, objects: int = 20,
             log: Callable[[str], None]) -> dict[str, Any]:
    """``clients`` concurrent GETs spread over ``objects`` cold 16 MiB objects."""
    host, port = _host_port(server.url)
    paths = origin.fresh("b16m", objects)
    edge_up_before = _edge_upstream(server)
    t0 = time.perf_counter()
    with memory.sampling([p.pid for p in server.procs]) as samplers:
        fetches = rawhttp.run(_stampede(host, port, paths, clients, timeout=120))
    wall = time.perf_counter() - t0
    rss = {p.name: {"before_mib": smp.largest_worker(baseline=True) / memory.MIB,
                    "peak_mib": smp.largest_worker() / memory.MIB}
           for p, smp in zip(server.procs, samplers, strict=True)}
    origin.wait_idle(timeout=60)
    stats = origin.stats()
    per_object = []
    for path in paths:
        mine = [f for f in fetches if f.path == path]
        ttfbs = sorted(f.ttfb for f in mine if f.ttfb is not None and f.complete)
        leader = ttfbs[0] if ttfbs else None
        followers = ttfbs[1:]
        per_object.append({
            "path": path, "origin_requests": stats["requests"].get(path, 0),
            "origin_bytes": stats["bytes"].get(path, 0),
            "leader_ttfb_s": leader,
            "max_follower_ttfb_s": max(followers) if followers else None,
            "follower_over_leader": (max(followers) / leader) if followers and leader else None,
        })
    edge_upstream = None
    if edge_up_before is not None:
        edge_upstream = (_edge_upstream(server) or 0) - edge_up_before
    ttfb = [f.ttfb for f in fetches if f.ttfb is not None and f.complete]  # (no error page)
    total = [f.total for f in fetches if f.total is not None and f.complete]
    ratios = [o["follower_over_leader"] for o in per_object if o["follower_over_leader"]]
    leaders = [o["leader_ttfb_s"] for o in per_object if o["leader_ttfb_s"] is not None]
    result = {
        "server": server.name, "clients": clients, "objects": objects, "wall_s": wall,
        "complete": sum(f.complete for f in fetches),
        "errors": sorted({f.error or f"status {f.status}" for f in fetches
                          if not f.complete}),
        "origin_requests_per_object": [o["origin_requests"] for o in per_object],
        "origin_requests_total": sum(o["origin_requests"] for o in per_object),
        "edge_upstream_requests": edge_upstream,
        "ttfb_p50_s": _percentile(ttfb, 50), "ttfb_p99_s": _percentile(ttfb, 99),
        "ttlb_p50_s": _percentile(total, 50), "ttlb_p99_s": _percentile(total, 99),
        "leader_ttfb_median_s": statistics.median(leaders) if leaders else None,
        "follower_over_leader_median": statistics.median(ratios) if ratios else None,
        "follower_over_leader_max": max(ratios) if ratios else None,
        "per_object": per_object, "rss_largest_worker": rss,
    }
    log(f"  stampede {server.name:<16}: {result['complete']}/{clients} complete, origin "
        f"requests {result['origin_requests_total']} for {objects} objects "
        f"(per object {min(result['origin_requests_per_object'])}-"
        f"{max(result['origin_requests_per_object'])}), TTFB p50 "
        f"{_ms(result['ttfb_p50_s'])} p99 {_ms(result['ttfb_p99_s'])}, follower/leader "
        f"median {_x(result['follower_over_leader_median'])} max "
        f"{_x(result['follower_over_leader_max'])}; largest worker RSS " + ", ".join(
            f"{name} {v['before_mib']:.0f} -> {v['peak_mib']:.0f} MiB"
            for name, v in rss.items()))
    return result


def _edge_upstream(server: Server) -> float | None:
    """Total upstream requests of an edgeproxy chain's edge tier (None for other servers)."""
    if "shield" not in server.metrics:
        return None
    return total(scrape(server.metrics["edge"]), "edgeproxy_upstream_requests_total",
                 tier="edge")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"
