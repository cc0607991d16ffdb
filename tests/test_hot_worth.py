"""The memory tier evicts by worth per byte (Greedy-Dual-Size-Frequency), not by recency.

Each rule is checked on `HotTier` itself; the last test replays the benchmarks' Zipf mix and
holds the tier's hit ratio against an LRU's (the policy it replaced).
"""

from __future__ import annotations

import random
from pathlib import Path

from benchmarks.simulate_memory import lru_hit_ratio, tier_hit_ratio, zipf_trace
from benchmarks.zipf import small_object_lengths
from edgeproxy.cache.hot import HotEntry, HotTier, PurgeEpoch
from edgeproxy.cache.meta import ObjectMeta
from edgeproxy.cache.policy import Freshness

KIB = 1024
META = ObjectMeta(200, None, None, None, None, (), Freshness(0.0, 0.0, 1e9), "x", "v", 1)


def _tier(tmp_path: Path, max_bytes: int) -> HotTier:
    return HotTier(max_bytes, 256 * KIB, PurgeEpoch(tmp_path / "epoch"))


def _entry(length: int, fresh_until: float = 1e9) -> HotEntry:
    return HotEntry.of(META, bytes(length), [], fresh_until)


def _held(tier: HotTier, keys: list[str]) -> set[str]:
    return {k for k in keys if tier.get(k, 0.0) is not None}


def test_a_large_object_asked_once_goes_before_small_ones_asked_often(tmp_path: Path) -> None:
    tier = _tier(tmp_path, 100 * KIB)
    for i in range(8):
        tier.put(f"/small{i}", _entry(4 * KIB))
        tier.get(f"/small{i}", 0.0)
    tier.put("/large", _entry(60 * KIB))  # the most recent: an LRU would keep it
    tier.put("/next", _entry(10 * KIB))  # over the bound: one must go
    smalls = [f"/small{i}" for i in range(8)]
    assert "/large" not in _held(tier, ["/large"])
    assert _held(tier, smalls) == set(smalls)


def test_worth_counts_hits_not_only_size(tmp_path: Path) -> None:
    tier = _tier(tmp_path, 64 * KIB)
    tier.put("/popular", _entry(32 * KIB))
    for _ in range(200):
        assert tier.get("/popular", 0.0) is not None
    for i in range(6):  # small objects, each asked for once: an LRU drops /popular at the 5th
        tier.put(f"/once{i}", _entry(8 * KIB))
    assert tier.get("/popular", 0.0) is not None


def test_what_nobody_asks_for_any_more_ages_out(tmp_path: Path) -> None:
    """The clock rises with each eviction: past hits do not keep an entry forever."""
    tier = _tier(tmp_path, 56 * KIB)  # the six new ones and the old one do not all fit
    tier.put("/old", _entry(16 * KIB))
    for _ in range(50):
        tier.get("/old", 0.0)
    keys = [f"/new{i}" for i in range(6)]
    for _round in range(400):  # new objects, each asked for again and again
        for key in keys:
            if tier.get(key, 0.0) is None:
                tier.put(key, _entry(8 * KIB))
    assert tier.get("/old", 0.0) is None
    assert _held(tier, keys) == set(keys)


def test_yesterdays_favourite_does_not_outstay_todays(tmp_path: Path) -> None:
    """Hits count up to `HITS_CAP` in an entry's worth: a million hits long ago buy no more
    time than a few dozen."""
    tier = _tier(tmp_path, 56 * KIB)
    tier.put("/old", _entry(1 * KIB))
    for _ in range(1_000_000):
        tier.get("/old", 0.0)
    keys = [f"/new{i}" for i in range(7)]
    for _round in range(600):  # today's objects, each asked for again and again
        for key in keys:
            if tier.get(key, 0.0) is None:
                tier.put(key, _entry(8 * KIB))
    assert tier.get("/old", 0.0) is None


def test_bytes_stay_bounded_and_every_entry_stays_evictable(tmp_path: Path) -> None:
    """Random puts, replacements, hits, expiries and pops against a model of what is held."""
    bound = 200 * KIB
    tier = _tier(tmp_path, bound)
    rnd = random.Random(11)
    model: dict[str, int] = {}  # key -> length, of what the tier may still hold
    for step in range(20_000):
        key = f"/k{rnd.randrange(60)}"
        action = rnd.random()
        if action < 0.45:
            length = rnd.randrange(1, 40 * KIB)
            tier.put(key, _entry(length, fresh_until=1e9 if rnd.random() < 0.95 else 1.0))
            model[key] = length
        elif action < 0.9:
            got = tier.get(key, 2.0)  # entries fresh until 1.0 are stale now
            if got is not None:
                assert model[key] == len(got.body)
        else:
            tier.pop(key)
            model.pop(key, None)
        held = {k: len(e.body) for k, e in tier._entries.items()}
        assert sum(held.values()) == tier._bytes <= bound, step
        assert all(model[k] == n for k, n in held.items()), step
        assert len(tier._heap) <= 2 * len(held) + 65, step
    live = {id(item[3]) for item in tier._heap if tier._entries.get(item[2]) is item[3]}
    assert live == {id(e) for e in tier._entries.values()}  # each live entry: one place


def test_a_purge_empties_it_and_resets_the_clock(tmp_path: Path) -> None:
    tier = _tier(tmp_path, 32 * KIB)
    for i in range(10):
        tier.put(f"/k{i}", _entry(8 * KIB))
    tier.purged()
    assert len(tier) == 0 and tier._bytes == 0 and tier._heap == []
    tier.put("/after", _entry(8 * KIB))
    assert tier.get("/after", 0.0) is not None


def test_on_the_zipf_mix_it_answers_more_than_an_lru(tmp_path: Path) -> None:
    """The benchmarks' mix (objects of 1-128 KiB, Zipf s=1), scaled down: 2,000 objects,
    an 8 MiB tier. Measured 82.7 % against the LRU's 68.6 %."""
    lengths = small_object_lengths(2000)
    trace = zipf_trace(2000, 40_000, seed=5)
    ours = tier_hit_ratio(trace, lengths, 8 * 1024 * KIB, tmp_path)
    lru = lru_hit_ratio(trace, lengths, 8 * 1024 * KIB)
    assert ours > lru + 0.08, (ours, lru)
