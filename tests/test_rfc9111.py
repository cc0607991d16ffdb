"""edge → shield as a shared HTTP cache (RFC 9111), against the scriptable foreign origin.

"Stored and fresh" is observed from outside: a second identical request is answered by the edge
(``X-Cache: HIT from edge``) and the origin's request count does not move. "Not reused" means
the second request reaches the origin. Each test names the section it checks.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate

import httpx
import pytest

from tests.chain import Chain
from tests.foreign import ForeignOrigin

NOW = time.time()
TEN_DAYS_AGO = NOW - 10 * 86400
LM = formatdate(TEN_DAYS_AGO, usegmt=True)


def http_date(offset: float) -> str:
    """An HTTP-date ``offset`` seconds from now."""
    return formatdate(time.time() + offset, usegmt=True)


def twice(foreign: ForeignOrigin, chain: Chain, target: str = "/x",
          **headers: str) -> tuple[int, str]:
    """GET ``target`` twice; the origin's request count and the second X-Cache."""
    first = chain.get(target, headers=headers)
    second = chain.get(target, headers=headers)
    assert first.status_code == second.status_code
    assert first.content == second.content
    return foreign.count(target), second.headers.get("x-cache", "")


def assert_reused(foreign: ForeignOrigin, chain: Chain, target: str = "/x") -> None:
    count, x_cache = twice(foreign, chain, target)
    assert (count, x_cache) == (1, "HIT from edge")


def assert_not_reused(foreign: ForeignOrigin, chain: Chain, target: str = "/x") -> None:
    count, _x_cache = twice(foreign, chain, target)
    assert count == 2


# --- §4.2.2 heuristic freshness --------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501])
def test_heuristic_freshness_for_cacheable_by_default_statuses(
        foreign: ForeignOrigin, foreign_chain: Chain, status: int) -> None:
    """RFC 9111 §4.2.2 with RFC 9110 §15.1 (heuristically cacheable statuses): Last-Modified
    ten days ago and no explicit expiry makes the response fresh for a while (10 % rule)."""
    foreign.route("/x", status=status, body=b"" if status == 204 else b"heuristic",
                  last_modified=TEN_DAYS_AGO)
    assert_reused(foreign, foreign_chain)


@pytest.mark.parametrize("status", [302, 307, 403, 500])
def test_no_heuristic_freshness_for_other_statuses(foreign: ForeignOrigin,
                                                   foreign_chain: Chain, status: int) -> None:
    """RFC 9111 §4.2.2: only heuristically cacheable statuses get a heuristic lifetime."""
    foreign.route("/x", status=status, body=b"not cacheable by default",
                  last_modified=TEN_DAYS_AGO)
    assert_not_reused(foreign, foreign_chain)


# --- §5.3 Expires, §4.2.3 Age and Date, §4.2.1 ---------------------------------------------


@pytest.mark.parametrize("expires, fresh", [
    ("0", False),  # §5.3: an invalid date means already expired
    ("not a date", False),
    ("Thu, 01 Jan 1970 00:00:00 GMT", False),
    ("in an hour", True),
    ("an hour ago", False),
], ids=["zero", "garbage", "epoch", "future", "past"])
def test_expires(foreign: ForeignOrigin, foreign_chain: Chain, expires: str,
                 fresh: bool) -> None:
    """RFC 9111 §5.3 and §4.2.1 (Expires minus Date); Last-Modified is present too, and an
    Expires field, even invalid, rules out the heuristic (§4.2.2)."""
    value = {"in an hour": http_date(3600), "an hour ago": http_date(-3600)}.get(expires, expires)
    foreign.route("/x", body=b"expires", last_modified=TEN_DAYS_AGO,
                  headers=[("Expires", value)])
    (assert_reused if fresh else assert_not_reused)(foreign, foreign_chain)


def test_max_age_overrides_expires(foreign: ForeignOrigin, foreign_chain: Chain) -> None:
    """RFC 9111 §5.3: with max-age present, Expires is ignored."""
    foreign.route("/x", body=b"max-age wins",
                  headers=[("Cache-Control", "max-age=3600"), ("Expires", http_date(-3600))])
    assert_reused(foreign, foreign_chain)


@pytest.mark.parametrize("headers, fresh", [
    ([("Age", "7200")], False),  # older than max-age on arrival
    ([("Age", "60")], True),
    ([("Date", "two minutes ago")], True),  # apparent age 120 s < 3600 s
    ([("Date", "two hours ago")], False),  # apparent age 7200 s > 3600 s
], ids=["age-7200", "age-60", "date-2m", "date-2h"])
def test_age_and_date(foreign: ForeignOrigin, foreign_chain: Chain,
                      headers: list[tuple[str, str]], fresh: bool) -> None:
    """RFC 9111 §4.2.3: current age counts the Age received and the apparent age (now - Date);
    the edge continues from the shield's age rather than restarting at 0."""
    dates = {"two minutes ago": http_date(-120), "two hours ago": http_date(-7200)}
    headers = [(n, dates.get(v, v)) for n, v in headers]
    foreign.route("/x", body=b"aged", headers=[("Cache-Control", "max-age=3600"), *headers])
    (assert_reused if fresh else assert_not_reused)(foreign, foreign_chain)
    if fresh:
        age = int(foreign_chain.get("/x").headers["age"])
        assert age >= (60 if headers[0][0] == "Age" else 120)


@pytest.mark.parametrize("cache_control, fresh", [
    ("max-age=0, s-maxage=3600", True),
    ("max-age=3600, s-maxage=0", False),
    ("s-maxage=3600", True),
])
def test_s_maxage_wins_in_a_shared_cache(foreign: ForeignOrigin, foreign_chain: Chain,
                                         cache_control: str, fresh: bool) -> None:
    """RFC 9111 §5.2.2.10 and §4.2.1: a shared cache uses s-maxage over max-age."""
    foreign.route("/x", body=b"shared", headers=[("Cache-Control", cache_control)])
    (assert_reused if fresh else assert_not_reused)(foreign, foreign_chain)


# --- §5.2.2 response directives -------------------------------------------------------------


@pytest.mark.parametrize("cache_control", [
    "max-age=3600, private",  # §5.2.2.7
    "s-maxage=3600, private",
    "max-age=3600, no-store",  # §5.2.2.5
    "public, max-age=3600, no-store",
])
def test_private_and_no_store_are_not_stored(foreign: ForeignOrigin, foreign_chain: Chain,
                                             cache_control: str) -> None:
    """RFC 9111 §5.2.2.5 (no-store) and §5.2.2.7 (private): a shared cache must not store."""
    foreign.route("/x", body=b"not for you", etag='"p"', headers=[("Cache-Control",
                                                                  cache_control)])
    assert_not_reused(foreign, foreign_chain)
    # Nothing stored means no validator to send either.
    assert foreign.requests("/x")[1].header("if-none-match") is None


@pytest.mark.parametrize("cache_control", ["no-cache", "max-age=3600, no-cache"])
def test_no_cache_is_stored_but_revalidated(foreign: ForeignOrigin, foreign_chain: Chain,
                                            cache_control: str) -> None:
    """RFC 9111 §5.2.2.4: stored, but every reuse is validated first (a 304 here)."""
    foreign.route("/x", body=b"validate me", etag='"nc1"',
                  headers=[("Cache-Control", cache_control)])
    count, _x_cache = twice(foreign, foreign_chain)
    assert count == 2
    assert foreign.requests("/x")[1].header("if-none-match") == '"nc1"'


@pytest.mark.parametrize(("status", "cache_control"),
                         [(404, "no-cache"), (410, "no-cache"), (404, "max-age=60, no-cache")])
def test_a_negative_answer_with_no_cache_is_not_reused(
        foreign: ForeignOrigin, foreign_chain: Chain, status: int, cache_control: str) -> None:
    """RFC 9111 §5.2.2.4: ``no-cache`` holds for a 404/410 as for a 200; the short
    ``negative_ttl`` is a heuristic (§4.2.2) and must not make it fresh. The resource that
    then appears is served at once, from both tiers."""
    foreign.route("/x", status=status, body=b"not here",
                  headers=[("Cache-Control", cache_control)])
    assert foreign_chain.get("/x").status_code == status
    foreign.route("/x", body=b"here now", headers=[("Cache-Control", "max-age=60")])
    r = foreign_chain.get("/x")
    assert (r.status_code, r.content) == (200, b"here now")
    assert foreign.count("/x") == 2


@pytest.mark.parametrize("directive", ["must-revalidate", "proxy-revalidate"])
def test_stale_must_not_be_served_when_revalidation_fails(
        foreign: ForeignOrigin, foreign_chain: Chain, directive: str) -> None:
    """RFC 9111 §5.2.2.2 / §5.2.2.8: once stale, not reused without successful validation;
    an origin error is relayed (or 504), never the stale copy (§4.2.4 is overridden)."""
    foreign.route("/x", body=b"old", etag='"mr"',
                  headers=[("Cache-Control", f"max-age=1, {directive}")])
    assert foreign_chain.get("/x").content == b"old"
    time.sleep(1.3)
    foreign.route("/x", status=503, body=b"origin down")
    r = foreign_chain.get("/x")
    assert r.status_code in (503, 504)
    assert r.content != b"old"


@pytest.mark.parametrize("status", [404, 500])
def test_a_stored_error_is_fetched_anew_not_revalidated(
        foreign: ForeignOrigin, foreign_chain: Chain, status: int) -> None:
    """RFC 9110 §15.4.5 and §13.2.1: a 304 says the answer would have been a 200, and
    preconditions hold for 2xx answers only. A stored error with an entity tag is refetched
    without it once stale: the resource, now a 200 under the same (weak) tag, is served as
    that 200, not as the error freshened by a 304 (served on, 4xx/5xx, from both tiers)."""
    foreign.route("/x", status=status, body=b"error page", etag='W/"t1"',
                  headers=[("Cache-Control", "max-age=1")])
    first = foreign_chain.get("/x")
    assert (first.status_code, first.content) == (status, b"error page")
    time.sleep(1.3)
    foreign.route("/x", body=b"the resource", etag='W/"t1"',
                  headers=[("Cache-Control", "max-age=60")])
    for _ in range(2):
        r = foreign_chain.get("/x")
        assert (r.status_code, r.content) == (200, b"the resource")
    assert not [q for q in foreign.requests("/x") if q.header("if-none-match")]


@pytest.mark.parametrize("etag", ['"e2"', None])
def test_a_304_of_another_representation_updates_nothing(
        foreign: ForeignOrigin, foreign_chain: Chain, etag: str | None) -> None:
    """RFC 9111 §4.3.4: a 304 whose validators are not the stored response's MUST NOT update
    it. The object is replaced by one whose Last-Modified is older (a file restored from a
    backup), so the origin answers the cache's If-Modified-Since with 304 and the new fields:
    the new bytes are served with them, not the old bytes under the new ETag and date (which
    a client resuming with If-Range would then splice onto the new representation)."""
    now = time.time()
    foreign.route("/x", body=b"A" * 1000, last_modified=now - 10,
                  headers=[("Cache-Control", "max-age=1")])
    assert foreign_chain.get("/x").content == b"A" * 1000
    time.sleep(1.3)
    foreign.route("/x", body=b"B" * 2000, etag=etag, last_modified=now - 100_000,
                  headers=[("Cache-Control", "max-age=60")])
    for _ in range(2):
        r = foreign_chain.get("/x")
        assert (r.status_code, r.content) == (200, b"B" * 2000)
        assert r.headers.get("etag") == etag
        assert r.headers["last-modified"] == formatdate(now - 100_000, usegmt=True)


# --- §4.1 Vary ----------------------------------------------------------------------------------


def test_vary_selects_the_matching_response(foreign: ForeignOrigin,
                                            foreign_chain: Chain) -> None:
    """RFC 9111 §4.1: a stored response is reused only for requests whose Vary-named fields
    match; another Accept-Language never gets the first language's answer."""
    foreign.route("/x", echo=True, headers=[("Cache-Control", "max-age=3600"),
                                            ("Vary", "Accept-Language")])
    for lang in ("en", "fr", "en", "fr", "de"):
        r = foreign_chain.get("/x", headers={"Accept-Language": lang})
        assert r.status_code == 200
        assert r.json()["accept-language"] == lang


def test_vary_keeps_variants_side_by_side(foreign: ForeignOrigin,
                                          foreign_chain: Chain) -> None:
    """RFC 9111 §4.1: several stored responses for one URI, selected by the Vary-named field."""
    foreign.route("/x", echo=True, headers=[("Cache-Control", "max-age=3600"),
                                            ("Vary", "Accept-Language")])
    for lang in ("en", "fr", "en", "fr"):
        foreign_chain.get("/x", headers={"Accept-Language": lang})
    assert foreign.count("/x") == 2
    r = foreign_chain.get("/x", headers={"Accept-Language": "fr"})
    assert r.json()["accept-language"] == "fr" and r.headers["x-cache"] == "HIT from edge"


def test_a_variant_joining_another_variants_revalidation_is_not_failed(
        foreign: ForeignOrigin, foreign_chain: Chain) -> None:
    """RFC 9111 §4.1/§4.3.4: a suffix range for a variant not stored yet, sent while another
    variant is revalidated (a 304, no body): the new variant's slice was joined to that
    revalidation's fill, which ended bodiless, and the request failed with a 502. It is now
    answered from the variant's own bytes."""
    with ThreadPoolExecutor(4) as pool:
        for n in range(8):
            target = f"/v{n}"
            foreign.route(target, body=b"0123456789", etag='"v1"',
                          headers=[("Cache-Control", "max-age=0"), ("Vary", "Accept-Language")])
            assert foreign_chain.get(target).status_code == 200
            asks = [{}, {}, {"Range": "bytes=-1", "Accept-Language": "fr"}]
            answers = list(pool.map(
                lambda h, t=target: httpx.get(foreign_chain.edge_url + t, headers=h), asks))
            assert [r.status_code for r in answers[:2]] == [200, 200]
            assert (answers[2].status_code, answers[2].content) in ((206, b"9"),
                                                                    (200, b"0123456789"))


def test_vary_star_never_matches(foreign: ForeignOrigin, foreign_chain: Chain) -> None:
    """RFC 9111 §4.1: ``Vary: *`` always fails to match."""
    foreign.route("/x", body=b"star", headers=[("Cache-Control", "max-age=3600"),
                                               ("Vary", "*")])
    assert_not_reused(foreign, foreign_chain)


# --- §3.5 Authorization ---------------------------------------------------------------------------


@pytest.mark.parametrize("cache_control, stored", [
    ("max-age=3600", False),
    ("public, max-age=3600", True),
    ("s-maxage=3600", True),
    ("max-age=3600, must-revalidate", True),
])
def test_authorization(foreign: ForeignOrigin, foreign_chain: Chain, cache_control: str,
                       stored: bool) -> None:
    """RFC 9111 §3.5: a response to a request with Authorization is stored by a shared cache
    only when ``public``, ``s-maxage`` or ``must-revalidate`` allows it."""
    foreign.route("/x", body=b"for alice", headers=[("Cache-Control", cache_control)])
    auth = {"Authorization": "Bearer alice"}
    count, x_cache = twice(foreign, foreign_chain, **auth)
    assert foreign.requests("/x")[0].header("authorization") == "Bearer alice"
    if stored:
        assert (count, x_cache) == (1, "HIT from edge")
    else:
        assert count == 2
        foreign_chain.get("/x")  # anonymous: must not be served alice's copy from a cache
        assert foreign.count("/x") == 3


# --- §4.4 invalidation ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 403, 405, 500])
def test_unsafe_request_answered_with_an_error_does_not_invalidate(
        foreign: ForeignOrigin, foreign_chain: Chain, status: int) -> None:
    """RFC 9111 §4.4: invalidation follows only a non-error response to an unsafe method."""
    foreign.route("/x", body=b"cached", headers=[("Cache-Control", "max-age=3600")])
    foreign.route("/x", method="POST", status=status, body=b"no")
    assert foreign_chain.get("/x").content == b"cached"
    r = foreign_chain.request("POST", "/x", content=b"data")
    assert r.status_code == status
    r = foreign_chain.get("/x")
    assert r.content == b"cached" and r.headers["x-cache"] == "HIT from edge"
    assert foreign.count("/x") == 1


@pytest.mark.parametrize("method, status", [("POST", 200), ("POST", 303), ("PUT", 201),
                                            ("DELETE", 204)])
def test_unsafe_request_answered_with_success_invalidates_both_tiers(
        foreign: ForeignOrigin, foreign_chain: Chain, method: str, status: int) -> None:
    """RFC 9111 §4.4: the target URI is invalidated at every cache the request passed, and
    (MAY) the Location and Content-Location URIs of the same origin too."""
    for target in ("/x", "/loc", "/cl"):
        foreign.route(target, body=b"cached " + target.encode(),
                      headers=[("Cache-Control", "max-age=3600")])
        assert foreign_chain.get(target).status_code == 200
    foreign.route("/x", method=method, status=status, body=b"" if status == 204 else b"done",
                  headers=[("Location", "/loc"), ("Content-Location", "/cl")])
    r = foreign_chain.request(method, "/x", content=b"data")
    assert r.status_code == status
    for target in ("/x", "/loc", "/cl"):
        r = foreign_chain.get(target)
        assert r.content == b"cached " + target.encode()
        assert "HIT" not in r.headers["x-cache"], target  # neither tier kept it
        assert foreign.count(target) == 2, target
