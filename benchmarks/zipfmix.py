"""A timed Zipf-popular mix of full and range GETs through edge → shield → origin.

The load comes from wrk with `zipf_mix.lua` (a Python client topped out near 400 req/s on this
machine even against nginx, so it would have measured itself). Hit ratios per tier come from
each node's ``/metrics`` — the chain runs one worker per tier, so a scrape sees all requests —
and, as a cross-check, from the ``X-Cache`` of every answer, tallied in the Lua script
("HIT from edge" / "MISS from edge, HIT from shield" / "MISS from edge, MISS from shield").
Origin offload is measured at the origin itself.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import promstats
from .deploy import Origin, Server
from .zipf import small_object_lengths

LUA = Path(__file__).resolve().parent / "zipf_mix.lua"


def wrk_mix_argv(url: str, listing: Path, *, duration: float, connections: int,
                 zipf_s: float = 1.0, range_fraction: float = 0.3,
                 range_bytes: int = 64 * 1024, threads: int = 2) -> list[str]:  # fmt: skip
    """The wrk command line of the mix."""
    return ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s", "--latency",
            "--timeout", "30s", "-s", str(LUA), url, "--", str(listing), str(zipf_s),
            str(range_fraction), str(range_bytes)]


def run_wrk_mix(url: str, listing: Path, *, duration: float, connections: int,
                zipf_s: float, range_fraction: float, range_bytes: int) -> dict[str, Any]:
    """wrk -t2 with the Zipf Lua script; its JSON summary line."""
    return run_wrk_mixes([url], listing, duration=duration, connections=connections,
                         zipf_s=zipf_s, range_fraction=range_fraction,
                         range_bytes=range_bytes)[0]


def run_wrk_mixes(urls: list[str], listing: Path, *, duration: float, connections: int,
                  zipf_s: float, range_fraction: float,
                  range_bytes: int) -> list[dict[str, Any]]:  # fmt: skip
    """The mix against several edges at once: wrk's 2 threads and the connections split
    between them (each wrk seeds its own request sequence alike: same popularity order)."""
    per = max(1, connections // len(urls))
    threads = max(1, 2 // len(urls))
    runs = [subprocess.Popen(
        wrk_mix_argv(u, listing, duration=duration, connections=per, zipf_s=zipf_s,
                     range_fraction=range_fraction, range_bytes=range_bytes, threads=threads),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for u in urls]
    results = []
    for proc in runs:
        try:
            out, err = proc.communicate(timeout=duration + 90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        line = next((x for x in out.splitlines() if x.startswith("ZIPF_JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no result (exit {proc.returncode}):\n"
                               f"{out[-2000:]}\n{err[-2000:]}")
        results.append(dict(json.loads(line.removeprefix("ZIPF_JSON "))))
    return results


def objects_file(origin: Origin, path: Path, objects: int) -> Path:
    """Make ``objects`` fresh small objects at the origin; list them in ``path``."""
    lengths = small_object_lengths(objects)
    paths = origin.small_objects(lengths)
    path.write_text("".join(f"{p} {n}\n" for p, n in zip(paths, lengths, strict=True)))
    return path


def _node_stats(before: promstats.Samples, after: promstats.Samples) -> dict[str, Any]:
    by_result = {res: promstats.delta(after, before, "edgeproxy_requests_total", result=res)
                 for res in ("HIT", "MISS", "STALE", "PASS", "ERROR")}
    answered = sum(by_result.values())
    upstream = promstats.delta(after, before, "edgeproxy_upstream_requests_total")
    return {"requests": answered, "by_result": by_result,
            "hit_ratio": by_result["HIT"] / answered if answered else None,
            "upstream_requests": upstream,
            "request_offload": 1 - upstream / answered if answered else None}


def run_mix(chain: Server, origin: Origin, workdir: Path, *, objects: int, duration: float,
            connections: int, log: Callable[[str], None], zipf_s: float = 1.0,
            range_fraction: float = 0.3, range_bytes: int = 64 * 1024) -> dict[str, Any]:
    """Run the mix on every edge of ``chain`` at once; hit ratios per node and tier."""
    listing = objects_file(origin, workdir / "zipf-objects.txt", objects)
    before = {node: promstats.scrape(url) for node, url in chain.metrics.items()}
    origin_before = origin.stats(paths=False)
    urls = chain.edge_urls or [chain.url]
    per_edge = run_wrk_mixes(urls, listing, duration=duration, connections=connections,
                             zipf_s=zipf_s, range_fraction=range_fraction,
                             range_bytes=range_bytes)
    origin.wait_idle(timeout=30)
    after = {node: promstats.scrape(url) for node, url in chain.metrics.items()}
    origin_after = origin.stats(paths=False)
    nodes = {node: _node_stats(before[node], after[node]) for node in chain.metrics}
    edge_nodes = [n for n in nodes if n.startswith("edge")]
    edge_req = sum(nodes[n]["requests"] for n in edge_nodes)
    edge_hit = sum(nodes[n]["by_result"]["HIT"] for n in edge_nodes)
    edge_up = sum(nodes[n]["upstream_requests"] for n in edge_nodes)
    load = {k: sum(r[k] for r in per_edge) for k in per_edge[0]
            if k not in ("p50_us", "p99_us", "duration_us")}
    load["duration_us"] = max(r["duration_us"] for r in per_edge)
    origin_requests = origin_after["total_requests"] - origin_before["total_requests"]
    origin_bytes = origin_after["total_bytes"] - origin_before["total_bytes"]
    n = max(1, load["requests"])
    edge_misses = load["miss_hit"] + load["miss_miss"]
    result = {
        "objects": objects, "zipf_s": zipf_s, "range_fraction": range_fraction,
        "duration_s": duration, "connections": connections, "edges": len(urls),
        "client": load, "per_edge_client": per_edge, "nodes": nodes,
        "edge_tier": {"requests": edge_req, "hit_ratio": edge_hit / edge_req if edge_req
                      else None, "upstream_requests": edge_up},
        "rps": load["requests"] / (load["duration_us"] / 1e6),
        "origin_requests": origin_requests, "origin_bytes": origin_bytes,
        "origin_request_offload": 1 - origin_requests / n,
        "origin_byte_offload": 1 - origin_bytes / load["bytes"] if load["bytes"] else None,
        "x_cache_edge_hit_ratio": load["hit"] / n,
        "x_cache_shield_hit_ratio": load["miss_hit"] / edge_misses if edge_misses else None,
    }
    shield = nodes.get("shield", {})
    log(f"  zipf mix on {len(urls)} edge(s): {load['requests']} requests "
        f"({result['rps']:.0f} req/s, p50 " + "/".join(
            f"{r['p50_us'] / 1000:.1f}" for r in per_edge) + " ms, p99 " + "/".join(
            f"{r['p99_us'] / 1000:.0f}" for r in per_edge) + f" ms, {load['errors']} errors); "
        f"edge tier hit ratio {_pct(result['edge_tier']['hit_ratio'])}, shield hit ratio "
        f"{_pct(shield.get('hit_ratio'))}, origin request offload "
        f"{_pct(result['origin_request_offload'])}; X-Cache: HIT {load['hit']}, MISS/HIT "
        f"{load['miss_hit']}, MISS/MISS {load['miss_miss']}, other {load['other']}")
    return result


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"
