"""Canonical request targets (RFC 3986) by table and by property."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.errors import HTTPError
from edgeproxy.target import _normalize_escapes, canonical_path


@pytest.mark.parametrize(("raw", "expected"), [
    (b"/", "/"),
    (b"/v/t1/abc", "/v/t1/abc"),
    (b"/v/t1/abc/thumb", "/v/t1/abc/thumb"),
    # §5.2.4 remove_dot_segments, and its examples in §5.4.1/§5.4.2
    (b"/v/./t1/abc", "/v/t1/abc"),
    (b"/x/../v/t1/abc", "/v/t1/abc"),
    (b"/a/b/c/./../../g", "/a/g"),          # §5.2.4's own example
    (b"/mid/content=5/../6", "/mid/6"),     # §5.2.4's own example
    (b"/a/b/.", "/a/b/"),
    (b"/a/b/..", "/a/"),
    (b"/a/b/../", "/a/"),
    (b"/a/.b/..c/c.", "/a/.b/..c/c."),      # not dot segments
    (b"/.well-known/x", "/.well-known/x"),
    # §5.2.4 step 2C: ".." at the root stays at the root (clamped, not an error)
    (b"/..", "/"), (b"/../../a", "/a"), (b"/a/../../b", "/b"),
    # §2.3 / §6.2.2.2: "%2e" is an unreserved "." and is decoded before dot removal
    (b"/v/%2e/t1/abc", "/v/t1/abc"), (b"/v/%2E%2e/t1", "/t1"), (b"/v/.%2E/t1", "/t1"),
    (b"/%2e%2e/%2e%2e/v", "/v"),
    # §6.2.2.2: escapes of unreserved characters are decoded
    (b"/%41%7a%30%2d%5f%7e", "/Az0-_~"),
    # §6.2.2.1: other escapes keep their meaning, hex upper-cased
    (b"/a%3fb%23c%3a%20%25", "/a%3Fb%23c%3A%20%25"), (b"/%c3%a9", "/%C3%A9"),
    # characters not allowed verbatim in a path (§3.3) are percent-encoded
    (b"/a b", "/a%20b"), (b"/a\"<>\\^`{|}", "/a%22%3C%3E%5C%5E%60%7B%7C%7D"),
    ("/\u00e9".encode(), "/%C3%A9"),
    # sub-delims, ":" and "@" are pchars (§3.3): kept verbatim
    (b"/a!$&'()*+,;=:@b", "/a!$&'()*+,;=:@b"),
    # empty segments are not dot segments: kept (§5.2.4 only removes "." and "..")
    (b"/a//b", "/a//b"), (b"/a/.//b", "/a//b"),
    # RFC 9112 §3.2.2 absolute form: reduced to its path
    (b"http://host:8080/a/./b", "/a/b"), (b"HTTPS://host", "/"),
])  # fmt: skip
def test_canonical(raw: bytes, expected: str) -> None:
    assert canonical_path(raw) == expected


@pytest.mark.parametrize("raw", [
    b"/v/t1%2fabc", b"/%2F",                 # encoded "/" would change the segments
    b"/%00", b"/a\x00b",                     # NUL, encoded or raw
    b"/%0d%0aSet-Cookie:x", b"/a\r\nb", b"/%0A", b"/a\nb",  # CR/LF, encoded or raw
    b"/a\tb", b"/\x7f",                       # other raw control characters
    b"/%", b"/%4", b"/%zz", b"/%4g", b"/a%%41",  # malformed escapes (§2.1)
    b"*", b"", b"a/b", b"host:80", b"ftp://x/y",  # not a path (asterisk, authority form...)
])  # fmt: skip
def test_refused(raw: bytes) -> None:
    with pytest.raises(HTTPError) as info:
        canonical_path(raw)
    assert (info.value.status, info.value.error) == (400, "bad_target")


def reference_remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 as written: the input-buffer loop, for comparison."""
    inp, out = path, ""
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):
            inp = "/" + inp[3:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp = "/" + inp[4:]
            out = out[: out.rfind("/")] if "/" in out else ""
        elif inp == "/..":
            inp = "/"
            out = out[: out.rfind("/")] if "/" in out else ""
        elif inp in (".", ".."):
            inp = ""
        else:
            start = 1 if inp.startswith("/") else 0
            end = inp.find("/", start)
            end = len(inp) if end == -1 else end
            out, inp = out + inp[:end], inp[end:]
    return out


segment = st.one_of(
    st.sampled_from([".", "..", "%2e", "%2E%2e", ".%2e", "", "a", "%41", "%7e", "%3a", "%C3%A9"]),
    st.text(alphabet="abc.-_~%2eAF0:@!", max_size=6),
)
paths = st.lists(segment, min_size=1, max_size=8).map(lambda s: ("/" + "/".join(s)).encode())
any_bytes = st.binary(max_size=40).map(lambda b: b"/" + b)
UNRESERVED_ESCAPE = re.compile(r"%(?:[46][1-9A-F]|[57][0-9A]|3[0-9]|2D|2E|5F|7E)", re.IGNORECASE)


@given(st.one_of(paths, any_bytes))
def test_properties(raw: bytes) -> None:
    try:
        once = canonical_path(raw)
    except HTTPError as exc:  # the only failure allowed: a 400
        assert (exc.status, exc.error) == (400, "bad_target")
        return
    assert canonical_path(once.encode()) == once  # idempotent
    assert once.startswith("/")
    segments = once.split("/")
    assert "." not in segments and ".." not in segments  # no dot segment survives
    assert not UNRESERVED_ESCAPE.search(once)  # no decodable unreserved escape
    assert all(c.isascii() and c.isprintable() and c != " " for c in once)
    # the same as §5.2.4's buffer loop on the escape-normalised input: "//" only where the
    # input had an empty segment, never one created by removing dots
    assert once == reference_remove_dot_segments(_normalize_escapes(raw))
