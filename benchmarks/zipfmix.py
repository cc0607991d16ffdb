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
                 range_bytes: int = 64 * 1024) -> list[str]:  # fmt: skip
    """The wrk command line of the mix."""
    return ["wrk", "-t", "2", "-c", str(connections), "-d", f"{duration:g}s", "--latency",
            "--timeout", "30s", "-s", str(LUA), url, "--", str(listing), str(zipf_s),
            str(range_fraction), str(range_bytes)]


def run_wrk_mix(url: str, listing: Path, *, duration: float, connections: int,
                zipf_s: float, range_fraction: float, range_bytes: int) -> dict[str, Any]:
    """wrk -t2 with the Zipf Lua script; its JSON summary line."""
    argv = wrk_mix_argv(url, listing, duration=duration, connections=connections,
                        zipf_s=zipf_s, range_fraction=range_fraction, range_bytes=range_bytes)
    out = subprocess.run(argv, capture_output=True, text=True, check=False,
                         timeout=duration + 90)
    for line in out.stdout.splitlines():
        if line.startswith("ZIPF_JSON "):
            return dict(json.loads(line.removeprefix("ZIPF_JSON ")))
    raise RuntimeError(f"wrk printed no result (exit {out.returncode}):\n"
                       f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def objects_file(origin: Origin, path: Path, objects: int) -> Path:
    """Make ``objects`` fresh small objects at the origin; list them in ``path``."""
    lengths = small_object_lengths(objects)
    paths = origin.small_objects(lengths)
    path.write_text("".join(f"{p} {n}\n" for p, n in zip(paths, lengths, strict=True)))
    return path


def run_mix(chain: Server, origin: Origin, workdir: Path, *, objects: int, duration: float,
            connections: int, log: Callable[[str], None], zipf_s: float = 1.0,
            range_fraction: float = 0.3, range_bytes: int = 64 * 1024) -> dict[str, Any]:
    """Run the mix for ``duration`` seconds; hit ratios per tier and origin offload."""
    listing = objects_file(origin, workdir / "zipf-objects.txt", objects)
    before = {tier: promstats.scrape(url) for tier, url in chain.metrics.items()}
    origin_before = origin.stats()
    load = run_wrk_mix(chain.url, listing, duration=duration, connections=connections,
                       zipf_s=zipf_s, range_fraction=range_fraction, range_bytes=range_bytes)
    origin.wait_idle(timeout=30)
    after = {tier: promstats.scrape(url) for tier, url in chain.metrics.items()}
    origin_after = origin.stats()
    tiers: dict[str, Any] = {}
    for tier in chain.metrics:
        name = "edgeproxy_requests_total"
        by_result = {res: promstats.delta(after[tier], before[tier], name, tier=tier, result=res)
                     for res in ("HIT", "MISS", "STALE", "PASS", "ERROR")}
        answered = sum(by_result.values())
        upstream = promstats.delta(after[tier], before[tier],
                                   "edgeproxy_upstream_requests_total", tier=tier)
        tiers[tier] = {
            "requests": answered, "by_result": by_result,
            "hit_ratio": by_result["HIT"] / answered if answered else None,
            "upstream_requests": upstream,
            "request_offload": 1 - upstream / answered if answered else None,
        }
    origin_requests = origin_after["total_requests"] - origin_before["total_requests"]
    origin_bytes = origin_after["total_bytes"] - origin_before["total_bytes"]
    n = max(1, load["requests"])
    edge_misses = load["miss_hit"] + load["miss_miss"]
    result = {
        "objects": objects, "zipf_s": zipf_s, "range_fraction": range_fraction,
        "duration_s": duration, "connections": connections, "client": load, "tiers": tiers,
        "rps": load["requests"] / (load["duration_us"] / 1e6),
        "origin_requests": origin_requests, "origin_bytes": origin_bytes,
        "origin_request_offload": 1 - origin_requests / n,
        "origin_byte_offload": 1 - origin_bytes / load["bytes"] if load["bytes"] else None,
        "x_cache_edge_hit_ratio": load["hit"] / n,
        "x_cache_shield_hit_ratio": load["miss_hit"] / edge_misses if edge_misses else None,
    }
    log(f"  zipf mix: {load['requests']} requests ({result['rps']:.0f} req/s, "
        f"p50 {load['p50_us'] / 1000:.1f} ms, p99 {load['p99_us'] / 1000:.1f} ms, "
        f"{load['errors']} errors); edge hit ratio "
        f"{_pct(tiers.get('edge', {}).get('hit_ratio'))}, shield hit ratio "
        f"{_pct(tiers.get('shield', {}).get('hit_ratio'))}, origin request offload "
        f"{_pct(result['origin_request_offload'])}; X-Cache: HIT {load['hit']}, MISS/HIT "
        f"{load['miss_hit']}, MISS/MISS {load['miss_miss']}, other {load['other']}")
    return result


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"
