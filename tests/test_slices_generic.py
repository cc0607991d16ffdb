"""Slices of large objects and negative caching, edge → shield in front of real origins.

A missing slice of a known, fresh object costs one upstream request per tier (``If-Range``,
RFC 9110 §13.1.5), a changed object is never spliced with its old slices, bytes a node cannot
vouch for never complete a content-addressed object, and the bundled origin's 404 is cached
for a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from tests.chain import Chain
from tests.conftest import MakeChain
from tests.foreign import ForeignOrigin
from tests.origins import pattern
from tests.rawhttp import read_to_close, split_answers
from tests.static_origins import Nginx
from tests.test_origin import Origin, make_blob, sha

MiB = 1024 * 1024
SIZE = 3 * MiB + 5000  # four 1 MiB slices, the last one short
IMMUTABLE = ("Cache-Control", "public, max-age=31536000, immutable")

# (If-Range, If-Match) of each request that reached the origin, oldest first.
Conditionals = Callable[[], list[tuple[str | None, str | None]]]


@dataclass
class Immutable:
    """A large object that never changes under its URL, on some origin."""

    url: str
    target: str
    body: bytes
    upstream: Conditionals | None  # None: the origin keeps no request log


@pytest.fixture(params=["nginx", "foreign", "bundled"])
def immutable(request: pytest.FixtureRequest) -> Immutable:
    if request.param == "nginx":
        nginx: Nginx = request.getfixturevalue("nginx")
        body = pattern(SIZE, seed=11)
        nginx.put("immutable/big.bin", body)
        return Immutable(nginx.url, "/immutable/big.bin", body, lambda: [
            (e["if_range"] or None, e["if_match"] or None)
            for e in nginx.requests("/immutable/big.bin")])
    if request.param == "foreign":
        foreign: ForeignOrigin = request.getfixturevalue("foreign")
        body = pattern(SIZE, seed=12)
        foreign.route("/immutable/big", body=body, etag='"big-1"', headers=[IMMUTABLE])
        return Immutable(foreign.url, "/immutable/big", body, lambda: [
            (r.header("if-range"), r.header("if-match"))
            for r in foreign.requests("/immutable/big")])
    origin: Origin = request.getfixturevalue("bundled_origin")
    blob = make_blob(SIZE // 16)
    origin.upload(blob)
    return Immutable(origin.url, f"/v/t1/{sha(blob)}", blob, None)


def test_uncached_slice_of_fresh_object_is_one_request_per_tier(
        immutable: Immutable, make_chain: MakeChain) -> None:
    """RFC 9110 §13.1.5 (If-Range) and RFC 9111 §3.4 (combining partial content): the stored
    object is fresh, so its missing slice is fetched with If-Range (or If-Match) in one
    request per tier, verdict MISS; not a validation (304) followed by a second fetch."""
    chain = make_chain(immutable.url)
    body, target = immutable.body, immutable.target
    r = chain.get(target, headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and r.content == body[:100]
    before = len(immutable.upstream()) if immutable.upstream else 0
    start = 2 * MiB + 10
    r = chain.get(target, headers={"Range": f"bytes={start}-{start + 99}"})
    assert r.status_code == 206 and r.content == body[start : start + 100]
    assert r.headers["content-range"] == f"bytes {start}-{start + 99}/{len(body)}"
    assert r.headers["x-cache"] == "MISS from edge, MISS from shield"
    if immutable.upstream is not None:
        new = immutable.upstream()[before:]
        assert len(new) == 1, new
        if_range, if_match = new[0]
        assert if_range or if_match, new


def test_changed_object_is_detected_and_never_spliced(foreign: ForeignOrigin,
                                                      foreign_chain: Chain) -> None:
    """RFC 9110 §13.1.5 and RFC 9111 §3.4: slices are combined only if their validators
    match; the origin replaced the object (new ETag), so the old slice is dropped, not
    spliced with the new bytes, and the whole object is the new one afterwards."""
    v1, v2 = pattern(SIZE, seed=21), pattern(SIZE, seed=22)
    foreign.route("/obj", body=v1, etag='"v1"', headers=[("Cache-Control", "max-age=3600")])
    r = foreign_chain.get("/obj", headers={"Range": "bytes=0-99"})
    assert r.content == v1[:100]
    foreign.route("/obj", body=v2, etag='"v2"', headers=[("Cache-Control", "max-age=3600")])
    start, end = MiB - 50, MiB + 49  # across the stored slice 0 and the missing slice 1
    r = foreign_chain.get("/obj", headers={"Range": f"bytes={start}-{end}"})
    assert r.status_code == 206
    assert r.content == v2[start : end + 1]
    assert r.headers["etag"] == '"v2"'
    r = foreign_chain.get("/obj")
    assert r.status_code == 200 and r.headers["etag"] == '"v2"'
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(v2).digest()


def test_a_changed_object_waits_for_the_old_versions_fill_of_a_slice(
        foreign: ForeignOrigin, foreign_chain: Chain) -> None:
    """The object changes while its first slice is still being filled at the old version
    (the origin pauses before that answer's last 64 KiB): a range across that slice and the
    next is answered whole with the new version, once the old fill has let go of the slice,
    instead of failing to join it (was 502)."""
    v1, v2 = pattern(SIZE, seed=23), pattern(SIZE, seed=24)
    foreign.route("/slow", body=v1, etag='"v1"', pause=1.0,
                  headers=[("Cache-Control", "max-age=3600")])
    r = foreign_chain.get("/slow", headers={"Range": "bytes=0-99"})
    assert r.content == v1[:100]  # before the pause: slice 0 of v1 is still filling
    foreign.route("/slow", body=v2, etag='"v2"', headers=[("Cache-Control", "max-age=3600")])
    start, end = MiB - 50, MiB + 49
    r = foreign_chain.get("/slow", headers={"Range": f"bytes={start}-{end}"})
    assert r.status_code == 206, r.text
    assert r.content == v2[start : end + 1] and r.headers["etag"] == '"v2"'
    r = foreign_chain.get("/slow")
    assert r.status_code == 200 and r.headers["etag"] == '"v2"'
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(v2).digest()


def test_unverified_range_never_completes_a_content_addressed_object(
        foreign: ForeignOrigin, foreign_chain: Chain) -> None:
    """A node never serves a wrong byte as part of a complete response (integrity of
    content-addressed blobs, /v/t1/<sha256>): the origin garbles every range that does not
    start at 0; a whole-object answer is exact or cut short, and once refetched, exact."""
    body = pattern(SIZE, seed=31)
    digest = hashlib.sha256(body).hexdigest()
    target = f"/v/t1/{digest}"
    foreign.route(target, body=body, etag=f'"{digest}"', corrupt_ranges=True,
                  headers=[IMMUTABLE])
    start = 2 * MiB + 10
    foreign_chain.get(target, headers={"Range": f"bytes={start}-{start + 99}"})
    complete = []
    for _attempt in range(3):
        try:
            r = foreign_chain.get(target)
        except httpx.HTTPError:
            continue  # cut short: the client can tell
        assert r.status_code == 200
        assert hashlib.sha256(r.content).hexdigest() == digest
        complete.append(r)
    assert complete, "never a complete answer"


def test_bundled_origin_404_is_cached_briefly(bundled_origin: Origin,
                                             make_chain: MakeChain) -> None:
    """RFC 9111 §4.2.1 on a 404 (cacheable by default, RFC 9110 §15.1): the origin's
    ``max-age`` on a missing blob lets the edge answer repeats itself until it expires; the
    node's ``negative_ttl`` (2 s here) caps the origin's 10 s. (Date has one-second
    granularity, so a response may arrive up to a second old: §4.2.3 apparent age.)"""
    chain = make_chain(bundled_origin.url, negative_ttl=2.0)
    target = "/v/t1/" + "ab" * 32
    r = chain.get(target)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = chain.get(target)
    assert r.status_code == 404 and r.headers["x-cache"] == "HIT from edge"
    assert r.json()["error"] == "not_found"
    time.sleep(2.6)
    r = chain.get(target)
    assert r.status_code == 404
    assert "HIT" not in r.headers["x-cache"] and "shield" in r.headers["x-cache"]


def test_a_range_past_the_end_of_a_cold_object_is_416_framed_as_sent(
        immutable: Immutable, make_chain: MakeChain) -> None:
    """RFC 9110 §15.5.17: a first byte past the end, in a slice that starts past the end,
    reaches the origin as that slice's range and comes back 416 with the length. The answer
    is edgeproxy's 416 with ``Content-Range: bytes */length`` and a body of its declared
    length: relayed, the upstream's 416 went out with the object's Content-Length (1 MiB and
    more) over an empty body, and the next answer on the connection was lost in it."""
    chain = make_chain(immutable.url)
    body, target = immutable.body, immutable.target
    start = 4 * MiB + 10  # slice 4 starts past the end of a 3 MiB + 5000 object
    host, port = chain.edge_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nhost: edge\r\n"
                     f"range: bytes={start}-{start + 99}\r\n\r\n"
                     f"GET {target} HTTP/1.1\r\nhost: edge\r\nrange: bytes=0-99\r\n"
                     "connection: close\r\n\r\n".encode())
        past, first = split_answers(read_to_close(sock), ["GET", "GET"])
    assert past.status == 416, past
    assert past.headers["content-range"] == f"bytes */{len(body)}"
    assert json.loads(past.body)["error"] == "range_not_satisfiable"
    assert first.status == 206 and first.body == body[:100]
    assert first.headers["content-range"] == f"bytes 0-99/{len(body)}"



def test_preconditions_come_before_a_range_past_the_end(
        immutable: Immutable, make_chain: MakeChain) -> None:
    """RFC 9110 §13.2.2 and §13.1.5: on a cold object, a range past the end with an If-Range
    that does not match is answered whole (200), with one that matches 416, and with a
    matching If-None-Match 304: the object's facts decide, not the 416 of the slice."""
    chain = make_chain(immutable.url)
    body, target = immutable.body, immutable.target
    past = {"Range": f"bytes={4 * MiB + 10}-{4 * MiB + 99}"}
    r = chain.get(target, headers={**past, "If-Range": '"not-this-one"'})
    assert r.status_code == 200 and r.content == body
    etag = r.headers["etag"]
    fresh = make_chain(immutable.url)  # cold again: the 416 of the slice comes first
    r = fresh.get(target, headers={**past, "If-None-Match": etag})
    assert r.status_code == 304 and r.content == b""
    r = fresh.get(target, headers={**past, "If-Range": etag})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(body)}"

