"""Trace-driven simulation of edge and shield tiers at a scale one machine cannot run for real.

A Zipf-popular catalogue with churn (new media takes popular ranks, the displaced object is
never asked for again) and object sizes from seed 004's media mix is requested from 200 PoPs in
three regions (seed 000: Americas, Europe, Asia). Each PoP is an edge with a byte-bounded cache;
its misses go, depending on the design, to no shield, one shield, the shield its region's group
picks by rendezvous hashing (HRW) of the key, HRW over every shield, or a shield picked at random
(an L4 load balancer that knows nothing of keys). Shield misses go to the origin.

Caches evict LRU or, like edgeproxy's disk cache (diskcache's ``least-recently-stored``), FIFO.
Reported per design: hit ratio per tier (requests and bytes) and origin offload.

    python -m benchmarks.simulate                     # the table (a minute or so)
    python -m benchmarks.simulate --plot sim.png --markdown
    python -m benchmarks.simulate_validate            # against a real loopback topology
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import random
import textwrap
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgeproxy.cache.director import hrw_score

MB = 1_000_000


@dataclass(frozen=True)
class MediaKind:
    """One kind of media: its share of the catalogue and its size distribution."""

    name: str
    share: float  # of objects
    mean: int  # bytes
    cap: int  # largest allowed (seed 004's limits)


# Seed 004's "mixed content" conversation: 15 images (2 MB), 3 videos (10 MB), 2 documents
# (500 KB); each image and video also has a thumbnail (a few KB).
MEDIA_MIX = (
    MediaKind("thumbnail", 18 / 38, 2_000, 64 * 1024),
    MediaKind("image", 15 / 38, 2 * MB, 50 * 1024**2),
    MediaKind("video", 3 / 38, 10 * MB, 100 * 1024**2),
    MediaKind("document", 2 / 38, 500_000, 50 * 1024**2),
)
REGIONS = {"americas": 80, "europe": 70, "asia": 50}  # PoPs per region, 200 in all


@dataclass(frozen=True)
class Workload:
    """What the trace looks like."""

    requests: int = 2_000_000
    catalogue: int = 100_000  # live objects at any time
    alpha: float = 0.9  # Zipf exponent of popularity by rank
    churn: float = 0.02  # new objects per request
    regions: Sequence[tuple[str, int]] = tuple(REGIONS.items())
    mix: Sequence[MediaKind] = MEDIA_MIX
    size_scale: float = 1.0  # multiplies every size (small-scale validation)
    seed: int = 1


@dataclass
class Trace:
    """Requests as (PoP index, object id), each object's size and each PoP's region."""

    requests: list[tuple[int, int]]
    sizes: list[int]
    pop_region: list[int]
    region_names: list[str]


def make_trace(w: Workload) -> Trace:
    """A deterministic trace of ``w`` (same workload, same trace)."""
    rnd = random.Random(w.seed)
    cumulative = list(itertools.accumulate(1.0 / r**w.alpha for r in range(1, w.catalogue + 1)))
    total = cumulative[-1]
    kinds = list(itertools.accumulate(k.share for k in w.mix))
    sizes: list[int] = []

    def new_object() -> int:
        kind = w.mix[min(bisect.bisect(kinds, rnd.random() * kinds[-1]), len(w.mix) - 1)]
        # Log-normal around the kind's mean (sigma 0.5), within its limit.
        size = kind.mean * math.exp(rnd.gauss(-0.125, 0.5)) * w.size_scale
        sizes.append(max(1, min(int(size), int(kind.cap * w.size_scale))))
        return len(sizes) - 1

    slots = [new_object() for _ in range(w.catalogue)]  # rank -> object; shuffled kinds
    pop_region = [i for i, (_, n) in enumerate(w.regions) for _ in range(n)]
    requests = []
    for _ in range(w.requests):
        rank = bisect.bisect(cumulative, rnd.random() * total)
        if rnd.random() < w.churn:
            slots[rank] = new_object()
        requests.append((rnd.randrange(len(pop_region)), slots[rank]))
    return Trace(requests, sizes, pop_region, [name for name, _ in w.regions])


class Cache:
    """A byte-bounded cache evicting LRU, or FIFO (``least-recently-stored``, edgeproxy's).

    ``charge`` maps an object's size to the bytes it takes from the capacity (a real store's
    pages and index rows); by default its size.
    """

    def __init__(self, capacity: int, policy: str = "lru",
                 charge: Callable[[int], int] | None = None) -> None:  # fmt: skip
        if policy not in ("lru", "fifo"):
            raise ValueError(f"unknown eviction policy {policy!r}")
        self.capacity, self.lru, self.charge = capacity, policy == "lru", charge
        self.used = 0
        self.entries: OrderedDict[int, int] = OrderedDict()

    def get(self, obj: int) -> bool:
        """Whether ``obj`` is cached (an LRU hit makes it the most recent)."""
        if obj not in self.entries:
            return False
        if self.lru:
            self.entries.move_to_end(obj)
        return True

    def put(self, obj: int, size: int) -> None:
        """Store ``obj``, evicting the oldest until it fits; larger than the cache: skipped."""
        if self.charge is not None:
            size = self.charge(size)
        if size > self.capacity or obj in self.entries:
            return
        while self.used + size > self.capacity:
            _, evicted = self.entries.popitem(last=False)
            self.used -= evicted
        self.entries[obj] = size
        self.used += size


@dataclass(frozen=True)
class Design:
    """A shield layout: how many shields, and which one serves (region, object)."""

    name: str
    shields: int
    pick: Callable[[int, int], int] | None  # (region, object) -> shield index; None: no shield
    capacity_factor: int = 1  # times the configured shield capacity


def hrw_pick(group: Sequence[int]) -> Callable[[int], int]:
    """Rendezvous hashing of an object over shield indexes ``group`` (the director's score)."""
    ids = [(s, f"shield-{s}".encode()) for s in group]
    memo: dict[int, int] = {}

    def pick(obj: int) -> int:
        found = memo.get(obj)
        if found is None:
            key = str(obj)
            found = max(ids, key=lambda i: hrw_score(i[1], key, 1.0))[0]
            memo[obj] = found
        return found

    return pick


def designs(regions: int, per_region: int, seed: int = 1) -> list[Design]:
    """The compared layouts; the multi-shield ones have ``regions * per_region`` shields."""
    m = regions * per_region
    groups = [hrw_pick(range(r * per_region, (r + 1) * per_region)) for r in range(regions)]
    everyone = hrw_pick(range(m))
    rnd = random.Random(seed)
    return [
        Design("no shield", 0, None),
        Design("one shield", 1, lambda r, o: 0),
        Design(f"one shield, {m}x capacity", 1, lambda r, o: 0, capacity_factor=m),
        Design(f"regional shields ({regions}x{per_region}, HRW in region)", m,
               lambda r, o: groups[r](o)),
        Design(f"HRW over {m} shields", m, lambda r, o: everyone(o)),
        Design(f"{m} shields, random pick", m, lambda r, o: rnd.randrange(m)),
    ]  # fmt: skip


@dataclass
class Result:
    """Counts of one simulated design (after the warm-up)."""

    design: str
    requests: int = 0
    bytes: int = 0
    edge_hits: int = 0
    edge_hit_bytes: int = 0
    shield_requests: int = 0
    shield_hits: int = 0
    shield_hit_bytes: int = 0
    origin_requests: int = 0
    origin_bytes: int = 0

    def ratios(self) -> dict[str, float]:
        """Hit ratios per tier and origin offload, as fractions."""
        def frac(a: int, b: int) -> float:
            return a / b if b else 0.0

        shield_bytes = self.bytes - self.edge_hit_bytes
        return {
            "edge_hit": frac(self.edge_hits, self.requests),
            "edge_byte_hit": frac(self.edge_hit_bytes, self.bytes),
            "shield_hit": frac(self.shield_hits, self.shield_requests),
            "shield_byte_hit": frac(self.shield_hit_bytes, shield_bytes),
            "offload": 1 - frac(self.origin_requests, self.requests),
            "byte_offload": 1 - frac(self.origin_bytes, self.bytes),
        }


def simulate(trace: Trace, design: Design, *, edge_capacity: int, shield_capacity: int,
             policy: str = "lru", warmup: float = 0.2,
             charge: Callable[[int], int] | None = None) -> Result:  # fmt: skip
    """Replay ``trace`` through fresh caches laid out as ``design``."""
    edges = [Cache(edge_capacity, policy, charge) for _ in trace.pop_region]
    shields = [Cache(shield_capacity * design.capacity_factor, policy, charge)
               for _ in range(design.shields)]
    start = int(len(trace.requests) * warmup)
    res = Result(design.name)
    sizes, region_of, pick = trace.sizes, trace.pop_region, design.pick
    for i, (pop, obj) in enumerate(trace.requests):
        counted = i >= start
        size = sizes[obj]
        if counted:
            res.requests += 1
            res.bytes += size
        edge = edges[pop]
        if edge.get(obj):
            if counted:
                res.edge_hits += 1
                res.edge_hit_bytes += size
            continue
        if pick is not None:
            shield = shields[pick(region_of[pop], obj)]
            if counted:
                res.shield_requests += 1
            if shield.get(obj):
                if counted:
                    res.shield_hits += 1
                    res.shield_hit_bytes += size
                edge.put(obj, size)
                continue
            shield.put(obj, size)
        if counted:
            res.origin_requests += 1
            res.origin_bytes += size
        edge.put(obj, size)
    return res


def table(results: Sequence[Result]) -> str:
    """A Markdown table of ``results``."""
    lines = ["| design | edge hit (req) | edge hit (bytes) | shield hit (req) | "
             "shield hit (bytes) | origin offload (req) | origin offload (bytes) |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        q = r.ratios()
        shield = (f"{q['shield_hit']:.1%} | {q['shield_byte_hit']:.1%}"
                  if r.shield_requests else "n/a | n/a")  # fmt: skip
        lines.append(f"| {r.design} | {q['edge_hit']:.1%} | {q['edge_byte_hit']:.1%} | "
                     f"{shield} | {q['offload']:.1%} | {q['byte_offload']:.1%} |")  # fmt: skip
    return "\n".join(lines)


def plot(results: Sequence[Result], path: str, title: str) -> None:
    """Bars of origin offload and shield hit ratio per design (matplotlib, `bench` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.design.replace(" (", "\n(").replace(", ", ",\n", 1) for r in results]
    ratios = [r.ratios() for r in results]
    x = range(len(results))
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.27
    for j, (label, k) in enumerate((("origin offload (requests)", "offload"),
                                    ("origin offload (bytes)", "byte_offload"),
                                    ("shield hit ratio (requests)", "shield_hit"))):
        bars = ax.bar([i + (j - 1) * width for i in x], [100 * q[k] for q in ratios], width,
                      label=label)  # fmt: skip
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(list(x), names, fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title(textwrap.fill(title, 110), fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=Workload.requests)
    p.add_argument("--catalogue", type=int, default=Workload.catalogue)
    p.add_argument("--alpha", type=float, default=Workload.alpha)
    p.add_argument("--churn", type=float, default=Workload.churn)
    p.add_argument("--edge-gb", type=float, default=2.0, help="cache per edge (GB)")
    p.add_argument("--shield-gb", type=float, default=20.0, help="cache per shield (GB)")
    p.add_argument("--per-region", type=int, default=2, help="shields per region")
    p.add_argument("--policy", choices=("lru", "fifo"), default="lru")
    p.add_argument("--plot", metavar="PNG")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown only")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    a = parse_args(argv)
    w = Workload(requests=a.requests, catalogue=a.catalogue, alpha=a.alpha, churn=a.churn)
    trace = make_trace(w)
    results = [simulate(trace, d, edge_capacity=int(a.edge_gb * 1e9),
                        shield_capacity=int(a.shield_gb * 1e9), policy=a.policy)
               for d in designs(len(w.regions), a.per_region)]  # fmt: skip
    catalogue_gb = sum(trace.sizes[o] for o in set(o for _, o in trace.requests)) / 1e9
    setup = (f"{w.requests:,} requests, {w.catalogue:,} live objects (Zipf {w.alpha}, churn "
             f"{w.churn:.0%} of requests), {catalogue_gb:,.0f} GB requested, "
             f"{len(trace.pop_region)} PoPs in {len(w.regions)} regions, edge {a.edge_gb:g} GB, "
             f"shield {a.shield_gb:g} GB each, {a.policy.upper()}")  # fmt: skip
    print(setup if not a.markdown else f"*{setup}; first 20% of requests warm the caches.*\n")
    print(table(results))
    if a.plot:
        plot(results, a.plot, setup)


if __name__ == "__main__":
    main()
