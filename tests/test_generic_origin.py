"""edge → shield in front of origins the project did not write (RFC 9110 as a proxy sees it).

The raw-socket origin of `tests.foreign` sends what dynamic origins send (chunked and
close-delimited bodies, unusual statuses) and records what it receives; nginx and
``python -m http.server`` serve static files. Each test names the section it checks.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chain import Chain, edge_config, serve_edge
from tests.conftest import MakeChain
from tests.foreign import ForeignOrigin, Request
from tests.origins import pattern
from tests.rawhttp import RawResponse, raw_request, read_to_close, split_answers
from tests.static_origins import HttpServer, Nginx, StaticOrigin

MiB = 1024 * 1024
CACHEABLE = ("Cache-Control", "max-age=3600")

# Fields the client sends end to end (RFC 9110 §7.6.1: a proxy forwards what it does not consume).
END_TO_END = {"X-Foo": "bar, baz", "Accept-Language": "de-CH, de;q=0.9", "User-Agent": "rig/1.0",
              "Via": "1.0 corp-proxy"}
# Connection-specific fields (RFC 9110 §7.6.1): the ones Connection names, TE, Upgrade,
# Keep-Alive, Proxy-Connection; and Proxy-Authorization, consumed by the first proxy (§11.7.2).
HOP_BY_HOP = {"Connection": "keep-alive, X-Hop", "X-Hop": "1", "TE": "trailers",
              "Upgrade": "h2c", "Keep-Alive": "timeout=5", "Proxy-Connection": "keep-alive",
              "Proxy-Authorization": "Basic cHJveHk6cHc="}


def assert_forwarded(req: Request) -> None:
    """End-to-end fields arrive unchanged, hop-by-hop ones do not, each tier adds its Via."""
    for name, value in END_TO_END.items():
        if name != "Via":
            assert req.header(name) == value, name
    # The tier's own connection to the origin may carry a Connection field of its own, but
    # nothing of the client's.
    assert not {n.lower() for n in HOP_BY_HOP if n != "Connection"} & req.names(), req.headers
    assert "x-hop" not in (req.header("connection") or "").lower()
    # RFC 9110 §7.6.3: each intermediary appends itself; the client's entry stays first.
    hops = [h.strip() for h in (req.header("via") or "").split(",")]
    assert len(hops) == 3 and hops[0] == "1.0 corp-proxy", hops
    assert "edge" in hops[1] and "shield" in hops[2], hops


def test_request_headers_reach_origin_on_miss(foreign: ForeignOrigin,
                                              foreign_chain: Chain) -> None:
    """RFC 9110 §7.6.1, §7.6.3: on a miss the origin sees the client's end-to-end fields."""
    foreign.route("/e2e", body=b"hello", headers=[CACHEABLE])
    r = foreign_chain.get("/e2e", headers={**END_TO_END, **HOP_BY_HOP})
    assert r.status_code == 200 and r.content == b"hello"
    assert_forwarded(foreign.requests("/e2e")[0])


def test_request_headers_reach_origin_on_revalidation(foreign: ForeignOrigin,
                                                      foreign_chain: Chain) -> None:
    """RFC 9111 §4.3.1: a validation request is the client's request plus conditionals."""
    foreign.route("/e2e", body=b"hello", etag='"e1"', headers=[("Cache-Control", "no-cache")])
    assert foreign_chain.get("/e2e").content == b"hello"
    r = foreign_chain.get("/e2e", headers={**END_TO_END, **HOP_BY_HOP})
    assert r.status_code == 200 and r.content == b"hello"
    reval = foreign.requests("/e2e")[-1]
    assert reval.header("if-none-match") == '"e1"'
    assert_forwarded(reval)


def test_request_headers_reach_origin_on_pass(foreign: ForeignOrigin,
                                              foreign_chain: Chain) -> None:
    """RFC 9110 §7.6.1 for a request a cache passes (POST, and GET with credentials)."""
    foreign.route("/form", method="POST", body=b"posted", status=200)
    r = foreign_chain.request("POST", "/form", content=b"a=1",
                              headers={**END_TO_END, **HOP_BY_HOP})
    assert r.status_code == 200 and r.content == b"posted"
    sent = foreign.requests("/form", "POST")[0]
    assert sent.body == b"a=1"
    assert_forwarded(sent)
    # A private origin authenticates its users itself (RFC 9110 §11.6.2).
    foreign.route("/private", body=b"yours", headers=[("Cache-Control", "private")])
    r = foreign_chain.get("/private", headers={**END_TO_END, "Authorization": "Bearer t0k"})
    assert r.status_code == 200 and r.content == b"yours"
    sent = foreign.requests("/private")[0]
    assert sent.header("authorization") == "Bearer t0k"
    assert sent.header("x-foo") == "bar, baz"


def test_a_range_the_edge_ignores_is_not_relayed_on_a_pass(foreign: ForeignOrigin,
                                                           tmp_path: Path) -> None:
    """RFC 9110 §14.2: an invalid Range is ignored (200, whole). A GET that ends as a PASS (a
    second request while the first one's private answer is on its way: RFC 9111 §3.5, not
    to be shared) does not carry it upstream either, so it is answered the same way: an
    origin that reads ``bytes=1 -2`` leniently as a range gave that request a 206."""
    body = bytes(range(256)) * 200
    foreign.route("/p", body=body, delay=0.5, headers=[("Cache-Control", "private")])
    answers: list[httpx.Response] = []
    with serve_edge(edge_config(tmp_path, foreign.url)) as edge:

        def get(invalid: str) -> None:
            with httpx.Client(timeout=20) as client:
                answers.append(client.get(edge.url + "/p", headers={"Range": invalid}))

        # (two Range values: not one request behind the other, `admission.lead_key`)
        threads = [threading.Thread(target=get, args=(f"bytes={i} -2",)) for i in (1, 0)]
        for thread in threads:
            thread.start()
            time.sleep(0.1)  # the second comes while the first one's answer is awaited
        for thread in threads:
            thread.join()
    assert [(a.status_code, a.content == body) for a in answers] == [(200, True)] * 2
    assert any("PASS" in a.headers["x-cache"] for a in answers)  # (the path under test)
    assert not [r for r in foreign.requests("/p") if r.header("range") is not None]


@pytest.mark.parametrize("method", ["TRACE", "CONNECT"])
def test_trace_and_connect_are_refused_not_relayed(foreign: ForeignOrigin, foreign_chain: Chain,
                                                   method: str) -> None:
    """TRACE would echo the client's credentials back (cross-site tracing), CONNECT asks for
    a tunnel: 405 with Allow (RFC 9110 §15.5.6) and a JSON error, at every tier, and the
    origin never sees them."""
    foreign.route("/t", method=method, body=b"echoed")
    for url in (foreign_chain.edge_url, foreign_chain.shield_url):
        r = raw_request(url, f"{method} /t HTTP/1.1\r\nHost: h\r\nCookie: s=1\r\n"
                             "Authorization: Bearer t0k\r\n\r\n".encode())
        assert r.status == 405, (r.status, r.body[:200])
        assert "GET" in r.headers["allow"] and method not in r.headers["allow"]
        body = json.loads(r.body)
        assert body["error"] == "method_not_allowed" and method in body["message"]
        assert b"t0k" not in r.body and b"s=1" not in r.body
    assert foreign.count("/t", method) == 0
    served = foreign_chain.get("/t")  # the path itself is served as ever
    assert served.status_code == 404


def test_variants_of_equivalent_request_values_are_one(foreign: ForeignOrigin,
                                                      foreign_chain: Chain) -> None:
    """RFC 9111 §4.1: selecting values that differ only in whitespace (any field) or in case
    and order (Accept-Language) select the stored variant; another value does not."""
    foreign.route("/v", body=b"negotiated", headers=[
        ("Cache-Control", "max-age=600"), ("Vary", "Accept-Language, X-Foo")])
    first = foreign_chain.get("/v", headers={"Accept-Language": "en, de;q=0.5", "X-Foo": "1,2"})
    assert first.status_code == 200 and first.headers["x-cache"].startswith("MISS")
    same = foreign_chain.get("/v", headers={"Accept-Language": "DE ; q=0.5 ,EN",
                                            "X-Foo": "1 ,  2"})
    assert same.content == b"negotiated" and same.headers["x-cache"].startswith("HIT")
    other = foreign_chain.get("/v", headers={"Accept-Language": "fr", "X-Foo": "1,2"})
    assert other.headers["x-cache"].startswith("MISS")
    assert foreign.count("/v") == 2


def test_a_single_valued_field_selects_as_sent(foreign: ForeignOrigin,
                                               foreign_chain: Chain) -> None:
    """A comma in User-Agent is text, not a list's separator: two values that differ around
    it are two variants (RFC 9111 §4.1 allows only normalisations known to keep the
    meaning); the same value, sent again, is the stored one."""
    foreign.route("/ua", body=b"for this agent", headers=[
        ("Cache-Control", "max-age=600"), ("Vary", "User-Agent")])
    agents = ["rig/1.0 (X11, Linux)", "rig/1.0 (X11,Linux)"]
    for agent in agents:
        r = foreign_chain.get("/ua", headers={"User-Agent": agent})
        assert r.status_code == 200 and r.headers["x-cache"].startswith("MISS")
    again = foreign_chain.get("/ua", headers={"User-Agent": agents[0]})
    assert again.headers["x-cache"].startswith("HIT")
    assert foreign.count("/ua") == 2


def test_echoed_request_headers_come_back_to_the_client(foreign: ForeignOrigin,
                                                        foreign_chain: Chain) -> None:
    """RFC 9110 §7.6.1: what the origin saw, as the client reads it in the body."""
    foreign.route("/echo", echo=True)
    r = foreign_chain.get("/echo", headers={"X-Foo": "echo-me", "TE": "trailers"})
    seen = r.json()
    assert seen["x-foo"] == "echo-me"
    assert "te" not in seen


@pytest.mark.parametrize("framing", ["chunked", "close"])
@pytest.mark.parametrize("size", [10_000, 3 * MiB + 12345], ids=["10KB", "3MiB"])
def test_body_without_content_length_is_delivered_and_cached(
        foreign: ForeignOrigin, foreign_chain: Chain, framing: str, size: int) -> None:
    """RFC 9112 §6.3 (message length: chunked, or until close), RFC 9111 §3 (storing it):
    byte-exact through both tiers, then a hit, then ranges from the stored whole."""
    body = pattern(size, seed=size)
    foreign.route("/dyn", body=body, framing=framing, ranges=False, etag='"d1"',
                  headers=[CACHEABLE])
    r = foreign_chain.get("/dyn")
    assert r.status_code == 200
    assert r.content == body
    fetched = foreign.count("/dyn")
    r = foreign_chain.get("/dyn")
    assert r.content == body and r.headers["x-cache"] == "HIT from edge"
    start = size * 2 // 3
    r = foreign_chain.get("/dyn", headers={"Range": f"bytes={start}-{start + 99}"})
    assert r.status_code == 206 and r.content == body[start : start + 100]
    assert r.headers["content-range"] == f"bytes {start}-{start + 99}/{size}"
    assert r.headers["x-cache"] == "HIT from edge"
    assert foreign.count("/dyn") == fetched


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_a_cold_range_of_an_origin_ignoring_range_stores_the_whole(
        foreign: ForeignOrigin, foreign_chain: Chain, framing: str) -> None:
    """RFC 9110 §14.2: an origin may answer a range request 200 whole. A range in a later
    slice of such an object gets its bytes (206, or the whole 200 while the length is not
    known), and the whole body is stored from that one answer: the slices before the asked
    one are claimed as far as the body goes, or as they come when its length is unknown."""
    size = 3 * MiB + 12345
    body = pattern(size, seed=9)
    foreign.route("/dyn", body=body, framing=framing, ranges=False, etag='"d1"',
                  headers=[CACHEABLE])
    start = 2 * MiB + 100
    r = foreign_chain.get("/dyn", headers={"Range": f"bytes={start}-{start + 99}"})
    if r.status_code == 206:
        assert r.content == body[start : start + 100]
        assert r.headers["content-range"] == f"bytes {start}-{start + 99}/{size}"
    else:
        assert framing != "length" and r.status_code == 200 and r.content == body
    r = foreign_chain.get("/dyn")
    assert r.status_code == 200 and r.content == body and "HIT" in r.headers["x-cache"]
    assert foreign.count("/dyn") == 1


def test_a_large_chunked_body_lands_through_the_fill_threads_exactly(
        foreign: ForeignOrigin, foreign_chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large chunks of a body of unknown length are hashed and written in the fill threads
    (`edgeproxy.cache.landing`), its slices claimed as they begin; the bytes are exact at
    both tiers, then served from the stored whole, ranges included."""
    import threading

    from edgeproxy.cache import landing

    threaded: list[int] = []
    real = landing.land

    def spy(hasher: object, chunk: bytes, pieces: list[landing.Piece]) -> landing.Landed:
        if threading.current_thread().name.startswith("edgeproxy-fill"):  # not a loop's
            threaded.append(len(chunk))
        return real(hasher, chunk, pieces)

    monkeypatch.setattr(landing, "land", spy)
    size = 5 * MiB + 777
    body = pattern(size, seed=77)
    foreign.route("/big-dyn", body=body, framing="chunked", chunk=256 * 1024, ranges=False,
                  etag='"bd1"', headers=[CACHEABLE])
    r = foreign_chain.get("/big-dyn")
    assert r.status_code == 200 and r.content == body
    r = foreign_chain.get("/big-dyn")
    assert r.content == body and r.headers["x-cache"] == "HIT from edge"
    start = 4 * MiB - 10  # across a slice seam
    r = foreign_chain.get("/big-dyn", headers={"Range": f"bytes={start}-{start + 99}"})
    assert r.status_code == 206 and r.content == body[start : start + 100]
    assert foreign.count("/big-dyn") == 1
    assert threaded, "no write went through a fill thread"


@pytest.mark.parametrize("slices", [1, 2])
@pytest.mark.parametrize("rng", ["from-end", "past-end", "from-slice-1"])
@pytest.mark.parametrize("etag", [None, '"w1"'], ids=["unvalidated", "etag"])
def test_a_chunked_body_of_whole_slices_ends_whole_under_any_range(
        foreign: ForeignOrigin, foreign_chain: Chain, slices: int, rng: str,
        etag: str | None) -> None:
    """A body of unknown length that is exactly N slices long, asked for with a range from
    its end or past it: the slice claimed for the range gets no byte, and is not missing
    one. Without a validator, the answer ended without its last chunk ("upstream body ended
    early") each time the object was cold (RFC 9112 §7.1: a chunked message ends with its
    last chunk)."""
    size = slices * MiB
    body = pattern(size, seed=80 + slices)
    target = f"/whole-slices-{slices}-{rng}-{etag is None}?q=1"
    foreign.route(target, body=body, framing="chunked", chunk=16 * 1024, ranges=False,
                  etag=etag, headers=[CACHEABLE])
    value = {"from-end": f"bytes={size}-", "past-end": "bytes=0-99999999",
             "from-slice-1": f"bytes={MiB}-"}[rng]
    for _ in range(2):  # cold, then from the store
        r = foreign_chain.get(target, headers={"Range": value})  # raises if cut short
        if r.status_code == 416:
            assert value.startswith(f"bytes={size}-"), r.headers
            assert r.headers["content-range"] == f"bytes */{size}"
            continue
        first = int(value.removeprefix("bytes=").split("-")[0])
        assert (r.status_code, r.content) in ((200, body), (206, body[first:])), \
            (r.status_code, len(r.content))
    r = foreign_chain.get(target)
    assert r.status_code == 200 and r.content == body and "HIT" in r.headers["x-cache"]
    assert foreign.count(target) == 1


def test_bytes_past_a_short_content_length_leave_the_answer_whole(
        foreign: ForeignOrigin, foreign_chain: Chain) -> None:
    """RFC 9112 §6.3: ``Content-Length`` delimits the message; bytes after it (here, the rest
    of a longer body) are not a broken answer but make the connection unusable. The answer
    is stored with all its fields and hit (cache-tests ``headers-store-Content-Length``)."""
    body = pattern(36, seed=3)
    foreign.route("/short", body=body, framing="declared", ranges=False,
                  headers=[CACHEABLE, ("Content-Length", "10"), ("X-Kept", "yes")])
    r = foreign_chain.get("/short")
    assert r.status_code == 200 and r.content == body[:10]
    assert r.headers["x-kept"] == "yes" and r.headers["content-length"] == "10"
    r = foreign_chain.get("/short")
    assert r.content == body[:10] and r.headers["x-cache"] == "HIT from edge"
    assert r.headers["x-kept"] == "yes"
    assert foreign.count("/short") == 1


def test_an_answer_whose_lines_end_in_a_bare_lf_is_served_and_stored(
        foreign: ForeignOrigin, foreign_chain: Chain) -> None:
    """RFC 9112 §2.2: a recipient may take a bare LF for a line's end; old CGI scripts send
    them, and nginx serves their answers (llhttp refused them: a 502 at the shield)."""
    body = pattern(3000, seed=4)
    foreign.route("/lf", body=body, bare_lf=True, headers=[CACHEABLE, ("X-Old", "cgi")])
    r = foreign_chain.get("/lf")
    assert (r.status_code, r.content, r.headers["x-old"]) == (200, body, "cgi")
    r = foreign_chain.get("/lf")
    assert r.content == body and r.headers["x-cache"] == "HIT from edge"
    assert foreign.count("/lf") == 1
    chunked = pattern(70_000, seed=5)
    foreign.route("/lf-chunked", body=chunked, bare_lf=True, framing="chunked")
    r = foreign_chain.get("/lf-chunked")
    assert (r.status_code, r.content) == (200, chunked)


STATUSES = [203, 299, 418, 422, 599, 999]


@pytest.mark.parametrize("status", STATUSES)
def test_any_status_passes_through(foreign: ForeignOrigin, foreign_chain: Chain,
                                   status: int) -> None:
    """RFC 9110 §15: a client (and a proxy) must handle any three-digit status, treating an
    unknown one as the x00 of its class; a proxy relays it, never a 500/502 of its own."""
    body = f"status {status}\n".encode()
    foreign.route("/s", status=status, body=body)
    for _ in range(2):
        r = foreign_chain.get("/s")
        assert r.status_code == status
        assert r.content == body


def test_any_status_passes_through_production_server(foreign: ForeignOrigin,
                                                     make_chain: MakeChain) -> None:
    """RFC 9110 §15, with the nodes run by ``edgeproxy serve`` as in production."""
    chain = make_chain(foreign.url, mode="process")
    for status in STATUSES:
        body = f"status {status}\n".encode()
        foreign.route(f"/s{status}", status=status, body=body)
        r = chain.get(f"/s{status}")
        assert (r.status_code, r.content) == (status, body)


def test_interim_1xx_then_final_answer(foreign: ForeignOrigin, foreign_chain: Chain) -> None:
    """RFC 9110 §15.2: interim answers (here 103 Early Hints) precede the final one, which
    arrives intact; chunked, as a dynamic origin sends it."""
    body = pattern(50_000)
    foreign.route("/hints", body=body, interim=[103], framing="chunked")
    r = foreign_chain.get("/hints")
    assert r.status_code == 200 and r.content == body


def test_query_string_stays_in_the_key_as_sent(foreign: ForeignOrigin,
                                               foreign_chain: Chain) -> None:
    """RFC 9111 §2 and RFC 9110 §4.2.3: the key is the target URI; parameter order is part of
    it, so two orders are two objects when the origin answers them differently."""
    pairs = {"/q?v=1&v=2": b"one-two", "/q?v=2&v=1": b"two-one",
             "/q?a=1&b=2": b"a-b", "/q?b=2&a=1": b"b-a"}
    for target, body in pairs.items():
        foreign.route(target, body=body, headers=[CACHEABLE])
    for _round in range(2):
        for target, body in pairs.items():
            assert foreign_chain.get(target).content == body, target
    for target in pairs:
        assert foreign.count(target) == 1, target


# --- static-file servers as origins ------------------------------------------------------------

TEN_DAYS_AGO = time.time() - 10 * 86400


@pytest.fixture(params=["nginx", "http_server"])
def static(request: pytest.FixtureRequest) -> StaticOrigin:
    origin: Nginx | HttpServer = request.getfixturevalue(request.param)
    return origin


def test_static_plain_get_then_hit(static: StaticOrigin, make_chain: MakeChain) -> None:
    """RFC 9111 §4.2.2: a file with only Last-Modified (10 days old) is heuristically fresh."""
    body = pattern(200_000, seed=7)
    static.put("plain.bin", body, mtime=TEN_DAYS_AGO)
    chain = make_chain(static.url)
    r = chain.get("/plain.bin")
    assert r.status_code == 200 and r.content == body
    r = chain.get("/plain.bin")
    assert r.content == body and r.headers["x-cache"] == "HIT from edge"
    assert static.count("/plain.bin") == 1


def test_static_large_file_through_both_tiers_byte_exact(static: StaticOrigin,
                                                         make_chain: MakeChain) -> None:
    """A multi-MiB file framed by Content-Length, read in many pieces past the parser at both
    tiers (`http11.UpstreamConnection._take`), from servers the project did not write: every
    byte exact, stored, ranges across slice seams served from the store."""
    size = 5 * MiB + 12_345
    body = pattern(size, seed=21)
    static.put("large.bin", body, mtime=TEN_DAYS_AGO)
    chain = make_chain(static.url)
    r = chain.get("/large.bin")
    assert r.status_code == 200 and r.content == body
    assert int(r.headers["content-length"]) == size
    r = chain.get("/large.bin")
    assert r.content == body and r.headers["x-cache"] == "HIT from edge"
    for first, last in [(MiB - 7, MiB + 7), (3 * MiB + 1, size - 1), (0, 0)]:
        r = chain.get("/large.bin", headers={"Range": f"bytes={first}-{last}"})
        assert r.status_code == 206 and r.content == body[first:last + 1]
    assert static.count("/large.bin") == 1


def test_if_none_match_star_on_a_stored_file_is_304(static: StaticOrigin,
                                                     make_chain: MakeChain) -> None:
    """RFC 9110 §13.1.2: ``*`` matches any current representation, one without an ETag
    (python -m http.server sends none) too. (It got the whole body: found from outside.)"""
    body = pattern(3000, seed=11)
    static.put("star.bin", body, mtime=TEN_DAYS_AGO)
    chain = make_chain(static.url)
    assert chain.get("/star.bin").content == body
    r = chain.get("/star.bin", headers={"If-None-Match": "*"})
    assert r.status_code == 304 and r.content == b""
    assert static.count("/star.bin") == 1


def test_static_range_get(static: StaticOrigin, make_chain: MakeChain) -> None:
    """RFC 9110 §14.2: a single range, whether or not the origin itself supports ranges."""
    body = pattern(200_000, seed=8)
    static.put("r.bin", body, mtime=TEN_DAYS_AGO)
    chain = make_chain(static.url)
    for _ in range(2):
        r = chain.get("/r.bin", headers={"Range": "bytes=1000-1999"})
        assert r.status_code == 206 and r.content == body[1000:2000]
        assert r.headers["content-range"] == "bytes 1000-1999/200000"


def test_static_head(static: StaticOrigin, make_chain: MakeChain) -> None:
    """RFC 9110 §9.3.2: HEAD has GET's header fields and no body."""
    static.put("h.bin", pattern(12_345), mtime=TEN_DAYS_AGO)
    chain = make_chain(static.url)
    for _ in range(2):
        r = chain.request("HEAD", "/h.bin")
        assert r.status_code == 200 and r.content == b""
        assert r.headers["content-length"] == "12345"
    r = chain.get("/h.bin")
    assert r.status_code == 200 and len(r.content) == 12_345


def test_static_if_modified_since_gets_304(static: StaticOrigin, make_chain: MakeChain) -> None:
    """RFC 9110 §13.1.3 (If-Modified-Since), RFC 9111 §4.3.2: cold and warm."""
    static.put("ims.bin", pattern(5000), mtime=TEN_DAYS_AGO)
    chain = make_chain(static.url)
    lm = httpx.get(static.url + "/ims.bin").headers["last-modified"]
    for _ in range(2):
        r = chain.get("/ims.bin", headers={"If-Modified-Since": lm})
        assert r.status_code == 304 and r.content == b""
    r = chain.get("/ims.bin")
    assert r.status_code == 200 and len(r.content) == 5000


def test_nginx_if_none_match_gets_304(nginx: Nginx, make_chain: MakeChain) -> None:
    """RFC 9110 §13.1.2 (If-None-Match, weak comparison), RFC 9111 §4.3.2: cold and warm."""
    nginx.put("inm.bin", pattern(5000), mtime=TEN_DAYS_AGO)
    chain = make_chain(nginx.url)
    etag = httpx.get(nginx.url + "/inm.bin").headers["etag"]
    for tag in (etag, "W/" + etag, f'"other", {etag}'):
        r = chain.get("/inm.bin", headers={"If-None-Match": tag})
        assert r.status_code == 304 and r.content == b"", tag
        assert r.headers["etag"] == etag
    r = chain.get("/inm.bin", headers={"If-None-Match": '"other"'})
    assert r.status_code == 200 and len(r.content) == 5000


def test_nginx_preconditions_answer_as_nginx_does(nginx: Nginx, make_chain: MakeChain) -> None:
    """RFC 9110 §13.2.2 steps 1-2, with nginx as the reference model: for each If-Match /
    If-Unmodified-Since, the chain (cold, then stored) answers with nginx's own status."""
    nginx.put("pre.bin", pattern(5000), mtime=TEN_DAYS_AGO)
    chain = make_chain(nginx.url)
    own = httpx.get(nginx.url + "/pre.bin").headers
    etag, modified = own["etag"], own["last-modified"]
    older = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(TEN_DAYS_AGO - 86400))
    cases = [{"If-Match": etag}, {"If-Match": '"other"'}, {"If-Match": f'"x", {etag}'},
             {"If-Match": "W/" + etag}, {"If-Match": "*"}, {"If-Unmodified-Since": modified},
             {"If-Unmodified-Since": older}]
    for n, fields in enumerate(cases):
        want = httpx.get(nginx.url + "/pre.bin", headers=fields).status_code
        cold = chain.get(f"/pre.bin?n={n}", headers=fields)
        warm = chain.get(f"/pre.bin?n={n}", headers=fields)
        assert (cold.status_code, warm.status_code) == (want, want), fields
        if want == 412:
            assert warm.json()["error"] == "precondition_failed"
        assert nginx.count(f"/pre.bin?n={n}") == 1, fields  # the second came from the cache
    assert {412, 200} <= {httpx.get(nginx.url + "/pre.bin", headers=f).status_code
                          for f in cases}  # (the reference says both, so both were checked)
    # Here nginx is not the reference: it answers 412 to both, where §13.1.4 says an invalid
    # date is ignored, and so is If-Unmodified-Since next to an If-Match
    for fields in ({"If-Unmodified-Since": "not a date"},
                   {"If-Match": etag, "If-Unmodified-Since": older}):
        r = chain.get("/pre.bin", headers=fields)
        assert r.status_code == 200 and len(r.content) == 5000, fields


def test_an_object_never_fresh_under_concurrent_requests_is_always_answered(
        foreign: ForeignOrigin, make_chain: MakeChain) -> None:
    """An answer that is stale at once (``max-age=0``, as ``python -m http.server``'s files
    are by heuristic) is revalidated by every request; with two workers per node, requests
    kept losing the race for the claim of its fill and failed with 502 ('could not lead or
    join the fill') after three looks. They now relay their own answer instead: every
    request gets the exact bytes, whole or ranged."""
    body = pattern(300_000, seed=9)
    foreign.route("/stale", body=body, etag='"s1"', delay=0.01,
                  headers=[("Cache-Control", "max-age=0")])
    chain = make_chain(foreign.url, mode="process", workers=2)
    failures: list[str] = []

    def client(seed: int) -> None:
        with httpx.Client(base_url=chain.edge_url, timeout=30) as http:
            for i in range(25):
                first = (seed * 7919 + i * 104729) % len(body)
                ranged = i % 2 == 1
                r = http.get("/stale", headers={"Range": f"bytes={first}-"} if ranged else {})
                want = (206, body[first:]) if ranged else (200, body)
                if (r.status_code, r.content) != want:
                    failures.append(f"{r.status_code} {r.headers.get('x-cache')} {r.text[:100]}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]


def test_followers_in_other_workers_of_another_variant_get_their_own(
        foreign: ForeignOrigin, make_chain: MakeChain) -> None:
    """RFC 9111 §4.1, across workers: a request that finds a cold object being fetched by
    another worker process waits for that fetch's facts, and must not take its answer when
    the Vary'd field differs (`foreign_facts` then `fields.selects`). Two workers per node and
    concurrent requests in both languages on each new object: every answer is its own."""
    foreign.route("/lang", echo=True, delay=0.3,
                  headers=[CACHEABLE, ("Vary", "Accept-Language")])
    chain = make_chain(foreign.url, mode="process", workers=2)
    failures: list[str] = []

    def client(n: int, round_: int) -> None:
        lang = ("de", "fr")[n % 2]
        with httpx.Client(timeout=30) as http:
            r = http.get(f"{chain.edge_url}/lang?round={round_}",
                         headers={"Accept-Language": lang})
            got = r.json().get("accept-language") if r.status_code == 200 else r.status_code
            if got != lang:
                failures.append(f"{lang}: {got} ({r.headers.get('x-cache')})")

    for round_ in range(4):
        threads = [threading.Thread(target=client, args=(n, round_)) for n in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not failures, failures[:5]


def test_whitespace_between_a_field_name_and_its_colon_is_removed(
        foreign: ForeignOrigin, foreign_chain: Chain) -> None:
    """RFC 9112 §5.1: a proxy MUST remove whitespace between a response field's name and
    its colon before forwarding (it got a 502). The field reaches the client under its name;
    the answer is stored and hit like any other."""
    body = pattern(2000, seed=8)
    foreign.route("/ws", body=body, headers=[CACHEABLE, ("X-Spaced \t", "yes"),
                                            ("Content-Type ", "text/plain")])
    r = foreign_chain.get("/ws")
    assert (r.status_code, r.content) == (200, body)
    assert r.headers["x-spaced"] == "yes" and r.headers["content-type"] == "text/plain"
    assert all(name == name.strip() for name in r.headers)
    r = foreign_chain.get("/ws")
    assert r.content == body and r.headers["x-cache"] == "HIT from edge"
    assert r.headers["x-spaced"] == "yes"
    assert foreign.count("/ws") == 1
    chunked = pattern(70_000, seed=9)
    foreign.route("/ws-chunked", body=chunked, framing="chunked",
                  headers=[("X-Spaced ", "chunked")])
    r = foreign_chain.get("/ws-chunked")
    assert (r.status_code, r.content, r.headers["x-spaced"]) == (200, chunked, "chunked")


def test_repeated_equal_content_lengths_are_one_and_a_huge_head_is_refused(
        foreign: ForeignOrigin, foreign_chain: Chain) -> None:
    """RFC 9112 §6.3 item 5: Content-Length fields that all say the same are read as one
    (they got a 502); a head past 64 KiB is refused with a 502 and a JSON reason instead
    of being buffered and relayed whole."""
    body = pattern(3000, seed=10)
    foreign.route("/dup-cl", body=body, framing="declared",
                  headers=[CACHEABLE, ("Content-Length", "3000"), ("Content-Length", "3000")])
    r = foreign_chain.get("/dup-cl")
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, body, "3000")
    r = foreign_chain.get("/dup-cl")
    assert r.content == body and r.headers["x-cache"] == "HIT from edge"
    foreign.route("/huge-head", body=body, headers=[("X-Huge", "v" * 200_000)])
    r = foreign_chain.get("/huge-head")
    assert r.status_code == 502 and r.json()["error"] == "bad_upstream_answer"


def _interims(data: bytes) -> tuple[list[bytes], bytes]:
    """The interim heads at the start of ``data``, and the rest."""
    heads = []
    while data.startswith(b"HTTP/1.1 1"):
        head, _, data = data.partition(b"\r\n\r\n")
        heads.append(head)
    return heads, data


def test_interim_answers_are_passed_on_through_both_tiers_and_not_stored(
        foreign: ForeignOrigin, make_chain: MakeChain) -> None:
    """RFC 9110 §15.2: a proxy forwards the 1xx answers it did not ask for (103 Early Hints
    with their Link fields, 102; not their hop-by-hop ones), ahead of the final answer, to
    HTTP/1.1 clients only; they are not stored (a hit has none: cache-tests
    ``interim-not-cached``), and their fields are not the final answer's
    (``interim-no-header-reuse``)."""
    chain = make_chain(foreign.url, mode="process")
    body = pattern(20_000, seed=11)
    hints = [("Link", "</style.css>; rel=preload; as=style"), ("X-Hint", "early"),
             ("Connection", "X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "timeout=5")]
    foreign.route("/early", body=body, interim=[103, 102], hints=hints, headers=[CACHEABLE])
    foreign.route("/early10", body=body, interim=[103], hints=hints, headers=[CACHEABLE])
    port = int(chain.edge_url.rsplit(":", 1)[1])

    def exchange(target: str, version: str = "1.1") -> tuple[list[bytes], bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"GET {target} HTTP/{version}\r\nHost: e\r\nConnection: close\r\n\r\n"
                         .encode())
            return _interims(read_to_close(sock))

    heads, rest = exchange("/early")
    assert [h.split(b"\r\n")[0] for h in heads] == [b"HTTP/1.1 103 Early Hints",
                                                    b"HTTP/1.1 102 Processing"]
    assert b"\r\nlink: </style.css>; rel=preload; as=style" in heads[0].lower()
    # hop-by-hop fields stay with their hop (RFC 9110 §7.6.1)
    assert not any(f in heads[0].lower() for f in (b"connection:", b"x-hop", b"keep-alive"))
    [final] = split_answers(rest, ["GET"])
    assert final.status == 200 and final.body == body and "x-hint" not in final.headers
    heads, rest = exchange("/early")  # a hit: no interim answer
    [final] = split_answers(rest, ["GET"])
    assert heads == [] and final.headers["x-cache"] == "HIT from edge" and final.body == body
    heads, rest = exchange("/early10", "1.0")  # RFC 9110 §15.2: none to an HTTP/1.0 client
    assert heads == [] and rest.startswith(b"HTTP/1.1 200 ")


def test_only_if_cached_and_host_fields_are_checked_at_every_door(
        foreign: ForeignOrigin, make_chain: MakeChain) -> None:
    """RFC 9111 §5.2.1.7: ``only-if-cached`` gets a stored answer or a 504, never a fetch.
    RFC 9112 §3.2: two Host fields get a 400, on the fast lane's hits too."""
    chain = make_chain(foreign.url, mode="process")
    body = pattern(3000, seed=12)
    foreign.route("/oic", body=body, headers=[CACHEABLE])
    port = int(chain.edge_url.rsplit(":", 1)[1])

    def exchange(*lines: str) -> RawResponse:
        head = "\r\n".join(["GET /oic HTTP/1.1", *lines, "Connection: close"]) + "\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head.encode())
            [answer] = split_answers(read_to_close(sock), ["GET"])
        return answer

    r = exchange("Host: e", "Cache-Control: only-if-cached")
    assert r.status == 504 and json.loads(r.body)["error"] == "not_cached"
    assert foreign.count("/oic") == 0
    for verdict in ("MISS", "HIT"):
        r = exchange("Host: e")
        assert r.status == 200 and r.body == body and r.headers["x-cache"].startswith(verdict)
    r = exchange("Host: e", "Cache-Control: max-age=60, only-if-cached")
    assert (r.status, r.body, r.headers["x-cache"]) == (200, body, "HIT from edge")
    r = exchange("Host: e", "Host: f")  # a hot hit the fast lane would answer
    assert r.status == 400 and json.loads(r.body)["error"] == "bad_host"
    r = exchange()
    assert r.status == 400 and json.loads(r.body)["error"] == "bad_host"
    assert foreign.count("/oic") == 1


def test_only_if_cached_on_a_partly_stored_object_gets_504_not_a_fetch(
        foreign: ForeignOrigin, make_chain: MakeChain) -> None:
    """RFC 9111 §5.2.1.7 for an object of which only some slices are stored: the bytes that
    are stored are served; a request needing any other slice gets 504 (it used to fetch the
    missing slices)."""
    slice_size = 256 * 1024
    chain = make_chain(foreign.url, slice_size=slice_size)
    body = pattern(3 * slice_size, seed=13)
    foreign.route("/part", body=body, headers=[CACHEABLE])
    first = chain.get("/part", headers={"Range": "bytes=0-99"})  # stores slice 0 only
    assert first.status_code == 206 and first.content == body[:100]
    deadline = time.monotonic() + 5  # (its flight may still be filling slice 0)
    while not chain.get("/part", headers={"Range": "bytes=0-99"}).headers["x-cache"] \
            .startswith("HIT") and time.monotonic() < deadline:
        time.sleep(0.05)
    asked = foreign.count("/part")
    only = {"Cache-Control": "only-if-cached"}
    stored = chain.get("/part", headers={**only, "Range": "bytes=1000-1999"})
    assert stored.status_code == 206 and stored.content == body[1000:2000]
    assert stored.headers["x-cache"].startswith("HIT")
    for rng in ("bytes=600000-600099", "bytes=0-99,600000-600099", None):
        headers = {**only, "Range": rng} if rng else only
        r = chain.get("/part", headers=headers)
        assert r.status_code == 504 and r.json()["error"] == "not_cached", (rng, r.text[:200])
    assert foreign.count("/part") == asked  # no request for the missing slices
    whole = chain.get("/part")  # without the directive, they are fetched
    assert whole.status_code == 200 and whole.content == body
    assert chain.get("/part", headers=only).content == body



@pytest.mark.parametrize("etag", [None, 'W/"weak"'], ids=["no validator", "weak ETag"])
@pytest.mark.parametrize("changed", [False, True], ids=["same", "changed"])
@pytest.mark.parametrize("then", ["whole", "late range", "two ranges"])
def test_a_partly_stored_object_without_validators_is_completed_from_one_answer(
        foreign: ForeignOrigin, make_chain: MakeChain, then: str, changed: bool,
        etag: str | None) -> None:
    """An object with no strong ETag and no Last-Modified of which a range stored one slice:
    its other slices cannot be fetched by Range and spliced on (nothing says they are of the
    same representation); the answer comes whole from one answer, never cut short. A whole
    GET or a request of two ranges used to break off after its head. ``changed``: the
    origin's object changes after the first range (no validator can tell; a weak ETag may
    still answer a conditional request with 304, which says nothing of the bytes)."""
    slice_size = 256 * 1024
    chain = make_chain(foreign.url, slice_size=slice_size)
    old = pattern(3 * slice_size, seed=14)
    foreign.route("/unvalidated", body=old, headers=[CACHEABLE], etag=etag)
    deadline = time.monotonic() + 5
    while not chain.get("/unvalidated", headers={"Range": "bytes=0-99"}).headers["x-cache"] \
            .startswith("HIT") and time.monotonic() < deadline:
        time.sleep(0.05)  # slice 0 stored, the others not
    body = pattern(3 * slice_size, seed=15) if changed else old
    foreign.route("/unvalidated", body=body, headers=[CACHEABLE], etag=etag)
    if then == "whole":
        r = chain.get("/unvalidated")
        assert r.status_code == 200 and r.content == body
    elif then == "late range":
        r = chain.get("/unvalidated", headers={"Range": "bytes=600000-600099"})
        assert r.status_code == 206 and r.content == body[600000:600100]
    else:
        r = chain.get("/unvalidated", headers={"Range": "bytes=0-99,600000-600099"})
        assert r.status_code == 206
        assert body[:100] in r.content and body[600000:600100] in r.content  # one answer's
    again = chain.get("/unvalidated")
    assert again.status_code == 200 and again.content == body


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_a_range_far_past_the_end_of_an_origin_ignoring_range_is_416_at_once(
        foreign: ForeignOrigin, foreign_chain: Chain, framing: str) -> None:
    """RFC 9110 §14.2, §15.5.17: an origin may ignore Range (``python -m http.server`` does)
    and answer 200 whole. A client's range starting far past the end then asked for a slice
    number near 2**63 / slice size: the tier claimed every slice before it, one by one, and
    the node stopped answering while its memory grew without bound (found from outside).
    Now: an answer at once, the node answering all along: 416 with the length; for a
    close-delimited body, whose length is learnt only at its end, the whole body (§14.2: a
    server may ignore Range) is as right."""
    body = pattern(5000, seed=3)
    foreign.route("/small.bin", body=body, headers=[CACHEABLE], ranges=False, framing=framing)
    with _address_space_cap(2 * 1024**3):  # a regression fails here, not the machine
        _far_ranges(foreign_chain, body, framing)


@contextlib.contextmanager
def _address_space_cap(headroom: int) -> Iterator[None]:
    """This process may map at most ``headroom`` more bytes (the nodes run in its threads):
    a runaway allocation is a MemoryError in a node, and its request fails."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    cap = mapped + headroom if hard == resource.RLIM_INFINITY else min(hard, mapped + headroom)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _far_ranges(foreign_chain: Chain, body: bytes, framing: str) -> None:
    started = time.monotonic()
    for start in ("99999999999999999999999", str(2**62), str(300 * 1024**3)):
        r = foreign_chain.get("/small.bin?k=" + start, headers={"Range": f"bytes={start}-"})
        if framing == "close" and r.status_code == 200:
            assert r.content == body
        else:
            assert r.status_code == 416, (start, r.status_code, r.text[:200])
            assert r.headers["content-range"] == f"bytes */{len(body)}"
            assert r.json()["error"] == "range_not_satisfiable"
        assert foreign_chain.get("/small.bin?k=" + start).content == body
        assert foreign_chain.get("/healthz").status_code == 200
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("key", ["dGhlIHNhbXBsZSBub25jZQ==", "not-a-key"])
def test_a_websocket_upgrade_is_answered_as_a_plain_get(foreign: ForeignOrigin,
                                                        make_chain: MakeChain, key: str) -> None:
    """RFC 9110 §7.8: a server that does not switch protocols ignores Upgrade; the nodes
    serve no WebSocket. (With a WebSocket library installed, uvicorn handed the handshake to
    the app, which never completed it: a 500 in plain text, or a 400 in plain text for a bad
    key, on every path. Found from outside.)"""
    foreign_chain = make_chain(foreign.url, mode="process")  # as `edgeproxy serve` runs
    foreign.route("/ws.bin", body=b"plain bytes", headers=[CACHEABLE])
    for target, status in (("/ws.bin", 200), ("/healthz", 200)):
        answer = raw_request(foreign_chain.edge_url, (
            f"GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        assert answer.status == status, (target, answer)
        if target == "/ws.bin":
            assert answer.body == b"plain bytes"
    assert "upgrade" not in foreign.requests("/ws.bin")[0].names()


def test_an_origin_sending_part_of_a_range_is_asked_for_the_rest(
        foreign: ForeignOrigin, foreign_chain: Chain) -> None:
    """RFC 9110 §14.2: a 206 says with Content-Range what it carries. An origin that sends at
    most 300,000 bytes per range left the slices it fell short of unfilled: every answer
    reading them was cut mid-body (found from outside), and later a clear 502. Each slice is
    now finished by its flight, asking for the rest with If-Range: every range gets all its
    bytes, and the slices are stored (hits ask the origin nothing)."""
    body = pattern(3 * MiB, seed=12)
    foreign.route("/cap", body=body, headers=[CACHEABLE], range_cap=300_000, etag='"c1"')
    asked = {"bytes=0-10": body[:11], "bytes=1048576-2097151": body[MiB:2 * MiB],
             "bytes=1500000-1500010": body[1_500_000:1_500_011], "bytes=-100": body[-100:]}
    for _round in ("miss", "hit"):
        for value, want in asked.items():
            r = foreign_chain.get("/cap", headers={"Range": value})
            assert r.status_code == 206 and r.content == want, (value, r.status_code)
        if _round == "miss":
            before = foreign.count("/cap")
            assert all(req.header("if-range") == '"c1"'
                       for req in foreign.requests("/cap")[1:] if req.header("range"))
    assert foreign.count("/cap") == before  # the second round was all hits
    r = foreign_chain.get("/cap?whole=1")
    assert r.status_code == 200 and r.content == body


def test_an_origin_that_caps_ranges_of_a_varying_object_is_asked_for_the_rest(
        foreign: ForeignOrigin, foreign_chain: Chain) -> None:
    """The same capped origin, its object varying by ``Accept-Language``: the rest of a slice
    is asked for under the representation's validator. The flight compared the answer's
    version with the variant's (the validator and a hash of the Vary values), never equal, so
    nothing was asked and every range was cut after its head (found from outside)."""
    body = pattern(3 * MiB, seed=14)
    foreign.route("/capv", body=body, headers=[CACHEABLE, ("Vary", "Accept-Language")],
                  range_cap=300_000, etag='"v1"')
    asked = {"bytes=0-10": body[:11], "bytes=1048576-2097151": body[MiB:2 * MiB],
             "bytes=1500000-1500010": body[1_500_000:1_500_011]}
    lang = {"Accept-Language": "de"}
    for _round in ("miss", "hit"):
        for value, want in asked.items():
            r = foreign_chain.get("/capv", headers={"Range": value, **lang})
            assert r.status_code == 206 and r.content == want, (value, r.status_code)
        if _round == "miss":
            before = foreign.count("/capv")
    assert foreign.count("/capv") == before  # the second round was all hits


@pytest.mark.parametrize("cache_control", ["no-store", "private"])
def test_an_origin_that_caps_ranges_of_an_unstored_object_is_relayed_whole_ranges(
        foreign: ForeignOrigin, foreign_chain: Chain, cache_control: str) -> None:
    """A capping origin's object that is not stored: the flight asks from its slice's start,
    and the origin's 206 ends before the client's range does. It was announced with the
    client's range and cut where the upstream's ended, every time (found from outside); the
    client's own request is relayed instead, and whatever the 206 holds says so itself."""
    body = pattern(65536, seed=15)
    foreign.route("/capu", body=body, headers=[("Cache-Control", cache_control)],
                  range_cap=32768, etag='"u1"')
    for value in ("bytes=3965-", "bytes=40000-", "bytes=100-199"):
        r = foreign_chain.get("/capu", headers={"Range": value})
        assert r.status_code == 206, (value, r.status_code, r.text[:200])
        first, _, rest = r.headers["content-range"].removeprefix("bytes ").partition("-")
        last, _, total = rest.partition("/")
        assert total == str(len(body)) and first == value[6:].split("-")[0], r.headers
        assert r.content == body[int(first):int(last) + 1]
        assert int(r.headers["content-length"]) == len(r.content)


def test_an_origin_that_caps_ranges_and_sends_no_validator_is_asked_for_the_whole(
        foreign: ForeignOrigin, foreign_chain: Chain) -> None:
    """The same capped origin without ETag or Last-Modified: the part it sends of a slice can
    never be joined to another answer (RFC 9111 §3.4), and every range was a 502. The flight
    asks for the object whole instead, once: every range gets its bytes, later ones are hits."""
    body = pattern(3 * MiB, seed=13)
    foreign.route("/capnv", body=body, headers=[CACHEABLE], range_cap=300_000)
    asked = {"bytes=0-10": body[:11], "bytes=1048576-2097151": body[MiB:2 * MiB],
             "bytes=1500000-1500010": body[1_500_000:1_500_011], "bytes=-100": body[-100:]}
    for value, want in asked.items():
        r = foreign_chain.get("/capnv", headers={"Range": value})
        assert r.status_code == 206 and r.content == want, (value, r.status_code, r.text[:200])
        assert r.headers["content-range"].endswith(f"/{len(body)}")
    assert [req.header("range") for req in foreign.requests("/capnv")] == ["bytes=0-1048575",
                                                                           None]
    r = foreign_chain.get("/capnv")
    assert r.status_code == 200 and r.content == body
    assert foreign.count("/capnv") == 2  # the whole one answered everything since


# (origin requests: the edge's HEAD, which the shield answers from a GET of its own, then
# the edge's GET, a hit at the shield where that stored the object)
@pytest.mark.parametrize(("route", "gets"), [
    ({"headers": [CACHEABLE]}, 1),  # no validator: a HEAD's facts say nothing of a GET's bytes
    ({"headers": [CACHEABLE], "ranges": False}, 1),  # and an origin that ignores Range
    ({"headers": [("Cache-Control", "no-store")], "etag": '"n1"'}, 2),  # not stored: relayed
    ({"headers": [("Cache-Control", "private")], "etag": '"p1"'}, 2),
])
def test_a_suffix_range_of_an_unknown_object_is_a_206_whatever_its_facts(
        foreign: ForeignOrigin, foreign_chain: Chain, route: dict[str, Any], gets: int) -> None:
    """A suffix range (a player's ``bytes=-N``) of an object not stored needs its length
    first (a HEAD). Where the HEAD's facts could not be kept, the whole object was relayed
    as a 200 (3 MiB for 100 bytes asked); now the object is fetched whole, once, and the
    range is answered from that one answer (RFC 9110 §14.2), stored or not."""
    body = pattern(3 * MiB, seed=14)
    foreign.route("/suffix", body=body, **route)
    r = foreign_chain.get("/suffix", headers={"Range": "bytes=-100"})
    assert r.status_code == 206, (r.status_code, r.headers)
    assert r.headers["content-range"] == f"bytes {len(body) - 100}-{len(body) - 1}/{len(body)}"
    assert r.content == body[-100:]
    asked = [(q.method, q.header("range")) for q in foreign.requests("/suffix")]
    assert asked == [("GET", None)] * gets, asked  # whole fetches only


def test_a_part_of_a_slice_that_dies_mid_body_stores_nothing_half_written(
        foreign: ForeignOrigin, foreign_chain: Chain) -> None:
    """The origin dies in the middle of the second part of a slice: the answer under way is
    cut short (never completed), no part of the slice is stored, and once the origin is well
    the same range is fetched again, whole and right."""
    body = pattern(2 * MiB, seed=23)
    foreign.route("/dies", body=body, headers=[CACHEABLE], range_cap=300_000, etag='"d1"',
                  cut_at=450_000)
    try:
        r = foreign_chain.get("/dies", headers={"Range": "bytes=0-999999"})
        assert r.status_code >= 500, r.status_code  # no byte went out yet: an error
    except httpx.RemoteProtocolError:
        pass  # cut short after its head
    dead = foreign.count("/dies")
    foreign.route("/dies", body=body, headers=[CACHEABLE], range_cap=300_000, etag='"d1"')
    for verdict in ("MISS", "HIT"):
        r = foreign_chain.get("/dies", headers={"Range": "bytes=0-999999"})
        assert r.status_code == 206 and r.content == body[:1_000_000]
        assert r.headers["x-cache"].startswith(verdict), r.headers["x-cache"]
    assert foreign.count("/dies") - dead >= 4  # slice 0 asked for anew, in 300,000-byte parts


def test_a_whole_fetch_instead_of_a_capped_range_that_dies_stores_nothing(
        foreign: ForeignOrigin, foreign_chain: Chain) -> None:
    """The capped origin without a validator dies in the middle of the whole answer asked
    for instead: the range under way fails (an error, or cut short), nothing of it is stored,
    and once the origin is well the range is fetched again, whole and right."""
    body = pattern(2 * MiB, seed=24)
    foreign.route("/capdies", body=body, headers=[CACHEABLE], range_cap=300_000,
                  cut_at=1_200_000)
    try:
        r = foreign_chain.get("/capdies", headers={"Range": "bytes=1048576-1999999"})
        assert r.status_code >= 500, r.status_code
    except httpx.RemoteProtocolError:
        pass  # cut short after its head
    dead = foreign.count("/capdies")
    asked = ["bytes=1048576-2097151", None]  # a capped 206, then the whole instead
    assert [q.header("range") for q in foreign.requests("/capdies")] == asked
    foreign.route("/capdies", body=body, headers=[CACHEABLE], range_cap=300_000)
    for verdict in ("MISS", "HIT"):
        r = foreign_chain.get("/capdies", headers={"Range": "bytes=1048576-1999999"})
        assert r.status_code == 206 and r.content == body[MiB:2_000_000], r.status_code
        assert r.headers["x-cache"].startswith(verdict), r.headers["x-cache"]
    # the same two again: nothing of the dead answer was kept
    assert [q.header("range") for q in foreign.requests("/capdies")[dead:]] == asked


def test_an_object_changed_between_parts_of_a_slice_is_not_spliced(
        foreign: ForeignOrigin, foreign_chain: Chain) -> None:
    """The rest of a slice is asked for with If-Range: an object changed meanwhile answers
    200, and the answer under way is cut short (never v1 and v2 bytes as one complete body);
    the next request gets v2 whole."""
    v1, v2 = pattern(2 * MiB, seed=21), pattern(2 * MiB, seed=22)
    foreign.route("/moving", body=v1, headers=[CACHEABLE], range_cap=400_000, etag='"m1"',
                  pause=0.5)
    done = threading.Event()
    got: dict[str, object] = {}

    def fetch() -> None:
        try:
            got["r"] = foreign_chain.get("/moving", headers={"Range": "bytes=0-999999"})
        except httpx.HTTPError as exc:
            got["error"] = exc
        done.set()

    threading.Thread(target=fetch, daemon=True).start()
    deadline = time.monotonic() + 10
    while foreign.count("/moving") < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # the first part is paused (0.5 s) before its last 64 KiB
    foreign.route("/moving", body=v2, headers=[CACHEABLE], range_cap=400_000, etag='"m2"')
    assert done.wait(30)
    r = got.get("r")
    if r is not None:  # whole: of one version only (or an error before any byte went out)
        assert isinstance(r, httpx.Response)
        assert r.status_code >= 500 or r.content in (v1[:1_000_000], v2[:1_000_000])
    else:
        assert isinstance(got["error"], httpx.RemoteProtocolError)  # cut short, not completed
    r = foreign_chain.get("/moving", headers={"Range": "bytes=0-999999"})
    assert r.status_code == 206 and r.content == v2[:1_000_000]
