"""The request fuzz of `tests.fuzz` against an edge alone in front of the origin and an edge →
shield → origin chain, over real sockets: every node runs as `edgeproxy serve` builds it
(request guard, httptools head limits). No answer is a 5xx, and every served byte is the
blob's byte the Range reference model selects; requests under other query strings are cold
misses, so misses, slices and coalescing are fuzzed too. (The origin alone:
`tests/test_origin_fuzz.py`.)"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings

from edgeproxy.config import CacheConfig, load_config
from tests import fuzz
from tests.chain import guarded_nodes
from tests.rawhttp import RawResponse
from tests.test_origin import make_blob
from tests.test_origin_integrity import Served, guarded_origin


@dataclasses.dataclass
class Edge:
    url: str
    served: Served


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # 65,600 bytes in 16 KiB slices: ranges land in several slices, before and past the end
    with guarded_origin(tmp_path_factory.mktemp("origin"), make_blob(4096)) as s:
        yield s


@pytest.fixture(scope="module", params=["edge", "edge+shield"])
def edge(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
         served: Served) -> Iterator[Edge]:  # fmt: skip
    """An edge in front of the origin: alone, or through a shield."""
    data = Path(tmp_path_factory.mktemp("chain"))
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(data)})
    config = config.replace(cache=dataclasses.replace(CacheConfig(), slice_size=16 * 1024))
    with guarded_nodes(config, served.url, shield=request.param == "edge+shield") as (url, _):
        yield Edge(url, served)


def test_fuzz_through_the_edge(edge: Edge) -> None:
    served = edge.served

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(request=fuzz.requests(served.path))
    def run(request: fuzz.FuzzRequest) -> None:
        note(repr(request))
        fuzz.check(edge.url, served.blob, request, served.etag)

    run()


def _multipart(blob: bytes, spans: list[tuple[int, int]]) -> RawResponse:
    body = b"".join(b"--B\r\ncontent-range: bytes %d-%d/%d\r\n\r\n%s\r\n"
                    % (a, b, len(blob), blob[a:b + 1]) for a, b in spans) + b"--B--\r\n"
    return RawResponse(206, {"content-type": "multipart/byteranges; boundary=B"}, body)


def test_the_model_takes_parts_in_the_order_asked_only() -> None:
    """The fuzz's multipart check is one that can fail: the right bytes in another order than
    asked (RFC 9110 §14.6) are refused; a merged part stands where its first range was."""
    blob = bytes(range(256)) * 4
    asked = fuzz.FuzzRequest("GET", b"/b", "1.1", [], "bytes=500-510,0-10,505-520")
    fuzz._check_blob(_multipart(blob, [(500, 520), (0, 10)]), blob, asked, head=False)
    with pytest.raises(AssertionError):
        fuzz._check_blob(_multipart(blob, [(0, 10), (500, 520)]), blob, asked, head=False)
