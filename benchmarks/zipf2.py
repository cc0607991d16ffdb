"""The Zipf mix through two tiers for every server kind: cold start, then warm.

The same trace as the ``zipf`` cell (10,000 objects of 1-128 KiB, Zipf s = 1, 30 % single-range
GETs, wrk with ``zipf_mix.lua`` at 32 connections), the same object list for every server, run
against a freshly started edge → shield pair (`twotier`) in consecutive windows: the first
starts with empty caches (cold), the next follows right after (warm). Offload is measured at
the origin, whose counters are zeroed before each server and read after every window: origin
requests and body bytes per window, the objects fetched for the first time, and after the last
window (and the drain of fills still running) the requests and bytes per object fetched — 1.0
and 1.0 when each object crossed the origin exactly once, whole.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import promstats
from .deploy import Origin
from .interference import ForeignCpu
from .twotier import KINDS, Pair, running
from .zipfmix import objects_file, run_wrk_mixes

ZIPF_S = 1.0
RANGE_FRACTION = 0.3
RANGE_BYTES = 64 * 1024
WINDOW_NAMES = ("cold", "warm")


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {p: n - before.get(p, 0) for p, n in after.items() if n != before.get(p, 0)}


def _window(name: str, load: dict[str, Any], before: dict[str, Any], after: dict[str, Any],
            foreign: float) -> dict[str, Any]:
    seconds = load["duration_us"] / 1e6
    return {
        "window": name, "requests": load["requests"], "bytes": load["bytes"],
        "rps": load["requests"] / seconds if seconds else 0.0,
        "p50_ms": load["p50_us"] / 1000, "p99_ms": load["p99_us"] / 1000,
        "errors": load["errors"], "non_2xx": load["sother"],
        "x_cache": {k: load[k] for k in ("hit", "miss", "miss_hit", "miss_miss", "other")},
        "origin_requests": after["total_requests"] - before["total_requests"],
        "origin_bytes": after["total_bytes"] - before["total_bytes"],
        "origin_new_objects": len(set(after["requests"]) - set(before["requests"])),
        "foreign_cores": round(foreign, 3),
    }


def run_server(pair: Pair, origin: Origin, listing: Path, sizes: dict[str, int], *,
               seconds: float, connections: int, our_pids: list[int],
               log: Callable[[str], None]) -> dict[str, Any]:
    """Consecutive windows on one fresh pair; per window and totals."""
    origin.reset()
    start = origin.stats()
    pids = [p.pid for p in pair.tiers.values()] + our_pids
    windows, before = [], start
    for name in WINDOW_NAMES:
        with ForeignCpu(pids) as foreign:
            load = run_wrk_mixes([pair.server.url], listing, duration=seconds,
                                 connections=connections, zipf_s=ZIPF_S,
                                 range_fraction=RANGE_FRACTION, range_bytes=RANGE_BYTES)[0]
        after = origin.stats()
        win = _window(name, load, before, after, foreign.foreign_cores)
        windows.append(win)
        before = after
        log(f"  zipf2 {pair.kind:<10} {name}: {win['rps']:8,.0f} req/s, p50 "
            f"{win['p50_ms']:.1f} ms, p99 {win['p99_ms']:.0f} ms, {win['errors']} errors, "
            f"{win['non_2xx']} non-2xx; origin {win['origin_requests']:,} requests "
            f"({win['origin_new_objects']:,} new objects, "
            f"{win['origin_bytes'] / 1024**2:,.1f} MiB); other {foreign.foreign_cores:.2f} "
            f"cores")
    idle = origin.wait_idle(timeout=60)
    final = origin.stats()
    fetched = _delta(final["requests"], start["requests"])
    objects = [p for p in fetched if p in sizes]
    total_requests = final["total_requests"] - start["total_requests"]
    total_bytes = final["total_bytes"] - start["total_bytes"]
    object_bytes = sum(sizes[p] for p in objects)
    result = {
        "server": pair.server.name, "windows": windows,
        "drain_origin_requests": final["total_requests"] - before["total_requests"],
        "origin_idle_after": idle, "origin_requests": total_requests,
        "origin_bytes": total_bytes, "objects_fetched": len(objects),
        "requests_per_object": total_requests / len(objects) if objects else None,
        "bytes_per_object_byte": total_bytes / object_bytes if object_bytes else None,
        "trouble": promstats.trouble(pair.server.metrics),
    }
    log(f"  zipf2 {pair.kind:<10} origin in all: {total_requests:,} requests for "
        f"{len(objects):,} objects ({_f(result['requests_per_object'])} requests, "
        f"{_f(result['bytes_per_object_byte'])} bytes per object byte)")
    return result


def run_all(origin: Origin, workdir: Path, *, objects: int, seconds: float,
            connections: int, workers: int, our_pids: list[int],
            log: Callable[[str], None]) -> dict[str, Any]:
    """Every kind's pair in turn (each alone on the machine) on the same object list."""
    listing = objects_file(origin, workdir / "zipf2-objects.txt", objects)
    sizes = {}
    for line in listing.read_text().splitlines():
        path, size = line.split()
        sizes[path] = int(size)
    servers = {}
    for kind in KINDS:
        with running(kind, workdir, origin.url, tag="zipf2", workers=workers) as pair:
            servers[kind] = run_server(pair, origin, listing, sizes, seconds=seconds,
                                       connections=connections, our_pids=our_pids, log=log)
    return {"objects": objects, "zipf_s": ZIPF_S, "range_fraction": RANGE_FRACTION,
            "range_bytes": RANGE_BYTES, "window_s": seconds, "connections": connections,
            "edgeproxy_workers": workers, "servers": servers}


def window(result: dict[str, Any], server: str, name: str) -> dict[str, Any] | None:
    """One server's window (``cold`` / ``warm``) of a ``run_all`` result, if measured."""
    res = result.get("servers", {}).get(server)
    if not res:
        return None
    return next((w for w in res["windows"] if w["window"] == name), None)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
