"""One request, one walk through the steps (`edgeproxy.cache.steps`, Varnish's recv → lookup →
hit | miss | pass | stale → fetch → deliver): the steps real requests take through an edge →
shield pair in server threads, recorded at each tier, are those the table says, each at most once.

A step returns the next one; the recorder wraps every step of the module (and the two that a
step awaits itself), so a request that went round a loop, or a step that called another twice,
shows here.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy.cache import create_app, steps
from tests.origins import TestOrigin, pattern
from tests.servers import serve
from tests.test_cache_node import make_config

STEPS = ("recv", "lookup", "hit", "stale", "miss", "fetch_small", "fetch", "deliver", "pass_",
         "_wait_then_look_again", "_learn_length")
MISS_SMALL = ["recv", "lookup", "miss", "fetch_small", "deliver"]
# a flight's answer comes in (fetch), then its slices are joined as a hit's are
MISS = ["recv", "lookup", "miss", "fetch", "hit", "deliver"]
HIT = ["recv", "lookup", "hit", "deliver"]
PASS = ["recv", "pass_"]


@dataclass
class Walks:
    """The steps each request took, per tier, in the order the requests came."""

    taken: list[tuple[str, object, str]] = field(default_factory=list)

    def of(self, tier: str) -> list[list[str]]:
        walks: dict[int, list[str]] = {}
        for where, tx, name in self.taken:
            if where == tier:
                walks.setdefault(id(tx), []).append(name)
        return list(walks.values())

    def last(self) -> dict[str, list[str]]:
        """The walk of the last request each tier saw, then forget them all."""
        out = {tier: self.of(tier)[-1] for tier in ("edge", "shield") if self.of(tier)}
        self.taken.clear()
        return out


@dataclass
class Pair:
    origin: TestOrigin
    edge: str
    walks: Walks


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    walks = Walks()

    def recorded(name: str, step: Any) -> Any:
        @functools.wraps(step)
        async def wrapper(node: Any, tx: Any, *args: Any) -> Any:
            walks.taken.append((node.tier, tx, name))
            return await step(node, tx, *args)
        return wrapper

    for name in STEPS:  # steps name the next one by its module global: wrapped here
        monkeypatch.setattr(steps, name, recorded(name, getattr(steps, name)))
    origin = TestOrigin()
    config = make_config(tmp_path)
    with serve(origin) as osrv, \
            serve(create_app(config, "shield", upstream=osrv.url)) as shield, \
            serve(create_app(config, "edge", upstream=shield.url)) as edge:
        yield Pair(origin, edge.url, walks)


def test_every_step_is_recorded_by_its_name() -> None:
    """The table names real steps: a renamed one fails here, not silently below."""
    for name in STEPS:
        assert callable(getattr(steps, name)), name


def test_a_small_miss_then_its_hits(pair: Pair) -> None:
    pair.origin.put("/v/t1/small", pattern(4096))
    assert httpx.get(pair.edge + "/v/t1/small").content == pattern(4096)
    assert pair.walks.last() == {"edge": MISS_SMALL, "shield": MISS_SMALL}
    # a plain hit of an object held in memory is the server protocol's (`fastlane`): no step
    assert httpx.get(pair.edge + "/v/t1/small").content == pattern(4096)
    r = httpx.get(pair.edge + "/v/t1/small", headers={"range": "bytes=10-19"})
    assert r.content == pattern(4096)[10:20]
    assert pair.walks.last() == {}
    etag = r.headers["etag"]
    r = httpx.get(pair.edge + "/v/t1/small", headers={"if-none-match": etag})
    assert r.status_code == 304
    assert pair.walks.last() == {"edge": HIT}  # a validator: the steps answer


def test_a_range_of_a_large_cold_object(pair: Pair) -> None:
    body = pattern(300_000)
    pair.origin.put("/v/t1/large", body)
    r = httpx.get(pair.edge + "/v/t1/large", headers={"range": "bytes=200000-200009"})
    assert r.status_code == 206 and r.content == body[200000:200010]
    assert pair.walks.last() == {"edge": MISS, "shield": MISS}
    # the object is known at both tiers now: its missing slices are joined by the hit step
    assert httpx.get(pair.edge + "/v/t1/large").content == body
    assert pair.walks.last() == {"edge": HIT, "shield": HIT}


def test_a_suffix_range_of_an_unknown_object_learns_its_length_first(pair: Pair) -> None:
    body = pattern(300_000)
    pair.origin.put("/v/t1/tail", body)
    r = httpx.get(pair.edge + "/v/t1/tail", headers={"range": "bytes=-10"})
    assert r.status_code == 206 and r.content == body[-10:]
    walks = pair.walks.last()
    assert walks["edge"] == ["recv", "lookup", "miss", "_learn_length", "hit", "deliver"]


def test_a_stale_copy_revalidated(pair: Pair) -> None:
    pair.origin.put("/g/doc", pattern(1000), headers={"cache-control": "max-age=1"})
    httpx.get(pair.edge + "/g/doc")
    pair.walks.last()
    time.sleep(1.5)
    r = httpx.get(pair.edge + "/g/doc")
    assert r.content == pattern(1000)
    assert pair.walks.last() == {"edge": MISS, "shield": MISS}
    assert pair.origin.hits[-1].headers["if-none-match"]  # revalidated: a 304 ...
    assert pair.origin.count("/g/doc") == 2  # ... and the stored body answered


def test_a_stale_copy_served_while_revalidating(pair: Pair) -> None:
    pair.origin.put("/g/swr", pattern(1000),
                    headers={"cache-control": "max-age=1, stale-while-revalidate=60"})
    httpx.get(pair.edge + "/g/swr")
    pair.walks.last()
    time.sleep(1.5)
    assert httpx.get(pair.edge + "/g/swr").content == pattern(1000)
    assert pair.walks.of("edge")[0] == ["recv", "lookup", "stale", "hit", "deliver"]


def test_unsafe_methods_pass(pair: Pair) -> None:
    pair.origin.put("/g/form", b"ok")
    assert httpx.post(pair.edge + "/g/form", content=b"x").status_code == 200
    assert pair.walks.last() == {"edge": PASS, "shield": PASS}


def test_no_step_twice_in_any_walk(pair: Pair) -> None:
    """Whatever came before: every walk recorded in a mixed run crosses each step once."""
    body = pattern(200_000)
    pair.origin.put("/v/t1/mix", body)
    pair.origin.put("/g/mix", pattern(3000), headers={"cache-control": "max-age=60"})
    for headers in ({}, {"range": "bytes=0-9"}, {"range": "bytes=150000-"},
                    {"range": "bytes=-5"}, {"if-none-match": "*"}, {}):
        httpx.get(pair.edge + "/v/t1/mix", headers=headers)
        httpx.head(pair.edge + "/g/mix", headers=headers)
    walks = pair.walks.of("edge") + pair.walks.of("shield")
    assert len(walks) >= 12
    for walk in walks:
        assert len(walk) == len(set(walk)), walk
