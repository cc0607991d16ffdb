"""Check the simulator against a real loopback topology on the same trace.

Starts the bench origin, ``--shields`` shields and one edge per PoP (edges in two regions, all
using every shield through ``edge.upstreams``, i.e. the director's rendezvous hashing), replays a
small trace of `benchmarks.simulate` one request at a time, classifies each answer by its
``X-Cache`` (``HIT from edge`` / ``MISS from edge, HIT from shield`` / else the origin), and
compares the hit ratio of each tier with `simulate.simulate` on the same trace, the same
capacities, the same key-to-shield mapping, FIFO eviction (edgeproxy's disk cache evicts
least-recently-stored) and the disk cache's accounting (`store_charge`). The memory tier is
turned off so only the disk cache is measured.

    python -m benchmarks.simulate_validate [--requests 4000] [--tolerance 0.03]

Exit status 0 when every tier agrees within the tolerance (absolute, in hit-ratio points).
With ``--shields`` > 1 this needs a node that honours ``edge.upstreams`` (the director wired into
the cache engine); a node that does not fails loudly, because ``edge.upstream`` then points at a
closed port. ``--shields 1`` checks the tier model with today's single-upstream nodes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import httpx

from edgeproxy.cache.director import Director
from edgeproxy.cache.store import INLINE_MAX
from edgeproxy.cache.transport import BeReq, UpstreamResponse

from .deploy import REPO, Origin
from .procs import Managed, free_port, install_cleanup, python, stop_all, wait_http
from .simulate import Design, Trace, Workload, make_trace, simulate

MAX_OBJECT = 256 * 1024  # the bench origin's small-object pool
MIN_OBJECT = 16
SQLITE_PAGE = 4096
FACTS_BYTES = 512  # an object's pickled facts (ObjectMeta), a row of the index


def store_charge(size: int) -> int:
    """What an object takes from a node's ``cache_size``: bodies under ``INLINE_MAX`` live in
    the SQLite index, whose volume counts whole pages; larger ones are files, counted exactly.
    Each object also stores its facts."""
    if size < INLINE_MAX:
        size = -(-size // SQLITE_PAGE) * SQLITE_PAGE
    return size + FACTS_BYTES


def workload(requests: int, catalogue: int, pops: int) -> Workload:
    """Seed 004's mix at 1/100 of the size, over ``pops`` PoPs in two regions."""
    half = pops // 2
    return Workload(requests=requests, catalogue=catalogue, churn=0.02, size_scale=0.01,
                    regions=(("west", pops - half), ("east", half)), seed=11)  # fmt: skip


def node_config(path: Path, data: Path, role: str, port: int, upstreams: list[str],
                cache_size: int) -> None:  # fmt: skip
    """One node's config: its own port and data dir, no memory tier.

    With several upstreams, ``upstream`` is a closed port, so a node that ignores
    ``upstreams`` fails loudly instead of measuring something else.
    """
    if len(upstreams) == 1:
        parents = f"upstream: {upstreams[0]}"
    else:
        parents = (f"upstream: http://127.0.0.1:{free_port()}\n"
                   f"          upstreams: [{', '.join(upstreams)}]")  # fmt: skip
    path.write_text(textwrap.dedent(f"""\
        data_dir: {data}
        log_level: warning
        log: {{access: "off"}}
        {role}:
          host: 127.0.0.1
          port: {port}
          {parents}
          cache_size: {cache_size}
          workers: 1
        cache:
          memory_size: 0
          slice_size: 1MiB
          upstream_probe_interval: 1s
        """))


def start(role: str, home: Path, name: str, upstreams: list[str], cache_size: int) -> str:
    """Start one node; its URL."""
    return start_node(role, home, name, upstreams, cache_size)[0]


def start_node(role: str, home: Path, name: str, upstreams: list[str], cache_size: int,
               port: int | None = None) -> tuple[str, Managed]:  # fmt: skip
    """Start one node (again, on the same port and data, when ``port`` is given)."""
    port = port or free_port()
    config = home / f"{name}.yaml"
    node_config(config, home / name, role, port, upstreams, cache_size)
    proc = Managed(name, [python(), "-m", "edgeproxy", "serve", "--config", str(config),
                          "--role", role], home / f"{name}.log", cwd=REPO)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc)
    return url, proc


def tier_of(x_cache: str) -> str:
    """Which tier answered: ``edge``, ``shield`` or ``origin``."""
    parts = [p.strip().upper() for p in x_cache.split(",")]
    if parts and parts[0].startswith("HIT"):
        return "edge"
    if len(parts) > 1 and parts[1].startswith("HIT"):
        return "shield"
    return "origin"


def replay(trace: Trace, paths: list[str], edges: list[str], warmup: int) -> Counter[str]:
    """Send the trace, one request at a time; answers per tier after the warm-up."""
    tiers: Counter[str] = Counter()
    with httpx.Client(timeout=30) as http:
        for i, (pop, obj) in enumerate(trace.requests):
            r = http.get(edges[pop] + paths[obj])
            if r.status_code != 200 or len(r.content) != trace.sizes[obj]:
                raise SystemExit(f"request {i} ({paths[obj]} via {edges[pop]}) answered "
                                 f"{r.status_code} with {len(r.content)} bytes: is the "
                                 "director wired into the node (edge.upstreams)?")  # fmt: skip
            if i >= warmup:
                tiers[tier_of(r.headers.get("x-cache", ""))] += 1
    return tiers


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--catalogue", type=int, default=500)
    p.add_argument("--pops", type=int, default=4, help="edges (half in each region)")
    p.add_argument("--shields", type=int, default=3)
    p.add_argument("--edge-bytes", type=int, default=1_500_000)
    p.add_argument("--shield-bytes", type=int, default=3_000_000)
    p.add_argument("--tolerance", type=float, default=0.03)
    a = p.parse_args(argv)
    install_cleanup()
    trace = make_trace(workload(a.requests, a.catalogue, a.pops))
    trace.sizes[:] = [min(max(s, MIN_OBJECT), MAX_OBJECT) for s in trace.sizes]
    with tempfile.TemporaryDirectory(prefix="simvalidate-") as tmp:
        home = Path(tmp)
        origin = Origin(home, home / "blobs")
        try:
            paths = origin.small_objects(trace.sizes)
            shields = [start("shield", home, f"shield{i}", [origin.url], a.shield_bytes)
                       for i in range(a.shields)]  # fmt: skip
            edges = [start("edge", home, f"edge{i}", shields, a.edge_bytes)
                     for i in range(a.pops)]  # fmt: skip
            warmup = int(len(trace.requests) * 0.2)
            real = replay(trace, paths, edges, warmup)
        finally:
            origin.stop()
            stop_all()
    # The simulator, with the real mapping of key to shield (the director's HRW order).
    order = Director([(url, 1.0, _NoTransport()) for url in shields])
    index = {url: i for i, url in enumerate(shields)}
    owner = [index[order.order(path)[0].url] for path in paths]
    design = Design(f"HRW over {a.shields} shields", a.shields, lambda r, o: owner[o])
    sim = simulate(trace, design, edge_capacity=a.edge_bytes, shield_capacity=a.shield_bytes,
                   policy="fifo", warmup=0.2, charge=store_charge)  # fmt: skip
    total = sum(real.values())
    measured = {"edge": real["edge"] / total,
                "shield": real["shield"] / max(1, real["shield"] + real["origin"]),
                "offload": 1 - real["origin"] / total}  # fmt: skip
    q = sim.ratios()
    predicted = {"edge": q["edge_hit"], "shield": q["shield_hit"], "offload": q["offload"]}
    ok = True
    print(f"{a.requests} requests, {a.pops} edges, {a.shields} shields, FIFO")
    print("| hit ratio | real | simulated | difference |\n|---|---:|---:|---:|")
    for k in ("edge", "shield", "offload"):
        diff = measured[k] - predicted[k]
        ok &= abs(diff) <= a.tolerance
        print(f"| {k} | {measured[k]:.1%} | {predicted[k]:.1%} | {diff:+.1%} |")
    print("agree" if ok else f"DISAGREE (tolerance {a.tolerance:.0%})")
    return 0 if ok else 1


class _NoTransport:
    """Stands in for a parent's transport: only the HRW order is used here."""

    async def send(self, bereq: BeReq) -> UpstreamResponse:  # pragma: no cover - never sent
        raise NotImplementedError

    async def aclose(self) -> None:  # pragma: no cover
        return None


if __name__ == "__main__":
    sys.exit(main())
