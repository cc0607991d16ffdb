"""Hypothesis fuzz of request lines, headers and Range against the origin's blob GET, over real
sockets: no 5xx, and byte-exact bodies against the reference model of `tests.fuzz`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, note, settings

from tests import fuzz
from tests.test_origin import make_blob
from tests.test_origin_integrity import Served, guarded_origin

# 65,600 bytes: ranges drawn up to 70,000 land before, inside and past the end.
BLOB_BLOCKS = 4096


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with guarded_origin(tmp_path_factory.mktemp("origin"), make_blob(BLOB_BLOCKS)) as s:
        yield s


def test_fuzz_blob_get(served: Served) -> None:
    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(request=fuzz.requests(served.path))
    def run(request: fuzz.FuzzRequest) -> None:
        note(repr(request))
        fuzz.check(served.url, served.blob, request, served.etag)

    run()
