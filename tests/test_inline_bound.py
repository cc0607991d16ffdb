"""Slices at the bound between inline (in the index row) and file storage.

A small slice is stored in its index row as its checksum followed by its bytes; one of a few
bytes under the bound used to spill to a file of those sealed bytes, which every read then
took for a damaged slice file: never a hit, and each request dropped it and emptied every
worker's memory tier.
"""

from __future__ import annotations

import time

import httpx
import pytest

from edgeproxy.cache.checksum import INLINE_HEADER
from edgeproxy.cache.store import INLINE_MAX
from tests.conftest import MakeChain
from tests.foreign import ForeignOrigin
from tests.origins import pattern

COMMITTED = 0.2  # seconds: nodes commit index writes every 10 ms
SIZES = sorted({1, INLINE_MAX - INLINE_HEADER - 1, INLINE_MAX - INLINE_HEADER,
                INLINE_MAX - 3, INLINE_MAX - 1, INLINE_MAX, INLINE_MAX + 1,
                INLINE_MAX + INLINE_HEADER})


def _integrity_failures(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    assert "edgeproxy_integrity_failures_total" in text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("edgeproxy_integrity_failures_total{"))


@pytest.mark.parametrize("size", SIZES)
def test_slice_near_the_inline_bound_is_stored_and_hit(
        size: int, foreign: ForeignOrigin, make_chain: MakeChain) -> None:
    # no memory tier: every hit reads the stored slice
    chain = make_chain(foreign.url, memory_size=0)
    body = pattern(size, seed=size)
    foreign.route(f"/obj-{size}", body=body, etag=f'"{size}"',
                  headers=[("Cache-Control", "public, max-age=3600")])
    for want in ("MISS from edge, MISS from shield", "HIT from edge"):
        r = chain.get(f"/obj-{size}")
        assert r.status_code == 200 and r.content == body
        assert r.headers["x-cache"] == want
        time.sleep(COMMITTED)  # read from the index, not from the commit still pending
    r = chain.get(f"/obj-{size}", headers={"Range": "bytes=0-0"})
    assert r.status_code == 206 and r.content == body[:1]
    assert r.headers["x-cache"] == "HIT from edge"
    assert len(foreign.requests(f"/obj-{size}")) == 1
    assert _integrity_failures(chain.edge_url) == 0
    assert _integrity_failures(chain.shield_url) == 0
