"""Objects whose sizes sit on the engine's bounds, edge → shield in front of a foreign origin.

Each bound decides where bytes live or how they are sent: a slice inline in its index row or
in a file (a sealed inline slice is its checksum and its bytes, and used to spill to a file
that every read took for a damaged one: never a hit, and each request emptied every worker's
memory tier), the memory tier's largest object, a body gathered with its head or written
beside it, the slice size, the largest whole answer from one stored slice. For each size,
with and without a memory tier: a miss, then hits, whole and by ranges across the slice
bounds, byte-exact against the origin's body, one upstream request, no integrity failure.
"""

from __future__ import annotations

import time

import httpx
import pytest

from edgeproxy.cache.checksum import INLINE_HEADER
from edgeproxy.cache.fastlane import WHOLE_MAX
from edgeproxy.cache.store import INLINE_MAX
from tests.conftest import MakeChain
from tests.foreign import ForeignOrigin
from tests.origins import pattern

COMMITTED = 0.2  # seconds: nodes commit index writes every 10 ms
SLICE = 256 * 1024  # the chains' slice size here: several bounds within a few slices
MEMORY_MAX = 64 * 1024  # the memory tier's largest object here
GATHER = 16384  # fastlane: bodies from this size on are written beside the head
SIZES = sorted({
    1, GATHER - 1, GATHER,
    INLINE_MAX - INLINE_HEADER - 1, INLINE_MAX - INLINE_HEADER, INLINE_MAX - 1, INLINE_MAX,
    INLINE_MAX + 1, INLINE_MAX + INLINE_HEADER,
    MEMORY_MAX - 1, MEMORY_MAX, MEMORY_MAX + 1,
    SLICE - 1, SLICE, SLICE + 1, 2 * SLICE, WHOLE_MAX + 1,
})


def _integrity_failures(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    assert "edgeproxy_integrity_failures_total" in text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("edgeproxy_integrity_failures_total{"))


def _ranges(size: int) -> list[tuple[int, int]]:
    """First and last bytes, and a range across every slice bound of ``size`` bytes."""
    found = {(0, 0), (size - 1, size - 1), (0, size - 1)}
    for bound in range(SLICE, size, SLICE):
        found.add((bound - 1, min(bound, size - 1)))
    return sorted(found)


@pytest.mark.parametrize("memory", [0, 4 * 1024 * 1024], ids=["no-memory", "memory"])
@pytest.mark.parametrize("size", SIZES)
def test_object_on_a_bound_is_stored_and_hit(
        size: int, memory: int, foreign: ForeignOrigin, make_chain: MakeChain) -> None:
    chain = make_chain(foreign.url, memory_size=memory, memory_max_object=MEMORY_MAX,
                       slice_size=SLICE)
    body = pattern(size, seed=size)
    target = f"/obj-{size}"
    foreign.route(target, body=body, etag=f'"{size}"',
                  headers=[("Cache-Control", "public, max-age=3600")])
    r = chain.get(target)
    assert r.status_code == 200 and r.content == body
    assert r.headers["x-cache"] == "MISS from edge, MISS from shield"
    time.sleep(COMMITTED)  # hits read the index, not the commit still pending
    for _ in range(2):
        r = chain.get(target)
        assert r.status_code == 200 and r.content == body
        assert r.headers["x-cache"] == "HIT from edge"
    for first, last in _ranges(size):
        r = chain.get(target, headers={"Range": f"bytes={first}-{last}"})
        assert r.status_code == 206, (first, last)
        assert r.content == body[first:last + 1], (first, last)
        assert r.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert r.headers["x-cache"] == "HIT from edge", (first, last)
    assert len(foreign.requests(target)) == 1
    assert _integrity_failures(chain.edge_url) == 0
    assert _integrity_failures(chain.shield_url) == 0
