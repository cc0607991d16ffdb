"""The memory tier's request hit ratio on the Zipf mix: `HotTier` itself against an LRU.

    python -m benchmarks.simulate_memory [--objects 10000] [--requests 150000]
                                         [--memory-mib 32] [--seed 5]

The mix is the one the two-tier Zipf cell sends (`benchmarks/zipf2.py`): objects of 1-128 KiB,
log-uniform, Zipf s=1; each of a node's two workers sees every other request (connections
are spread over the workers), so one worker's tier is replayed on half the requests. A
request is a hit when the tier holds the object; a miss stores it, as a read from disk does.
The LRU is the reference the tier replaced: evicting the least recently used first.
No timing: the ratio is the figure, and it does not depend on the machine.
"""

from __future__ import annotations

import argparse
import bisect
import random
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from edgeproxy.cache.hot import HotEntry, HotTier, PurgeEpoch
from edgeproxy.cache.meta import ObjectMeta
from edgeproxy.cache.policy import Freshness

from .zipf import small_object_lengths

FOREVER = 1e18  # entries stay fresh: the replay is about eviction only


def zipf_trace(objects: int, requests: int, *, s: float = 1.0, seed: int = 5) -> list[int]:
    """Object numbers (0: the most popular) of ``requests`` Zipf-popular requests."""
    cumulative, total = [], 0.0
    for rank in range(1, objects + 1):
        total += 1 / rank ** s
        cumulative.append(total)
    rnd = random.Random(seed)
    return [bisect.bisect_left(cumulative, rnd.random() * total) for _ in range(requests)]


def lru_hit_ratio(trace: Sequence[int], lengths: Sequence[int], capacity: int) -> float:
    """The share of ``trace`` a byte-bounded LRU of ``capacity`` bytes answers."""
    kept: OrderedDict[int, None] = OrderedDict()
    held = hits = 0
    for obj in trace:
        if obj in kept:
            kept.move_to_end(obj)
            hits += 1
            continue
        kept[obj] = None
        held += lengths[obj]
        while held > capacity:
            gone, _ = kept.popitem(last=False)
            held -= lengths[gone]
    return hits / len(trace)


def tier_hit_ratio(trace: Sequence[int], lengths: Sequence[int], capacity: int,
                   epoch_dir: Path) -> float:
    """The share of ``trace`` that `HotTier` (``capacity`` bytes) answers."""
    tier = HotTier(capacity, max(lengths), PurgeEpoch(epoch_dir / "epoch"))
    meta = ObjectMeta(200, None, None, None, None, (), Freshness(0.0, 0.0, FOREVER), "x", "v",
                      1)
    bodies = {length: bytes(length) for length in set(lengths)}
    hits = 0
    for obj in trace:
        key = f"/o/{obj}"
        if tier.get(key, 0.0) is not None:
            hits += 1
            continue
        tier.put(key, HotEntry.of(meta, bodies[lengths[obj]], [], FOREVER))
    return hits / len(trace)


def main(argv: Sequence[str] | None = None) -> None:
    """Print both hit ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=150_000, help="per worker")
    parser.add_argument("--memory-mib", type=float, default=32.0)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)
    lengths = small_object_lengths(args.objects)
    trace = zipf_trace(args.objects, args.requests, seed=args.seed)
    capacity = int(args.memory_mib * 1024 * 1024)
    with tempfile.TemporaryDirectory() as scratch:
        tier = tier_hit_ratio(trace, lengths, capacity, Path(scratch))
    lru = lru_hit_ratio(trace, lengths, capacity)
    print(f"{args.objects} objects ({sum(lengths) / 2**20:.0f} MiB), {len(trace)} requests, "
          f"{args.memory_mib:g} MiB tier: HotTier answers {tier:.1%}, an LRU {lru:.1%}")


if __name__ == "__main__":
    main()
