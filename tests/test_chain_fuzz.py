"""The request fuzz of `tests.fuzz` against an edge → shield → origin chain, over real sockets:
every node runs as `edgeproxy serve` builds it (request guard, httptools head limits). No answer
is a 5xx, and every served byte is the blob's byte the Range reference model selects; requests
under other query strings are cold misses, so misses, slices and coalescing are fuzzed too."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings

from edgeproxy.config import CacheConfig, load_config
from edgeproxy.guard import uvicorn_http_options
from edgeproxy.server import create_node_app
from tests import fuzz
from tests.servers import serve
from tests.test_origin import make_blob
from tests.test_origin_integrity import Served, guarded_origin


@dataclasses.dataclass
class Edge:
    url: str
    served: Served


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    # 65,600 bytes in 16 KiB slices: ranges land in several slices, before and past the end
    blob = make_blob(4096)
    with guarded_origin(tmp_path_factory.mktemp("origin"), blob) as served:
        data = Path(tmp_path_factory.mktemp("chain"))
        config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(data)})
        config = config.replace(cache=dataclasses.replace(CacheConfig(), slice_size=16 * 1024))
        options = uvicorn_http_options(config.http_limits)
        with serve(create_node_app(config, "shield", upstream=served.url), **options) as shield, \
                serve(create_node_app(config, "edge", upstream=shield.url), **options) as e:
            yield Edge(e.url, served)


def test_fuzz_through_edge_and_shield(edge: Edge) -> None:
    served = edge.served

    @settings(max_examples=250, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(request=fuzz.requests(served.path))
    def run(request: fuzz.FuzzRequest) -> None:
        note(repr(request))
        fuzz.check(edge.url, served.blob, request, served.etag)

    run()
