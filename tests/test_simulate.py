"""The tier simulator (benchmarks/simulate.py) against traces small enough to compute by hand."""

from __future__ import annotations

import pytest

from benchmarks.simulate import (
    Cache,
    Design,
    Trace,
    Workload,
    designs,
    make_trace,
    simulate,
)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # put a, put b, get a, put c (evicts one), get a, get b
        ("lru", [True, False, True]),  # the get of a made b the oldest: c evicts b
        ("fifo", [False, True, True]),  # stored first, evicted first, whatever was read
    ],
)
def test_eviction_by_hand(policy: str, expected: list[bool]) -> None:
    cache = Cache(10, policy)
    cache.put(1, 4)
    cache.put(2, 4)
    assert cache.get(1)
    cache.put(3, 4)  # 12 bytes > 10: one must go
    assert [cache.get(1), cache.get(2), cache.get(3)] == expected
    assert cache.used == 8
    cache.put(4, 11)  # larger than the whole cache: not stored, nothing evicted
    assert not cache.get(4) and cache.used == 8
    cache.put(5, 10)  # fills it: everything else goes
    assert list(cache.entries) == [5] and cache.used == 10


TINY = Trace(requests=[(0, 0), (1, 0), (0, 0), (1, 1), (0, 1)], sizes=[5, 5],
             pop_region=[0, 0], region_names=["r"])  # fmt: skip


def test_tiers_by_hand() -> None:
    # pop0 a: miss, miss -> origin | pop1 a: miss, shield hit | pop0 a: edge hit |
    # pop1 b: miss (edge holds one object), miss -> origin | pop0 b: miss, shield hit
    one = simulate(TINY, Design("one", 1, lambda r, o: 0), edge_capacity=5,
                   shield_capacity=10, warmup=0)  # fmt: skip
    assert (one.requests, one.edge_hits, one.shield_requests, one.shield_hits,
            one.origin_requests, one.origin_bytes) == (5, 1, 4, 2, 2, 10)  # fmt: skip
    ratios = one.ratios()
    assert ratios["offload"] == pytest.approx(0.6) and ratios["shield_hit"] == 0.5
    none = simulate(TINY, Design("none", 0, None), edge_capacity=5, shield_capacity=10,
                    warmup=0)  # fmt: skip
    assert (none.edge_hits, none.origin_requests) == (1, 4)
    # A shield too small to hold both: b evicts a, so pop0's b is a hit but nothing else is.
    small = simulate(TINY, Design("one", 1, lambda r, o: 0), edge_capacity=5,
                     shield_capacity=5, warmup=0)  # fmt: skip
    assert (small.shield_hits, small.origin_requests) == (2, 2)
    # Warm-up: the first 40% of requests are not counted.
    warm = simulate(TINY, Design("one", 1, lambda r, o: 0), edge_capacity=5,
                    shield_capacity=10, warmup=0.4)  # fmt: skip
    assert (warm.requests, warm.edge_hits, warm.origin_requests) == (3, 1, 1)


def test_trace_is_deterministic_and_follows_the_mix() -> None:
    w = Workload(requests=20_000, catalogue=2_000, churn=0.05, seed=3)
    a, b = make_trace(w), make_trace(w)
    assert a.requests == b.requests and a.sizes == b.sizes
    assert len(a.pop_region) == 200 and a.region_names == ["americas", "europe", "asia"]
    assert len(a.sizes) == pytest.approx(2_000 + 0.05 * 20_000, rel=0.1)  # churn adds objects
    thumbs = sum(1 for s in a.sizes if s <= 64 * 1024) / len(a.sizes)
    assert thumbs == pytest.approx(18 / 38, abs=0.03)
    mean_image_like = [s for s in a.sizes if 1_000_000 < s < 5_000_000]
    assert 1_500_000 < sum(mean_image_like) / len(mean_image_like) < 2_500_000


def test_hrw_shields_act_as_one_big_shield() -> None:
    # Each object lives in one shield, so M shields hit like one shield M times the size;
    # a key-blind pick splits the cache and does worse than either.
    trace = make_trace(Workload(requests=30_000, catalogue=3_000, seed=5))
    by_name = {d.name: simulate(trace, d, edge_capacity=20_000_000,
                                shield_capacity=300_000_000).ratios()["shield_hit"]
               for d in designs(3, 2)}  # fmt: skip
    assert by_name["HRW over 6 shields"] == pytest.approx(by_name["one shield, 6x capacity"],
                                                          abs=0.01)  # fmt: skip
    assert by_name["6 shields, random pick"] < by_name["one shield"]
    assert by_name["HRW over 6 shields"] > by_name["regional shields (3x2, HRW in region)"]
