"""A request with ``Cache-Control: no-store`` (RFC 9111 §5.2.1.5): nothing of it or of any
answer to it is stored, and it is answered as any other. With a slice of the object stored
(after a range), the fill of the rest that it led was dropped as not storable, under its own
answer: a 502 ``fill_aborted``, every time, for any client (found from outside)."""

from __future__ import annotations

import httpx

from tests.origins import pattern
from tests.test_cache_node import SLICE, Chain, chain  # noqa: F401  (the fixture)


def test_a_no_store_request_for_a_partly_stored_object_is_answered_and_stores_nothing(
        chain: Chain) -> None:  # noqa: F811
    body = pattern(6 * SLICE + 123)
    chain.origin.put("/v/t1/part", body)
    late = 4 * SLICE + 10
    first = httpx.get(chain.edge.url + "/v/t1/part", headers={"range": f"bytes={late}-{late}"})
    assert first.status_code == 206 and first.content == body[late:late + 1]
    no_store = {"cache-control": "no-store"}
    whole = httpx.get(chain.edge.url + "/v/t1/part", headers=no_store)
    assert whole.status_code == 200, whole.text
    assert whole.content == body
    ranged = httpx.get(chain.edge.url + "/v/t1/part", headers={**no_store, "range": "bytes=1-101"})
    assert ranged.status_code == 206, ranged.text
    assert ranged.content == body[1:102]
    assert ranged.headers["content-range"] == f"bytes 1-101/{len(body)}"
    # a slice stored before still answers it from the store (only storing is forbidden)
    kept = httpx.get(chain.edge.url + "/v/t1/part",
                     headers={**no_store, "range": f"bytes={late}-{late + 5}"})
    assert kept.status_code == 206 and kept.content == body[late:late + 6]
    assert kept.headers["x-cache"].startswith("HIT")
    # nothing the no-store requests brought was stored: slice 0 is still a miss at the edge
    after = httpx.get(chain.edge.url + "/v/t1/part", headers={"range": "bytes=0-9"})
    assert after.status_code == 206 and after.content == body[:10]
    assert after.headers["x-cache"].startswith("MISS from edge")


def test_a_credentialed_request_for_a_partly_stored_object_shares_nothing(
        chain: Chain) -> None:  # noqa: F811
    """A request with ``Authorization`` for a slice not stored: its credentials go upstream,
    and an answer to them is not for others (RFC 9111 §3.5; this one says neither public nor
    s-maxage). Its fill was stored under the object's facts, and served to an anonymous
    request next."""
    body = pattern(6 * SLICE + 77, seed=5)
    chain.origin.put("/v/t1/mine", body, headers={"cache-control": "max-age=600"})
    late = 4 * SLICE + 10
    first = httpx.get(chain.edge.url + "/v/t1/mine", headers={"range": f"bytes={late}-{late}"})
    assert first.status_code == 206 and first.content == body[late:late + 1]
    mine = httpx.get(chain.edge.url + "/v/t1/mine",
                     headers={"authorization": "Bearer alice", "range": "bytes=1-101"})
    assert mine.status_code == 206 and mine.content == body[1:102]
    assert [h.headers.get("authorization") for h in chain.origin.hits] == [None, "Bearer alice"]
    anon = httpx.get(chain.edge.url + "/v/t1/mine", headers={"range": "bytes=1-101"})
    assert anon.status_code == 206 and anon.content == body[1:102]
    assert anon.headers["x-cache"].startswith("MISS from edge")  # (nothing of alice's kept)
    assert chain.origin.hits[-1].headers.get("authorization") is None
