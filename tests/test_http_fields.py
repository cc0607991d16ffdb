"""Field-value grammar shared by every role: HTTP-dates, lists, Structured Field dictionaries,
and CDN-Cache-Control targeting, as tables citing their RFC sections."""

from __future__ import annotations

import pytest

from edgeproxy.cache import policy
from edgeproxy.http import first_member, http_date, not_modified, sf_dictionary

T = 2544400878.0  # Thu, 18 Aug 2050 02:01:18 GMT


@pytest.mark.parametrize(("value", "expected"), [
    ("Thu, 18 Aug 2050 02:01:18 GMT", T),  # RFC 9110 §5.6.7 IMF-fixdate
    ("Thursday, 18-Aug-50 02:01:18 GMT", T),  # obsolete RFC 850 form
    ("Thu Aug 18 02:01:18 2050", T),  # asctime
    ("Thu Aug  8 02:01:18 2050", T - 10 * 86400),  # asctime pads the day with a space
    ("thu, 18 aug 2050 02:01:18 gmt", T),  # another case: accepted, as deployed caches do
    ("THURSDAY, 18-AUG-50 02:01:18 GMT", T),
    ("Thu, 18 Aug 2050 02:01:18 UTC", None),  # only GMT
    ("18 Aug 50", None), ("Thu 18 Aug 2050 02:01:18 GMT", None),
    ("Thu, 18  Aug  2050 02:01:18 GMT", None), ("Thu, 18-Aug-2050 02:01:18 GMT", None),
    ("Thu, 18 Aug 2050 02.01.18 GMT", None), ("Thu, 18 Aug 2050 2:01:18 GMT", None),
    ("0", None), ("", None), (None, None), ("Thu, 32 Aug 2050 02:01:18 GMT", None),
])
def test_http_date(value: str | None, expected: float | None) -> None:
    assert http_date(value) == expected


def test_first_member_of_a_list_valued_age() -> None:
    assert first_member("7200, 0") == "7200"  # RFC 9111 §5.1
    assert first_member(None) is None


@pytest.mark.parametrize(("value", "expected"), [
    ("max-age=10", {"max-age": "10"}),  # RFC 8941 §3.2
    ("no-store", {"no-store": None}),
    ("private, max-age=5;foo=bar", {"private": None, "max-age": "5"}),
    ('a="quoted", b=?1, c=1.5, d=:AAE=:', {"a": '"quoted"', "b": "?1", "c": "1.5",
                                           "d": ":AAE=:"}),
    ("Max-Age=10", None),  # keys are lower case
    ("max-age=@", None), ("max-age=1234567890123456", None),  # not an item / too long
])
def test_sf_dictionary(value: str, expected: dict[str, str | None] | None) -> None:
    assert sf_dictionary(value) == expected


@pytest.mark.parametrize(("headers", "cache_control", "has_expires"), [
    ({"cache-control": "no-store", "cdn-cache-control": "max-age=100"}, "max-age=100", False),
    ({"cache-control": "max-age=1", "cdn-cache-control": "no-store"}, "no-store", False),
    ({"cache-control": "max-age=1", "expires": "x", "cdn-cache-control": "max-age=@"},
     "max-age=1", True),  # RFC 9213 §2.1: an invalid field is ignored
    ({"cache-control": "max-age=1", "expires": "x"}, "max-age=1", True),
    # a directive of the wrong type is ignored, the rest of the field applies
    ({"cache-control": "max-age=1", "cdn-cache-control": 'max-age="10000", private'},
     "private", False),
])
def test_cdn_cache_control_targets_this_cache(headers: dict[str, str], cache_control: str,
                                              has_expires: bool) -> None:
    got = policy.targeted(headers)
    assert got["cache-control"] == cache_control
    assert ("expires" in got) is has_expires


def test_if_modified_since_against_date_without_last_modified() -> None:
    # RFC 9111 §4.3.2: with no Last-Modified stored, the stored Date stands in
    date = "Thu, 18 Aug 2050 02:01:18 GMT"
    later = {"if-modified-since": "Thu, 18 Aug 2050 03:00:00 GMT"}
    assert not_modified(later, None, None, date)
    assert not not_modified({"if-modified-since": "Thu, 18 Aug 2050 01:00:00 GMT"}, None, None,
                            date)
