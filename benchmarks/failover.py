"""Failover under load: 2 edges -> 3 shields -> origin, one shield killed with SIGKILL mid-run.

Every object is filled into its shield first; the edges start cold. Clients then fetch a
Zipf-popular catalogue through both edges for ``--seconds`` (the edges' first-time misses keep
the shields busy). At a third of the
run one shield is killed with SIGKILL; at two thirds it is started again (same port, same disk
cache). Every answer is checked: status 200 and SHA-256 of the body equal to the path's hash.

Reported, and checked (exit status 1 if any check fails):

- failed client requests (a status other than 200, or no answer): must be 0;
- wrong bytes (a 200 whose body does not hash to its name): must be 0;
- bodies cut off mid-stream (the killed shield was sending them) are counted separately: they
  are aborted visibly, as the design says, never completed with other bytes;
- origin refills while the shield is down: only objects whose HRW first choice is the dead
  shield may be fetched from the origin again (at most its share of the catalogue);
- after the restart, the edges send the restarted shield requests again (its keys came back).

    python -m benchmarks.failover [--seconds 15] [--clients 16] [--objects 300]

Needs the nodes to use ``edge.upstreams`` (the director wired into the cache engine).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import itertools
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from edgeproxy.cache.director import Director

from . import promstats
from .deploy import Origin
from .procs import install_cleanup, stop_all
from .simulate import Workload, make_trace
from .simulate_validate import MAX_OBJECT, MIN_OBJECT, _NoTransport, start_node


@dataclass
class Tally:
    """What the clients saw."""

    ok: int = 0
    failed: list[str] = field(default_factory=list)
    wrong_bytes: list[str] = field(default_factory=list)
    cut_mid_body: int = 0


async def client(edges: list[str], paths: list[str], cumulative: list[float], seed: int,
                 until: float, tally: Tally) -> None:  # fmt: skip
    """One client: Zipf-popular GETs through a random edge until ``until``."""
    rnd = random.Random(seed)
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        while time.monotonic() < until:
            path = paths[bisect.bisect(cumulative, rnd.random() * cumulative[-1])]
            url = rnd.choice(edges) + path
            try:
                async with http.stream("GET", url) as r:
                    if r.status_code != 200:
                        tally.failed.append(f"{url}: {r.status_code}")
                        continue
                    try:
                        body = b"".join([c async for c in r.aiter_bytes()])
                    except httpx.HTTPError:
                        tally.cut_mid_body += 1
                        continue
            except httpx.HTTPError as exc:
                tally.failed.append(f"{url}: {type(exc).__name__}")
                continue
            if hashlib.sha256(body).hexdigest() != path.rsplit("/", 1)[1]:
                tally.wrong_bytes.append(url)
            else:
                tally.ok += 1


async def warm_shields(order: Director, paths: list[str]) -> None:
    """Fill each object into its shield directly, leaving the edges cold."""
    queue = list(paths)
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        async def worker() -> None:
            while queue:
                path = queue.pop()
                r = await http.get(order.order(path)[0].url + path)
                assert r.status_code == 200, (path, r.status_code)

        await asyncio.gather(*(worker() for _ in range(16)))


def shield_requests(edges: list[str], shield: str) -> float:
    """Requests the edges' directors have sent to ``shield`` so far."""
    total = 0.0
    for edge in edges:
        samples = promstats.scrape(edge + "/metrics")
        total += promstats.total(samples, "edgeproxy_director_requests_total",
                                 upstream=shield)  # fmt: skip
    return total


async def run(a: argparse.Namespace, home: Path) -> bool:
    trace = make_trace(Workload(requests=1, catalogue=a.objects, size_scale=0.01, seed=5))
    lengths = [min(max(s, MIN_OBJECT), MAX_OBJECT) for s in trace.sizes[: a.objects]]
    origin = Origin(home, home / "blobs")
    paths = origin.small_objects(lengths)
    shields = [start_node("shield", home, f"shield{i}", [origin.url], 1 << 30)
               for i in range(3)]  # fmt: skip
    urls = [u for u, _ in shields]
    edges = [start_node("edge", home, f"edge{i}", urls, a.edge_bytes)[0] for i in range(2)]
    order = Director([(u, 1.0, _NoTransport()) for u in urls])
    victim = urls[1]
    owned = {p for p in paths if order.order(p)[0].url == victim}
    await warm_shields(order, paths)
    before = Counter(origin.stats()["requests"])
    cumulative = list(itertools.accumulate(1 / r**0.9 for r in range(1, len(paths) + 1)))
    tally = Tally()
    start = time.monotonic()
    load = [asyncio.create_task(client(edges, paths, cumulative, i, start + a.seconds, tally))
            for i in range(a.clients)]  # fmt: skip
    await asyncio.sleep(a.seconds / 3)
    os.killpg(shields[1][1].pid, signal.SIGKILL)
    shields[1][1].stop(grace=0)
    await asyncio.sleep(a.seconds / 3 - 0.5)
    during = Counter(origin.stats()["requests"]) - before
    port = int(victim.rsplit(":", 1)[1])
    _, revived = start_node("shield", home, "shield1", [origin.url], 1 << 30, port=port)
    await asyncio.sleep(2 * 1.0 + 0.5)  # two probe intervals
    sent_before = shield_requests(edges, victim)
    await asyncio.gather(*load)
    sent_after = shield_requests(edges, victim)
    shield_traffic = sum(shield_requests(edges, u) for u in urls)
    refilled = set(during)
    foreign = refilled - owned
    checks = {
        "0 failed client requests": not tally.failed,
        "0 wrong bytes": not tally.wrong_bytes,
        "origin refills only the dead shield's keys": not foreign,
        "the restarted shield gets requests again": sent_after > sent_before,
    }
    print(f"{a.clients} clients, {a.seconds:g}s, {len(paths)} objects, 2 edges, 3 shields; "
          f"shield {victim} killed at {a.seconds / 3:.0f}s, restarted at {2 * a.seconds / 3:.0f}s")
    print(f"answers: {tally.ok} ok, {len(tally.failed)} failed, {len(tally.wrong_bytes)} wrong "
          f"bytes, {tally.cut_mid_body} cut off mid-body by the kill")
    print(f"origin refills while it was down: {len(refilled)} objects, {len(foreign)} not the "
          f"dead shield's (its share: {len(owned)} of {len(paths)})")
    print(f"requests to the restarted shield after its return: {sent_after - sent_before:.0f}; "
          f"shield requests during the run: {shield_traffic:.0f}")
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    for line in (tally.failed + tally.wrong_bytes)[:5]:
        print("   ", line)
    origin.stop()
    revived.stop()
    return all(checks.values())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--objects", type=int, default=3000)
    p.add_argument("--edge-bytes", type=int, default=1 << 30, help="cache size of each edge")
    a = p.parse_args(argv)
    install_cleanup()
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
        try:
            ok = asyncio.run(run(a, Path(tmp)))
        finally:
            stop_all()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
