"""The caching proxy over real sockets: tiers, slices, ranges, coalescing, errors."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgeproxy.cache import create_app
from edgeproxy.config import CacheConfig, Config, load_config
from tests.origins import TestOrigin, pattern
from tests.servers import ServerThread, serve

SLICE = 64 * 1024


@dataclasses.dataclass
class Chain:
    origin: TestOrigin
    origin_srv: ServerThread
    shield: ServerThread
    edge: ServerThread
    config: Config


def make_config(tmp_path: Path, **cache: object) -> Config:
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(tmp_path)})
    return config.replace(cache=dataclasses.replace(CacheConfig(), slice_size=SLICE, **cache))


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    origin = TestOrigin()
    config = make_config(tmp_path)
    with serve(origin) as osrv:
        with serve(create_app(config, "shield", upstream=osrv.url)) as shield:
            with serve(create_app(config, "edge", upstream=shield.url)) as edge:
                yield Chain(origin, osrv, shield, edge, config)


def test_miss_then_hit_through_two_tiers(chain: Chain) -> None:
    body = pattern(300_000)
    chain.origin.put("/v/t1/abc", body)
    r1 = httpx.get(chain.edge.url + "/v/t1/abc")
    assert r1.status_code == 200
    assert r1.content == body
    assert r1.headers["x-cache"] == "MISS from edge, MISS from shield"
    assert r1.headers["accept-ranges"] == "bytes"
    assert "immutable" in r1.headers["cache-control"]
    r2 = httpx.get(chain.edge.url + "/v/t1/abc")
    assert r2.content == body
    assert r2.headers["x-cache"] == "HIT from edge"
    assert chain.origin.count("/v/t1/abc") == 1


def test_range_on_cold_object_fetches_only_covering_slices(chain: Chain) -> None:
    body = pattern(40 * SLICE)
    chain.origin.put("/v/t1/big", body)
    start = 30 * SLICE + 100
    r = httpx.get(chain.edge.url + "/v/t1/big", headers={"range": f"bytes={start}-{start + 9}"})
    assert r.status_code == 206
    assert r.content == body[start : start + 10]
    assert r.headers["content-range"] == f"bytes {start}-{start + 9}/{len(body)}"
    assert chain.origin.bytes_sent("/v/t1/big") <= 2 * SLICE


def test_suffix_and_416(chain: Chain) -> None:
    body = pattern(5000)
    chain.origin.put("/v/t1/s", body)
    r = httpx.get(chain.edge.url + "/v/t1/s", headers={"range": "bytes=-10"})
    assert r.status_code == 206
    assert r.content == body[-10:]
    r = httpx.get(chain.edge.url + "/v/t1/s", headers={"range": "bytes=6000-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == "bytes */5000"
    assert r.json()["error"] == "range_not_satisfiable"


def test_upstream_404_and_502(chain: Chain, tmp_path: Path) -> None:
    r = httpx.get(chain.edge.url + "/v/t1/missing")
    assert r.status_code == 404
    config = make_config(tmp_path / "x")
    with serve(create_app(config, "edge", upstream="http://127.0.0.1:9")) as edge:
        r = httpx.get(edge.url + "/v/t1/whatever")
        assert r.status_code == 502
        assert r.json()["error"] == "upstream_unavailable"


def test_curl_ranges(chain: Chain) -> None:
    body = pattern(200_000)
    chain.origin.put("/v/t1/c", body)
    out = subprocess.run(["curl", "-sS", "-r", "199999-199999", chain.edge.url + "/v/t1/c"],
                         capture_output=True, check=True).stdout
    assert out == body[-1:]
