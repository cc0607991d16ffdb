"""The caching rules as tables, each row naming the RFC section or seed line it checks."""

from __future__ import annotations

import pytest

from edgeproxy.cache import fields, policy
from edgeproxy.cache.facts import contradiction
from edgeproxy.cache.req import cache_key
from edgeproxy.config import DEFAULT_CONTENT_CLASSES, ContentClass, TierTTL
from edgeproxy.http import etag_matches, if_range_matches

DAY = 86400.0
CLASSES = DEFAULT_CONTENT_CLASSES


@pytest.mark.parametrize(("path", "ctype", "expected"), [
    ("/v/t1/abc", None, "media"),                      # seed 000 cache rules: media files
    ("/v/t1/abc/thumb", None, "thumbnail"),            # seed 000: thumbnails
    ("/pp/alice", "image/jpeg", "profile_photo"),      # seed 000: profile photos
    ("/static/app.js", "text/javascript", None),       # unmatched: follows the origin
])
def test_classify(path: str, ctype: str | None, expected: str | None) -> None:
    cls = policy.classify(path, ctype, CLASSES)
    assert (cls.name if cls else None) == expected


def test_classify_by_content_type() -> None:
    classes = (ContentClass("video", content_types=("video/*",), ttl=TierTTL(1, 2)),)
    cls = policy.classify("/x", "video/mp4; codecs=avc1", classes)
    assert cls is not None and cls.name == "video"


def _classify_reference(path: str, ctype: str | None,
                        classes: tuple[ContentClass, ...]) -> ContentClass | None:
    """The rule as seed 000 states it, one glob at a time (`fnmatch.fnmatchcase`)."""
    import fnmatch
    media = (ctype or "").split(";")[0].strip().lower()
    for cc in classes:
        if any(fnmatch.fnmatchcase(path, p) for p in cc.paths):
            return cc
        if media and any(fnmatch.fnmatchcase(media, p) for p in cc.content_types):
            return cc
    return None


GLOB_CLASSES = (
    ContentClass("a", paths=("/v/t1/*/thumb", "/x/?.jpg"), content_types=("image/*",)),
    ContentClass("b", paths=("/v/[0-9]*", "/lit.(x)+", "/v/[!a-c]z", "*.m3u8")),
    ContentClass("c", content_types=("video/mp4", "audio/*")),
)


@pytest.mark.parametrize("path", [
    "/v/t1/abc/thumb", "/v/t1/a/b/thumb", "/v/t1/thumb", "/x/1.jpg", "/x/12.jpg", "/v/9",
    "/v/t1/abc", "/lit.(x)+", "/litx", "/v/dz", "/v/az", "/a/b.m3u8", "/a/b.m3u8?x",
    "/v/t1/a\nb/thumb", "", "/V/T1/A/THUMB", "/x/\n.jpg",
])
@pytest.mark.parametrize("ctype", [None, "image/png", "Video/MP4; codecs=x", "audio/ogg",
                                   "video/mp4x", "text/html"])
def test_classify_matches_the_globs_one_by_one(path: str, ctype: str | None) -> None:
    """The globs of a class are matched as one compiled pattern: the same answers as
    `fnmatch.fnmatchcase` glob by glob (the reference), first class first."""
    assert policy.classify(path, ctype, GLOB_CLASSES) is \
        _classify_reference(path, ctype, GLOB_CLASSES)


@pytest.mark.parametrize(("tier", "path", "ttl"), [
    ("edge", "/v/t1/a", 7 * DAY), ("shield", "/v/t1/a", 30 * DAY),          # seed 000 table
    ("edge", "/v/t1/a/thumb", 7 * DAY), ("shield", "/v/t1/a/thumb", 30 * DAY),
    ("edge", "/pp/bob", 1 * DAY), ("shield", "/pp/bob", 7 * DAY),
])
def test_class_ttls_per_tier(tier: str, path: str, ttl: float) -> None:
    cls = policy.classify(path, None, CLASSES)
    # a configured class wins over what the origin says
    headers = {"cache-control": "max-age=5"}
    assert policy.freshness_lifetime(tier, cls, 200, headers, negative_ttl=10) == ttl


DATE = "Sat, 21 Nov 2026 06:00:00 GMT"
LATER = "Sat, 21 Nov 2026 07:00:00 GMT"


@pytest.mark.parametrize(("headers", "lifetime", "why"), [
    ({"cache-control": "s-maxage=60, max-age=10"}, 60, "RFC 9111 §4.2.1: s-maxage first"),
    ({"cache-control": "max-age=10"}, 10, "§4.2.1 max-age"),
    ({"expires": LATER, "date": DATE}, 3600, "§4.2.1 Expires - Date"),
    ({"expires": "0", "date": DATE}, 0, "§5.3 invalid Expires means expired"),
    ({"cache-control": "no-cache, max-age=100"}, 0, "§5.2.2.4 no-cache: always revalidate"),
    ({"last-modified": "Sat, 21 Nov 2026 05:00:00 GMT", "date": DATE}, 360,
     "§4.2.2 heuristic: 10% of the time since Last-Modified"),
    ({}, 0, "no explicit or heuristic freshness"),
    ({"cache-control": "max-age=abc"}, 0, "§4.2.1: an invalid max-age means stale"),
    ({"cache-control": "max-age=\"10\""}, 10, "§5.2: quoted argument is accepted"),
    ({"expires": "Sat, 21 Nov 2026 06:00:00"}, 0, "§5.3: a date without GMT is invalid"),
])
def test_freshness_lifetime_default_class(headers: dict[str, str], lifetime: float,
                                          why: str) -> None:
    assert policy.freshness_lifetime("edge", None, 200, headers, negative_ttl=10) == lifetime, why


def test_expires_without_date_uses_the_receipt_time() -> None:
    # RFC 9110 §6.6.1: a message without Date is dated when it was received
    t = 1_795_240_800.0  # 2026-11-21 06:00:00 UTC
    assert policy.freshness_lifetime("edge", None, 200, {"expires": LATER}, negative_ttl=10,
                                     response_time=t) == 3600


@pytest.mark.parametrize(("status", "lifetime"), [
    (200, 360), (203, 360), (301, 360), (308, 360), (410, 10), (501, 360),  # §4.2.2 default
    (302, 0), (307, 0), (500, 0), (299, 0),  # not cacheable by default: no heuristic
])
def test_heuristic_freshness_by_status(status: int, lifetime: float) -> None:
    headers = {"last-modified": "Sat, 21 Nov 2026 05:00:00 GMT", "date": DATE}
    assert policy.freshness_lifetime("edge", None, status, headers,
                                     negative_ttl=10) == lifetime


def test_invalid_age_is_ignored() -> None:
    # RFC 9111 §5.1: Age is a non-negative integer; anything else is ignored
    t = 1_795_240_800.0
    for bad in ("-5", "1.5", "abc", "9" * 5000):
        assert policy.corrected_initial_age({"age": bad}, t, t) == 0


def test_negative_ttl() -> None:
    # 404 is cached briefly (issue: negative caching), shortened by an explicit max-age
    assert policy.freshness_lifetime("edge", None, 404, {}, negative_ttl=10) == 10
    assert policy.freshness_lifetime("edge", None, 404, {"cache-control": "max-age=3"},
                                     negative_ttl=10) == 3


@pytest.mark.parametrize(("status", "req_cc", "resp_cc", "auth", "explicit", "storable", "why"), [
    (200, {}, {}, False, False, True, "§3: 200 is storable"),
    (200, {}, {"no-store": None}, False, False, False, "§5.2.2.5 no-store"),
    (200, {"no-store": None}, {}, False, False, False, "§5.2.1.5 request no-store"),
    (200, {}, {"private": None}, False, False, False, "§5.2.2.7 private, shared cache"),
    (200, {}, {}, True, False, False, "§3.5 Authorization without public"),
    (200, {}, {"public": None}, True, False, True, "§3.5 public allows it"),
    (404, {}, {}, False, False, True, "negative caching"),
    (500, {}, {}, False, False, False, "500 without explicit freshness"),
    (302, {}, {}, False, False, False, "302 without explicit freshness"),
    (302, {}, {}, False, True, True, "§3: explicit freshness makes any final status storable"),
    (299, {}, {"public": None}, False, False, True, "§3: public makes it storable"),
    (301, {}, {}, False, False, True, "§4.2.2: 301 is cacheable by default"),
    (206, {}, {}, False, True, False, "§3.3: partial content is stored as slices, not whole"),
    (304, {}, {}, False, True, False, "a 304 only updates a stored response"),
])
def test_is_storable(status: int, req_cc: dict[str, str | None], resp_cc: dict[str, str | None],
                     auth: bool, explicit: bool, storable: bool, why: str) -> None:
    assert policy.is_storable(status, req_cc, resp_cc, has_authorization=auth,
                              has_explicit_freshness=explicit, has_class=False) is storable, why


def test_corrected_initial_age_counts_upstream_age() -> None:
    # RFC 9111 §4.2.3: Age from the shield plus our response delay
    headers = {"age": "100", "date": "Sat, 21 Nov 2026 06:00:00 GMT"}
    t = 1_795_240_800.0  # 2026-11-21 06:00:00 UTC
    assert policy.corrected_initial_age(headers, t, t + 2) == 102
    # the apparent age wins when larger (clock skew the other way)
    assert policy.corrected_initial_age({"date": headers["date"]}, t + 50, t + 50) == 50


def test_freshness_chain_does_not_extend() -> None:
    t = 1_795_240_800.0
    headers = {"cache-control": "max-age=60", "age": "50"}
    f = policy.freshness_for("edge", None, 200, headers, request_time=t, response_time=t,
                             negative_ttl=10)
    assert f.is_fresh(t + 9) and not f.is_fresh(t + 11)
    stale = policy.freshness_for("edge", None, 200, headers, request_time=t, response_time=t,
                                 negative_ttl=10, upstream_stale=True)
    assert stale.lifetime == 0


@pytest.mark.parametrize(("value", "expected"), [
    ("max-age=10, public", {"max-age": "10", "public": None}),
    ('private="set-cookie, x", max-age=5', {"private": "set-cookie, x", "max-age": "5"}),
    ("MAX-AGE=3, max-age=9", {"max-age": "3"}),   # §4.2.1: the first occurrence is used
    ("", {}),
])
def test_parse_cache_control(value: str, expected: dict[str, str | None]) -> None:
    assert policy.parse_cache_control(value) == expected


@pytest.mark.parametrize(("path", "query", "key"), [
    ("/v/t1/a", "", "/v/t1/a"),
    ("/x", "b=2&a=1", "/x?b=2&a=1"),  # RFC 3986 §6.2.2: query order is significant
    ("/x", "v=2&v=1", "/x?v=2&v=1"),
    ("/v/t1/a", "exp=1&sig=ab&kid=k1", "/v/t1/a"),  # seed 004: one copy for every signature
    ("/v/t1/a", "a=1&exp=1&b&sig=ab&kid=k1", "/v/t1/a?a=1&b"),
])
def test_cache_key(path: str, query: str, key: str) -> None:
    assert cache_key(path, query) == key


def test_hop_by_hop_removed() -> None:
    # RFC 9110 §7.6.1, including fields named by Connection
    headers = [("Connection", "close, X-Secret"), ("X-Secret", "1"), ("Keep-Alive", "5"),
               ("Transfer-Encoding", "chunked"), ("ETag", '"a"')]
    assert fields.forwardable(headers) == [("ETag", '"a"')]


@pytest.mark.parametrize(("inm", "etag", "match"), [
    ('"a"', '"a"', True), ('W/"a"', '"a"', True), ('"b", "a"', '"a"', True),
    ("*", '"a"', True), ("*", None, True), ('"b"', '"a"', False), ('"a"', None, False),
])
def test_if_none_match_weak_comparison(inm: str, etag: str | None, match: bool) -> None:
    assert etag_matches(inm, etag) is match  # RFC 9110 §13.1.2


@pytest.mark.parametrize(("if_range", "etag", "lm", "match"), [
    ('"a"', '"a"', None, True), ('W/"a"', 'W/"a"', None, False), ('"a"', '"b"', None, False),
    ("Sat, 21 Nov 2026 06:00:00 GMT", None, "Sat, 21 Nov 2026 06:00:00 GMT", True),
    ("Sat, 21 Nov 2026 06:00:01 GMT", None, "Sat, 21 Nov 2026 06:00:00 GMT", False),
])
def test_if_range(if_range: str, etag: str | None, lm: str | None, match: bool) -> None:
    assert if_range_matches(if_range, etag, lm) is match  # RFC 9110 §13.1.5


def test_slices() -> None:
    mib = 1024 * 1024
    assert list(policy.slice_span(90 * mib + 5, 90 * mib + 70_000, mib)) == [90]
    assert list(policy.slice_span(mib - 1, mib, mib)) == [0, 1]
    assert policy.slice_bounds(99, mib, 100 * mib - 10) == (99 * mib, 100 * mib - 11)
    assert policy.slice_count(0, mib) == 1 and policy.slice_count(mib + 1, mib) == 2


_A, _B = "a" * 64, "b" * 64
_CD_A = "sha-256=:qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqo=:"  # Content-Digest of _A


@pytest.mark.parametrize(("content_digest", "representation", "start", "body", "length",
                          "expected"), [
    # RFC 9530 §2: a 206's Content-Digest covers its partial content: checked on its own
    (_CD_A, _B, 100, 50, 1000, ((_A,), False)),
    (_CD_A, None, 100, 50, 1000, ((_A,), False)),
    # the whole representation in one message: its content address / Repr-Digest (§3) as well
    (_CD_A, _B, 0, 1000, 1000, ((_A, _B), True)),
    (None, _B, 0, 1000, 1000, ((_B,), True)),
    (None, _B, 0, 999, 1000, ((), False)),  # a part starting at 0 is not the whole
    (None, None, 0, 1000, 1000, ((), False)),  # nothing known: nothing to check
    ("sha-512=:AAAA:", None, 100, 50, 1000, ((), False)),  # no sha-256 member
    ("sha-256=:AAAA:", None, 100, 50, 1000, ((), False)),  # malformed: ignored
    (_CD_A, _B, 0, None, None, ((), False)),  # extent unknown (no Content-Length)
])
def test_body_checks(content_digest: str | None, representation: str | None, start: int,
                     body: int | None, length: int | None,
                     expected: tuple[tuple[str, ...], bool]) -> None:
    """What a fill hashes its answer's body against before the last byte goes out."""
    assert policy.body_checks(content_digest, representation, start, body, length) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("only-if-cached", True),  # RFC 9111 §5.2.1.7
    ("max-age=60, only-if-cached", True),
    ("Only-If-Cached", True),  # §5.2: directive names are case-insensitive
    ('foo="only-if-cached"', False),  # an argument, not the directive
    ("no-cache", False),
    (None, False),
])
def test_only_if_cached(value: str | None, expected: bool) -> None:
    assert policy.only_if_cached(value) is expected


@pytest.mark.parametrize(("value", "expected"), [
    ("no-store", True),  # RFC 9111 §5.2.1.5
    ("max-age=0, No-Store", True),  # §5.2: directive names are case-insensitive
    ('foo="no-store"', False),  # an argument, not the directive
    ("no-cache", False),
    (None, False),
])
def test_request_no_store(value: str | None, expected: bool) -> None:
    assert policy.request_no_store(value) is expected


@pytest.mark.parametrize(("start", "end", "length", "expected"), [
    # RFC 9110 §15.3.7: a 206 may carry fewer bytes than asked; slices of 100 bytes
    (0, 250, 1000, 1),      # slices 0 and 1 whole, slice 2 in part: kept only whole ones
    (200, 500, 1000, 4),
    (0, 1000, 1000, 9),     # all of it
    (900, 950, 950, 9),     # to the end: the last, short slice is whole
    (0, 99, 1000, None),    # not one slice whole
    (300, 350, 1000, None),
])
def test_last_whole_slice(start: int, end: int, length: int, expected: int | None) -> None:
    assert policy.last_whole_slice(start, end, length, 100) == expected


@pytest.mark.parametrize(("stored", "asked", "status", "length", "same", "contradicts", "why"), [
    (4000, 3000, 416, 3000, True, True, "RFC 9110 §15.5.17: unsatisfiable inside the length"),
    (4000, 3000, 416, None, False, True, "a 416 with no Content-Range: the same"),
    (4000, 4000, 416, 4000, True, False, "§14.1.1: a range from the end is unsatisfiable"),
    (4000, 0, 206, 5000, True, True, "§14.4: one representation, another complete length"),
    (4000, 0, 206, 5000, False, False, "another representation: a change, not a contradiction"),
    (4000, 1000, 206, 4000, True, False, "the stored length restated"),
    (None, 0, 416, 10, True, False, "no stored length to contradict"),
    (4000, 0, 200, 10, True, False, "a 200 is the whole of a representation, checked elsewhere"),
])
def test_contradiction(stored: int | None, asked: int, status: int, length: int | None,
                       same: bool, contradicts: bool, why: str) -> None:
    assert (contradiction(stored, asked, status, length, same) is not None) is contradicts, why
