"""A suffix range of an object that shrank upstream since it was stored. The slice the
stored length points at can start past the new end, and the upstream answers that slice
416; the client's range is a suffix, which any non-empty object satisfies (RFC 9110
§14.1.1). The edge answered 416 with the new length (a load run against nginx serving files
rewritten in place: 19 of 720 suffix requests while a file alternated between two sizes)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.chain import Chain
from tests.origins import TestOrigin, pattern
from tests.servers import serve

SLICE = 64 * 1024


@contextmanager
def _shrinking(tmp_path: Path, path: str, old: bytes) -> Iterator[tuple[TestOrigin, Chain]]:
    """Edge → shield → an origin serving ``old`` at ``path`` for a second (the test stores
    it, lets it expire and puts the new one)."""
    origin = TestOrigin()
    origin.put(path, old, headers={"cache-control": "max-age=1"})
    with serve(origin) as o:
        chain = Chain(o.url, tmp_path, slice_size=SLICE, memory_size=0).start()
        try:
            yield origin, chain
        finally:
            chain.stop()


def test_a_suffix_of_an_object_that_shrank_is_its_new_tail(tmp_path: Path) -> None:
    """Stored at 201,073 bytes, expired, now 126,977: ``bytes=-40798`` would start in slice 2
    by the stored length, past the new end; the answer is the new object's last 40,798 bytes."""
    old, new = pattern(201_073, seed=1), pattern(126_977, seed=2)
    with _shrinking(tmp_path, "/f", old) as (origin, chain):
        assert chain.get("/f").content == old
        assert chain.get("/f", headers={"range": "bytes=-40798"}).content == old[-40798:]
        time.sleep(1.2)  # expired at both tiers
        origin.put("/f", new, headers={"cache-control": "max-age=1"})
        r = chain.get("/f", headers={"range": "bytes=-40798"})
        assert r.status_code == 206, (r.status_code, r.headers.get("content-range"))
        start, end = len(new) - 40798, len(new) - 1
        assert r.headers["content-range"] == f"bytes {start}-{end}/{len(new)}"
        assert r.content == new[-40798:]
        r = chain.get("/f")
        assert r.status_code == 200 and r.content == new


def test_a_range_past_the_new_end_of_an_object_that_shrank_is_416(tmp_path: Path) -> None:
    """The same object, a range that starts past the new end: its revalidating fill gets a
    416 inside the stored length, which drops the stored copy (`facts.contradiction`); looked
    up anew, the answer is 416 with the new length, then the new object whole."""
    old, new = pattern(201_073, seed=3), pattern(126_977, seed=4)
    with _shrinking(tmp_path, "/g", old) as (origin, chain):
        assert chain.get("/g").content == old
        time.sleep(1.2)  # expired at both tiers
        origin.put("/g", new, headers={"cache-control": "max-age=1"})
        r = chain.get("/g", headers={"range": "bytes=150000-150099"})
        assert r.status_code == 416, (r.status_code, r.text[:200])
        assert r.headers["content-range"] == f"bytes */{len(new)}"
        assert r.json()["error"] == "range_not_satisfiable"
        r = chain.get("/g", headers={"range": "bytes=100000-100099"})
        assert (r.status_code, r.content) == (206, new[100000:100100])
        r = chain.get("/g")
        assert r.status_code == 200 and r.content == new
