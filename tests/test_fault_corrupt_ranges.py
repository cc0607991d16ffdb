"""Fault matrix: an origin that corrupts ranges, or states a wrong digest for them.

The origin (`tests.foreign.ForeignOrigin`) sends an RFC 9530 ``Content-Digest`` on every 200
and 206, and either garbles the bytes of each range not starting at byte 0 (the digest is that
of the right bytes) or sends the right bytes with a wrong digest. Through an edge alone and
through edge → shield: a late range GET, then a full GET, then the same range again. No answer
ever completes with a wrong byte, each mismatch is counted in ``/metrics``, nothing wrong stays
stored, and the node serves other objects afterwards. With an honest origin, ranged fills
checked by their digest are stored and hit, and a Content-Digest is only ever sent with the
content it is the digest of (RFC 9530 §2).
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from edgeproxy.cache import create_app
from edgeproxy.cache.policy import slice_count
from edgeproxy.cache.req import cache_key
from edgeproxy.cache.store import CacheStore
from edgeproxy.config import Config
from tests.chain import chain_config
from tests.conftest import MakeChain
from tests.foreign import Digest, ForeignOrigin
from tests.origins import pattern
from tests.servers import ServerThread
from tests.test_cache_node import _metric

MiB = 1024 * 1024
SIZE = 3 * MiB + 5000  # four 1 MiB slices, the last one short
IMMUTABLE = ("Cache-Control", "public, max-age=31536000, immutable")
INTEGRITY = "edgeproxy_integrity_failures_total"

# Late ranges, none starting in slice 0, so their fills ask the origin for ranges it garbles:
# within one slice, across two (the answer's earlier bytes come from a fill it has left), and
# two parts of a multipart/byteranges answer.
LATE = {
    "within": f"bytes={2 * MiB + 10}-{2 * MiB + 109}",
    "across": f"bytes={2 * MiB - 50}-{2 * MiB + 49}",
    "multipart": f"bytes={MiB + 10}-{MiB + 19},{2 * MiB + 10}-{2 * MiB + 19}",
}


@dataclass
class Nodes:
    """The node a client talks to (``url``) and every cache node behind it, by tier."""

    url: str
    tiers: dict[str, str]  # tier → base URL
    config: Config


@pytest.fixture(params=["edge", "edge-shield"])
def nodes(request: pytest.FixtureRequest, foreign: ForeignOrigin, make_chain: MakeChain,
          tmp_path: Path) -> Iterator[Nodes]:
    if request.param == "edge-shield":
        chain = make_chain(foreign.url)
        yield Nodes(chain.edge_url, {"edge": chain.edge_url, "shield": chain.shield_url},
                    chain.config)
        return
    config = chain_config(tmp_path / "edge")
    edge = ServerThread(create_app(config, "edge", upstream=foreign.url)).start()
    try:
        yield Nodes(edge.url, {"edge": edge.url}, config)
    finally:
        edge.stop()


def _put(foreign: ForeignOrigin, body: bytes, *, corrupt: bool, digest: Digest) -> str:
    sha = hashlib.sha256(body).hexdigest()
    target = f"/v/t1/{sha}"  # content-addressed (DESIGN "Integrity")
    foreign.route(target, body=body, etag=f'"{sha}"', corrupt_ranges=corrupt,
                  content_digest=digest, headers=[IMMUTABLE])
    return target


def _get(url: str, rng: str | None = None) -> httpx.Response | None:
    """The complete answer, or None when it was cut short. A complete answer that carries a
    Content-Digest carries the digest of exactly its content (RFC 9530 §2)."""
    try:
        r = httpx.get(url, headers={"Range": rng} if rng else {}, timeout=20)
    except httpx.HTTPError:  # cut short: the client can tell the body is incomplete
        return None
    if "content-digest" in r.headers:
        want = base64.b64encode(hashlib.sha256(r.content).digest()).decode()
        assert r.headers["content-digest"] == f"sha-256=:{want}:", (rng, r.headers)
    return r


def _expected(body: bytes, rng: str) -> bytes:
    """What a single-range answer's content must be."""
    first, last = rng.removeprefix("bytes=").split("-")
    return body[int(first) : int(last) + 1]


def _parts(r: httpx.Response) -> list[bytes]:
    """The contents of a multipart/byteranges answer's parts."""
    boundary = r.headers["content-type"].split("boundary=")[1].encode()
    parts = r.content.split(b"--" + boundary)[1:-1]
    return [p.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for p in parts]


def _right(r: httpx.Response, body: bytes, rng: str) -> bool:
    if "," in rng:
        want = [_expected(body, f"bytes={p}") for p in rng.removeprefix("bytes=").split(",")]
        return r.status_code == 206 and _parts(r) == want
    return r.status_code == 206 and r.content == _expected(body, rng)


def _assert_stored_right(nodes: Nodes, target: str, body: bytes, at_least: int = 0) -> None:
    """Every slice of ``target`` any tier holds is the right bytes, and there are
    ``at_least`` of them (nodes commit their index writes a few milliseconds late)."""
    deadline = time.monotonic() + 5
    while _stored_right(nodes, target, body) < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} slices stored"
        time.sleep(0.02)


def _stored_right(nodes: Nodes, target: str, body: bytes) -> int:
    key = cache_key(*target.partition("?")[::2])
    size = nodes.config.cache.slice_size
    stored = 0
    for tier in nodes.tiers:
        store = CacheStore(nodes.config.cache_dir(tier), nodes.config.node(tier).cache_size)
        try:
            meta = store.get_meta(key)
            if meta is None:
                continue
            for index in range(slice_count(len(body), size)):
                got = store.get_slice(key, meta.version, index)
                if got is None:
                    continue
                data = got if isinstance(got, bytes) else os.pread(got.fileno(), size, 0)
                assert data == body[index * size : (index + 1) * size], (tier, index)
                stored += 1
        finally:
            store.close()
    return stored


def _integrity_failures(nodes: Nodes, **labels: str) -> float:
    return sum(_metric(httpx.get(url + "/metrics").text, INTEGRITY, tier=tier, **labels)
               for tier, url in nodes.tiers.items())


@pytest.mark.parametrize("late", list(LATE))
@pytest.mark.parametrize(("corrupt", "digest"), [(True, "right"), (False, "wrong")],
                         ids=["garbled-bytes", "wrong-digest"])
def test_bad_ranges_never_complete_nor_stay_stored(
        nodes: Nodes, foreign: ForeignOrigin, late: str, corrupt: bool, digest: Digest) -> None:
    body = pattern(SIZE, seed=41)
    target = _put(foreign, body, corrupt=corrupt, digest=digest)
    rng = LATE[late]
    # the late range: its fill's digest does not match, so the answer is cut before its end
    assert _get(nodes.url + target, rng) is None
    assert _integrity_failures(nodes, reason="content_digest") >= 1
    _assert_stored_right(nodes, target, body)
    # the full GET: the origin's 200 is right, and so is the answer
    r = _get(nodes.url + target)
    assert r is not None and r.status_code == 200
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(body).digest()
    _assert_stored_right(nodes, target, body, at_least=slice_count(SIZE, MiB))
    # the same range again: from the stored, checked slices
    r = _get(nodes.url + target, rng)
    assert r is not None and _right(r, body, rng)
    assert r.headers["x-cache"].startswith("HIT from edge")
    # and the node serves other objects afterwards
    other = pattern(5000, seed=42)
    foreign.route("/other", body=other, etag='"o"', headers=[IMMUTABLE])
    r = _get(nodes.url + "/other")
    assert r is not None and r.status_code == 200 and r.content == other


def test_bad_range_is_refetched_not_served_from_store(nodes: Nodes,
                                                      foreign: ForeignOrigin) -> None:
    """A range whose digest failed was not kept: asking again goes upstream again (and is cut
    short again); every bad answer from the origin is caught and counted. (A request whose
    fill failed before it could follow it leads one more: that is caught as well.)"""
    body = pattern(SIZE, seed=43)
    target = _put(foreign, body, corrupt=True, digest="right")
    rng = LATE["within"]
    for attempt in (1, 2):
        assert _get(nodes.url + target, rng) is None
        assert foreign.count(target) >= attempt
    assert _integrity_failures(nodes) >= foreign.count(target)
    _assert_stored_right(nodes, target, body)


@pytest.mark.parametrize("offset", [1000, -1000], ids=["total-too-large", "total-too-small"])
@pytest.mark.parametrize("named", [True, False], ids=["content-addressed", "plain"])
def test_a_wrong_complete_length_is_dropped_when_the_origin_contradicts_it(
        nodes: Nodes, foreign: ForeignOrigin, offset: int, named: bool) -> None:
    """One 206 states a wrong complete length (``Content-Range: bytes 0-…/N±1000``), every
    later one the right length under the same strong ETag. The facts the wrong length made
    are dropped as soon as an answer contradicts them: no answer is ever complete with
    other bytes than the object's (a plain path's was, 1000 bytes short, on every request
    for the object's lifetime), and the next answers are whole and right, then hits."""
    body = pattern(SIZE, seed=47)
    sha = hashlib.sha256(body).hexdigest()
    target = f"/v/t1/{sha}" if named else f"/plain/{sha[:12]}"
    route = foreign.route(target, body=body, etag='"s1"', headers=[IMMUTABLE],
                          total_offset=offset)
    _get(nodes.url + target, "bytes=0-99")  # the one lie: its length is the stored one
    route.total_offset = 0
    answers = []
    for _ in range(4):
        r = _get(nodes.url + target)
        answers.append(None if r is None else (r.status_code, len(r.content)))
        assert r is None or r.status_code >= 500 or \
            (r.status_code == 200 and r.content == body), answers
        if r is not None and r.status_code == 200:
            break
    assert answers[-1] == (200, len(body)), answers
    r = _get(nodes.url + target)
    assert r is not None and r.status_code == 200 and r.content == body
    assert r.headers["x-cache"].startswith("HIT from edge")
    r = _get(nodes.url + target, "bytes=-10")
    assert r is not None and r.status_code == 206 and r.content == body[-10:]
    assert r.headers["content-range"] == f"bytes {len(body) - 10}-{len(body) - 1}/{len(body)}"


def test_followers_of_a_bad_fill_are_cut_short(nodes: Nodes, foreign: ForeignOrigin) -> None:
    """Requests that join a fill before its answer's headers are in (the object is known, its
    slice 2 is not) follow its bytes as they come, and are cut short with it: their ranges
    are all in by the time the origin pauses, but the answer's digest is checked at its end."""
    body = pattern(SIZE, seed=45)
    target = _put(foreign, body, corrupt=True, digest="right")
    first = _get(nodes.url + target, "bytes=0-99")  # slice 0: from byte 0, never garbled
    assert first is not None and first.content == body[:100]
    foreign.route(target, body=body, etag=foreign.routes[("GET", target)].etag,
                  corrupt_ranges=True, content_digest="right", headers=[IMMUTABLE], delay=0.3,
                  pause=0.3)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda rng: _get(nodes.url + target, rng),
                                [LATE["within"], LATE["within"], LATE["within"],
                                 f"bytes={2 * MiB + 500}-{2 * MiB + 599}"]))
    # each one cut short; none refused either (a follower waits for the headers of the fill
    # it joins, rather than lead a flight of its own that finds the slice claimed)
    assert answers == [None] * 4
    assert _integrity_failures(nodes) >= 1
    _assert_stored_right(nodes, target, body)


def test_followers_of_a_good_fill_complete(nodes: Nodes, foreign: ForeignOrigin) -> None:
    """The same with an honest origin: every follower gets its range, from one upstream
    request per tier, once the digest matched."""
    body = pattern(SIZE, seed=46)
    target = _put(foreign, body, corrupt=False, digest="right")
    assert _get(nodes.url + target, "bytes=0-99") is not None
    foreign.route(target, body=body, etag=foreign.routes[("GET", target)].etag,
                  content_digest="right", headers=[IMMUTABLE], delay=0.3, pause=0.3)
    ranges = [LATE["within"], f"bytes={2 * MiB + 500}-{2 * MiB + 599}", LATE["within"]]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda rng: _get(nodes.url + target, rng), ranges))
    assert all(r is not None and _right(r, body, rng) for r, rng in zip(answers, ranges,
                                                                         strict=True))
    assert foreign.count(target) == 2
    assert _integrity_failures(nodes) == 0


def test_ranges_checked_by_content_digest_are_stored_and_hit(
        nodes: Nodes, foreign: ForeignOrigin) -> None:
    body = pattern(SIZE, seed=44)
    target = _put(foreign, body, corrupt=False, digest="right")
    aligned = f"bytes={2 * MiB}-{3 * MiB - 1}"  # exactly slice 2: what each tier asks for
    r = _get(nodes.url + target, aligned)
    assert r is not None and _right(r, body, aligned)
    assert r.headers["x-cache"].startswith("MISS from edge")
    # served from the fill of exactly that range, at each tier: the digest goes on unchanged
    assert "content-digest" in r.headers
    _assert_stored_right(nodes, target, body, at_least=len(nodes.tiers))
    # hits: from stored slices; a narrower range never gets the digest of the wider one
    inside = f"bytes={2 * MiB}-{2 * MiB + 9},{3 * MiB - 10}-{3 * MiB - 1}"  # multipart
    for rng in (aligned, LATE["within"], inside):
        r = _get(nodes.url + target, rng)
        assert r is not None and _right(r, body, rng), rng
        assert r.headers["x-cache"].startswith("HIT from edge"), rng
    # the whole representation: its digest is known (content address), and stated
    r = _get(nodes.url + target)
    assert r is not None and r.status_code == 200 and r.content == body
    assert "content-digest" in r.headers
    assert _integrity_failures(nodes) == 0
    upstream = foreign.count(target)
    r = _get(nodes.url + target)
    assert r is not None and r.content == body and r.headers["x-cache"].startswith("HIT")
    assert foreign.count(target) == upstream


def test_hot_object_ranges_never_carry_the_whole_digest(nodes: Nodes,
                                                        foreign: ForeignOrigin) -> None:
    """A small object answered from memory: whole, with its digest; by range, without it
    (RFC 9530 §2: the whole body's digest is not a range's)."""
    body = pattern(5000, seed=47)
    target = _put(foreign, body, corrupt=False, digest="right")
    for _ in range(3):  # a miss, a hit that keeps it in memory, a hit from memory
        r = _get(nodes.url + target)
        assert r is not None and r.content == body
    assert r is not None and "content-digest" in r.headers
    assert r.headers["x-cache"].startswith("HIT")
    for rng, want in (("bytes=10-19", body[10:20]), ("bytes=-100", body[-100:]),
                      ("bytes=0-4999", body)):
        r = _get(nodes.url + target, rng)  # (checks any Content-Digest against the content)
        assert r is not None and r.status_code == 206 and r.content == want
        assert r.headers["x-cache"].startswith("HIT")


@pytest.mark.parametrize("named", [True, False], ids=["content-addressed", "plain"])
def test_a_length_every_206_overstates_is_dropped_at_the_416_past_the_real_end(
        nodes: Nodes, foreign: ForeignOrigin, named: bool) -> None:
    """Every 206 states a complete length one slice too large under one strong ETag, bytes
    past the real end are answered ``416 */<real length>``, and a GET without Range gets the
    whole 200 (found from outside). A whole answer announced with the stored length is cut
    at the real end (its head is out), but that 416 contradicts the stored facts: the tier
    that sees it, the one in front of the origin, drops them and fetches the object whole
    next time. They stood for the facts' whole life before: every whole answer cut. (An
    edge behind a shield sees only its shield's answers cut: it keeps the length it stored
    until its facts expire.)"""
    body = pattern(SIZE, seed=48)
    sha = hashlib.sha256(body).hexdigest()
    target = f"/v/t1/{sha}" if named else f"/plain/{sha[:12]}"
    foreign.route(target, body=body, etag='"s2"', headers=[IMMUTABLE], total_offset=MiB)
    first = _get(nodes.url + target, "bytes=0-99")  # the length it states is stored
    assert first is not None and first.content == body[:100]
    front = list(nodes.tiers.values())[-1]  # (the tier in front of the origin)
    answers = []
    for _ in range(4):
        r = _get(nodes.url + target)  # (the first one is cut at the real end)
        answers.append(None if r is None else (r.status_code, len(r.content)))
        assert r is None or (r.status_code == 200 and r.content == body), answers
        r = _get(front + target) if front != nodes.url else r
        if r is not None:
            assert (r.status_code, r.content) == (200, body)
            break
    assert answers[0] is None and r is not None, answers
    again = _get(front + target)
    assert again is not None and (again.status_code, again.content) == (200, body)
    assert again.headers["x-cache"].startswith("HIT from")
