"""Which fields a node sends upstream and downstream, as tables citing RFC 9110/9111."""

from __future__ import annotations

import pytest

from edgeproxy.cache import fields
from edgeproxy.cache.verdict import Verdict, x_cache
from edgeproxy.http import parse_range


def _raw(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in pairs]


def _names(raw: list[tuple[bytes, bytes]]) -> list[str]:
    return [n.decode() for n, _ in raw]


def test_fill_forwards_end_to_end_fields_and_owns_the_rest() -> None:
    raw = _raw(("host", "edge"), ("x-foo", "1"), ("accept-language", "fr"),
               ("authorization", "Bearer t"), ("connection", "x-secret"), ("x-secret", "s"),
               ("te", "trailers"), ("upgrade", "h2c"), ("proxy-authorization", "p"),
               ("range", "bytes=0-1"), ("if-none-match", '"a"'), ("if-range", '"a"'),
               ("accept-encoding", "gzip"), ("req-num", "3"), ("via", "1.1 client"))
    out = fields.fill_headers(raw, "edge")
    # §7.6.1: hop-by-hop and Connection-named fields go; the client's end-to-end fields stay
    assert _names(out) == ["x-foo", "accept-language", "authorization", "req-num",
                           "accept-encoding", "via"]
    # identity, so stored bytes are the representation ranges refer to
    assert (b"accept-encoding", b"identity") in out
    # §7.6.3: Via grows by one hop
    assert (b"via", b"1.1 client, 1.1 edgeproxy-edge") in out


def test_pass_forwards_conditionals_and_ranges_as_sent() -> None:
    raw = _raw(("host", "edge"), ("range", "bytes=0-1"), ("if-none-match", '"a"'),
               ("content-type", "text/plain"), ("keep-alive", "5"))
    out = fields.pass_headers(raw, "shield")
    assert _names(out) == ["range", "if-none-match", "content-type", "via"]


def test_pass_drops_a_range_the_node_ignores() -> None:
    """RFC 9110 §14.2: a Range the node ignores (invalid, oversized) is not forwarded on a
    pass either, nor its If-Range (§13.1.5); the other fields are."""
    raw = _raw(("range", "bytes=1 -2"), ("if-range", '"a"'), ("if-none-match", '"a"'))
    out = fields.pass_headers(raw, "shield", ranges=False)
    assert _names(out) == ["if-none-match", "via"]


@pytest.mark.parametrize(("vary", "expected"), [
    (None, ()),
    ("Accept-Encoding", ()),  # fills always ask for identity: moot
    ("Accept-Language, Accept-Encoding", ("accept-language",)),
    ("X-B,x-a", ("x-a", "x-b")),
    ("*", ("*",)),  # RFC 9110 §12.5.5: matches no request
])
def test_vary_fields(vary: str | None, expected: tuple[str, ...]) -> None:
    assert fields.vary_fields(vary) == expected


@pytest.mark.parametrize(("name", "first", "second", "same"), [
    # RFC 9111 §4.1: whitespace where the syntax allows it, lines combined (the server joins
    # repeated lines with ", ")
    ("foo", "1,2", " 1, 2 ", True), ("foo", "1, 2", "1,  2", True), ("foo", "1, 2", "2, 1", False),
    ("foo", "a  b", "a b", True), ("foo", "a b", "ab", False), ("foo", "A", "a", False),
    ("foo", '"x, y"', '"x,y"', False),  # a quoted string is one member, kept as it is
    ("foo", "1,,2", "1, 2", True),  # RFC 9110 §5.6.1: empty members do not count
    # RFC 9110 §12.5.4: Accept-Language without case or order (its q-values weigh)
    ("accept-language", "en, de", "de, en", True), ("accept-language", "en, de", "eN, De", True),
    ("accept-language", "en, de", " en ,   de", True),
    ("accept-language", "en;q=0.5, de", "de, EN ; Q=0.5", True),
    ("accept-language", "en;q=0.5, de", "en, de;q=0.5", False),
    ("accept-language", "en", "en, de", False),
    ("x-a", "", "", True),  # absent
    # a single-valued field's comma is text: the value is compared as sent (RFC 9110 §5.5)
    ("user-agent", "a/1 (X11, Linux)", "a/1 (X11,Linux)", False),
    ("user-agent", "a/1 (X11, Linux)", " a/1 (X11, Linux) ", True),
    ("user-agent", "a/1  b", "a/1 b", False),
    ("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT", "Thu,01 Jan 1970 00:00:00 GMT", False),
    ("cookie", "a=1; b=2", "a=1;b=2", False),
])
def test_vary_values_normalised(name: str, first: str, second: str, same: bool) -> None:
    values = [fields.vary_values((name,), {name: v} if v else {}) for v in (first, second)]
    assert (values[0] == values[1]) is same, values


def test_vary_star_matches_nothing() -> None:
    assert fields.vary_values(("*",), {"x": "1"}) is None  # RFC 9110 §12.5.5


@pytest.mark.parametrize(("method", "status", "invalidates"), [
    ("POST", 200, True), ("PUT", 204, True), ("DELETE", 303, True),  # §4.4 non-error
    ("POST", 405, False), ("POST", 500, False), ("PATCH", 404, False),  # errors keep it
    ("GET", 200, False), ("HEAD", 200, False), ("OPTIONS", 200, False),  # safe methods
])
def test_invalidation_after_unsafe_methods(method: str, status: int, invalidates: bool) -> None:
    assert fields.invalidates(method, status) is invalidates


@pytest.mark.parametrize(("method", "way"), [
    ("GET", "lookup"), ("HEAD", "lookup"),  # RFC 9111 §3: the methods whose answers are stored
    ("POST", "pass"), ("PUT", "pass"), ("DELETE", "pass"), ("PATCH", "pass"),
    ("OPTIONS", "pass"), ("PROPFIND", "pass"),  # RFC 9110 §9.1: any other method is relayed
    ("TRACE", "refuse"),  # never relayed: it echoes credentials back (nginx: 405)
    ("CONNECT", "refuse"),  # RFC 9110 §9.3.6: a tunnel, which a cache node is not
])
def test_route_by_method(method: str, way: str) -> None:
    assert fields.route(method) == way


def test_invalidated_paths_same_origin_only() -> None:
    # §4.4: Location and Content-Location too, but only on the same origin (DoS otherwise)
    got = fields.invalidated_paths("/a?x=1", "edge:80", {
        "location": "/b", "content-location": "http://other.example/c"})
    assert got == ["/a?x=1", "/b"]
    got = fields.invalidated_paths("/a", "edge:80", {"location": "http://edge:80/d?q"})
    assert got == ["/a", "/d?q"]


def test_not_modified_fields() -> None:
    # RFC 9110 §15.4.5: a 304 carries the validator and caching fields, not the body's
    headers = [("content-type", "text/plain"), ("etag", '"a"'), ("cache-control", "max-age=1"),
               ("content-encoding", "gzip"), ("vary", "x"), ("x-cache", "HIT from edge")]
    assert fields.not_modified_headers(headers) == [
        ("etag", '"a"'), ("cache-control", "max-age=1"), ("vary", "x"),
        ("x-cache", "HIT from edge")]


@pytest.mark.parametrize(("verdict", "upstream", "expected"), [
    (Verdict.HIT, "MISS from shield", "HIT from edge"),  # a hit names only this node
    (Verdict.MISS, "HIT from shield", "MISS from edge, HIT from shield"),
    (Verdict.MISS, None, "MISS from edge"),
    (Verdict.PASS, "PASS from shield", "PASS from edge, PASS from shield"),
    (Verdict.REVALIDATED, "HIT from shield", "REVALIDATED from edge, HIT from shield"),
])
def test_x_cache(verdict: Verdict, upstream: str | None, expected: str) -> None:
    assert x_cache(verdict, "edge", upstream) == expected


def test_via_names_the_node() -> None:
    # RFC 9110 §7.6.3: each hop appends itself; a node_name setting names this node
    assert fields.via(None, "edge-ams-1") == "1.1 edgeproxy-edge-ams-1"
    assert fields.via("1.1 edgeproxy-shield-eu", "edge-ams-1") == \
        "1.1 edgeproxy-shield-eu, 1.1 edgeproxy-edge-ams-1"
    assert x_cache(Verdict.HIT, "edge-ams-1") == "HIT from edge-ams-1"


_SHA_A = "a" * 64  # the representation's SHA-256 (a content address, or Repr-Digest)
_UP = "sha-256=:upstream-value:"  # an upstream Content-Digest, passed on as received


@pytest.mark.parametrize(("content", "length", "representation", "upstream", "expected"), [
    # §2: the digest covers this message's content; the upstream's value goes on only with the
    # very bytes it came with (a 206 served from the fill of exactly that range)
    ((100, 199), 1000, None, (100, 199, _UP), _UP),
    ((0, 999), 1000, None, (0, 999, _UP), _UP),  # a 200 from the fill of the whole body
    # another range of the same representation has other content: never replayed
    ((100, 149), 1000, None, (100, 199, _UP), None),
    ((150, 199), 1000, _SHA_A, (100, 199, _UP), None),
    ((0, 999), 1000, None, (0, 499, _UP), None),
    # a range assembled from stored slices: no upstream message to vouch for it, and the
    # representation's digest is not the range's (§2 vs §3), so none rather than a stale one
    ((100, 199), 1000, _SHA_A, None, None),
    ((0, 998), 1000, _SHA_A, None, None),
    # the whole representation in one message: its content digest is the representation's
    ((0, 999), 1000, _SHA_A, None, "sha-256=:qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqo=:"),
    ((0, -1), 0, _SHA_A, None, "sha-256=:qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqo=:"),
    ((0, 999), 1000, None, None, None),  # nothing known: nothing said
    ((0, 999), None, _SHA_A, None, None),  # length unknown: cannot tell it is whole
    # no content (HEAD, 304) or not one span (multipart/byteranges): none
    (None, 1000, _SHA_A, (0, 999, _UP), None),
])
def test_content_digest_never_replayed_on_other_content(
        content: tuple[int, int] | None, length: int | None, representation: str | None,
        upstream: tuple[int, int, str] | None, expected: str | None) -> None:
    """RFC 9530 §2: Content-Digest is computed over the content of one message (for a 206,
    the partial content), so a cache sends one only when it vouches for exactly that."""
    assert fields.content_digest(content, length, representation, upstream) == expected


@pytest.mark.parametrize(("vary", "stored", "headers", "expected"), [
    # RFC 9111 §4.1: a response that varies is used only for requests whose fields match
    ((), (), {"accept-language": "fr"}, True),
    (("accept-language",), ("de",), {"accept-language": "de"}, True),
    (("accept-language",), ("de",), {"accept-language": "fr"}, False),
    (("accept-language",), ("",), {}, True),  # both without the field
    (("accept-language",), ("de",), {}, False),
    (("*",), None, {}, False),  # Vary: * matches no request
])
def test_selects(vary: tuple[str, ...], stored: tuple[str, ...] | None,
                 headers: dict[str, str], expected: bool) -> None:
    assert fields.selects(vary, stored, headers) is expected


LM1 = "Mon, 07 Dec 2026 07:00:00 GMT"
LM0 = "Sun, 06 Dec 2026 07:00:00 GMT"


@pytest.mark.parametrize(("stored_etag", "stored_lm", "etag", "lm", "updates"), [
    ('"a"', LM1, '"a"', LM1, True),  # §4.3.4: the same strong validator
    ('W/"a"', None, 'W/"a"', None, True),  # a weak one that matches
    ('W/"a"', None, '"a"', None, True),  # (compared weakly)
    ('"a"', LM1, '"b"', LM1, False),  # another entity tag
    (None, LM1, '"b"', LM0, False),  # an entity tag the stored copy has not
    (None, LM1, None, LM0, False),  # another Last-Modified (one gone back in time)
    (None, LM1, None, "Monday, 07-Dec-26 07:00:00 GMT", True),  # the same date, spelt otherwise
    (None, None, None, LM1, False),
    ('"a"', LM1, None, None, True),  # no validator at all: taken as it comes
])
def test_a_304_updates_the_stored_response_its_validators_select(
        stored_etag: str | None, stored_lm: str | None, etag: str | None, lm: str | None,
        updates: bool) -> None:
    assert fields.updates_stored(stored_etag, stored_lm, etag, lm) is updates


@pytest.mark.parametrize(("value", "start", "body", "length", "expected"), [
    # RFC 9110 §15.3.7: a 206 may carry fewer bytes than asked (an origin capping ranges)
    ("bytes=3965-", 0, 32768, 65536, False),  # bytes 0-32767 of 65536 for 3965-65535
    ("bytes=3965-", 0, 65536, 65536, True),
    ("bytes=3965-9999", 0, 32768, 65536, True),
    ("bytes=40000-40010", 0, 32768, 65536, False),
    ("bytes=0-9,40000-40010", 0, 32768, 65536, False),  # every range must be held
    ("bytes=0-9,100-109", 0, 32768, 65536, True),
    ("bytes=-100", 0, 32768, 65536, False),  # a suffix: the last 100 bytes
    ("bytes=70000-", 0, 32768, 65536, True),  # unsatisfiable: a 416 from the length alone
    (None, 0, 65536, 65536, True),  # the whole, held whole
    (None, 0, 32768, 65536, False),
    ("bytes=0-9", 0, 10, None, False),  # no complete length: nothing to tell by
])
def test_holds_ranges(value: str | None, start: int, body: int, length: int | None,
                      expected: bool) -> None:
    assert fields.holds_ranges(parse_range(value), start, body, length) is expected
