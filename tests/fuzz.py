"""A hypothesis fuzz of request lines, headers and Range against any role serving one blob.

`requests(path)` draws raw HTTP/1.1 requests for the blob at ``path`` (other spellings of the
path, methods, versions, extra and oversized header fields, hostile targets, Range headers of
every shape, If-Range); `check(base_url, blob, request, etag)` sends one over a raw socket and
asserts the answer against a reference model: never a 5xx, and whenever bytes are served they
are exactly the blob's bytes the model selects (whole, one range or multipart/byteranges).
Requests with another query are other cache keys, so a cache node sees cold misses too.

Point it at an origin, a shield or an edge (``etag``: the blob's validator, for If-Range;
``limits``: the node's `HTTPLimitsConfig` when it is not the default)::

    @settings(max_examples=300, deadline=None, database=None)
    @given(request=fuzz.requests(path))
    def run(request):
        note(repr(request))
        fuzz.check(url, blob, request, etag)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from edgeproxy.config import HTTPLimitsConfig
from edgeproxy.guard import FIELD_OVERHEAD
from edgeproxy.http import MAX_RANGE_HEADER, MAX_RANGES
from tests.rawhttp import RawResponse, raw_request
from tests.test_http import reference


@dataclass(frozen=True, repr=False)
class FuzzRequest:
    """One drawn request and what the model needs to judge the answer."""

    method: str
    target: bytes
    version: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    range: str | None = None
    if_range_matches: bool = True  # an If-Range, when present, names the blob's validator
    bad_target: bool = False  # the target has no canonical form: 400

    def __repr__(self) -> str:
        return f"FuzzRequest({self.data()[:600]!r})"

    def data(self) -> bytes:
        lines = [b"%s %s HTTP/%s" % (self.method.encode(), self.target, self.version.encode())]
        lines += [f"{k}: {v}".encode() for k, v in self.headers]
        return b"\r\n".join(lines) + b"\r\n\r\n"


def _weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``choices``, each drawn with its relative weight."""
    index = [i for i, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(index).flatmap(lambda i: choices[i][1])


def _spell(path: str) -> st.SearchStrategy[bytes]:
    """``path`` as itself or another spelling with the same canonical form (RFC 3986 §6.2.2)."""
    segments = path.strip("/").split("/")

    def spelled(choices: list[int]) -> bytes:
        out = []
        for segment, how in zip(segments, choices, strict=True):
            if how == 1:  # an escaped unreserved character, in lower or upper hex
                segment = "".join(f"%{ord(c):02x}" if i == 0 else c for i, c in enumerate(segment))
            elif how == 2:
                out.append(".")  # "/./"
            elif how == 3:
                out += ["x", ".."]  # "/x/../"
            elif how == 4:
                out.append("%2E")
            out.append(segment)
        return ("/" + "/".join(out)).encode()

    return st.lists(st.integers(0, 4), min_size=len(segments),
                    max_size=len(segments)).map(spelled)  # fmt: skip


_QUERY = st.text(alphabet="abcxyz0123456789=&-._~%2F", max_size=20).map(
    lambda q: re.sub(r"%(?![0-9A-F]{2})", "", q))
_BAD_TARGETS = st.sampled_from([b"/%00", b"/v/%0d%0a", b"/v/t1%2F..", b"/%zz", b"/a%4"])

_NUMBER = st.one_of(st.integers(0, 70_000).map(str), st.integers(1, 600).map(lambda n: "9" * n),
                    st.integers(1, 40).map(lambda n: "0" * n + "7"))  # fmt: skip
_SPEC = st.one_of(
    st.tuples(_NUMBER, st.one_of(st.just(""), _NUMBER)).map(lambda t: f"{t[0]}-{t[1]}"),
    _NUMBER.map(lambda n: f"-{n}"),
)
_RANGE = _weighted(
    (6, st.lists(_SPEC, min_size=1, max_size=3).map(lambda specs: "bytes=" + ",".join(specs))),
    (2, st.tuples(st.sampled_from(["bytes", "Bytes", "BYTES", "bytes ", "items"]),
              st.lists(_SPEC, min_size=0, max_size=MAX_RANGES + 2),
              st.sampled_from([",", ", ", " ,\t", ",,"])).map(
        lambda t: f"{t[0]}={t[2].join(t[1])}")),
    (1, st.text(alphabet="bytes=0123456789-, *", max_size=40)),
    (1, st.integers(1, 3).map(lambda n: "bytes=0-1," * (400 * n))),  # over MAX_RANGE_HEADER
)  # fmt: skip
_EXTRA = st.lists(st.tuples(st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1,
                                    max_size=12).map(lambda n: "X-" + n),
                            st.text(alphabet="abc;=,/ 0123456789", max_size=40).map(str.strip)),
                  max_size=8)  # fmt: skip


def requests(path: str) -> st.SearchStrategy[FuzzRequest]:
    """Requests for the blob at ``path``: mostly well-formed, some hostile."""
    # Most requests are well-formed blob GETs with a Range, so that the byte checks get most of
    # the examples; each hostile shape still comes up every few dozen.
    good_target = st.tuples(_spell(path), st.one_of(
        st.just(b""), _QUERY.map(lambda q: b"?" + q.encode()))).map(lambda t: (t[0] + t[1], False))
    target = _weighted((12, good_target), (1, _BAD_TARGETS.map(lambda t: (t, True))))
    big = _weighted(
        (16, st.just([])), (1, st.integers(1, 40).map(lambda n: [("X-Big", "b" * 1000 * n)])),
        (1, st.integers(90, 110).map(lambda n: [(f"X-M{i}", "v") for i in range(n)])))
    return st.builds(
        _build, st.sampled_from(["GET"] * 12 + ["HEAD"] * 3 + ["POST", "DELETE", "get"]),
        target, st.sampled_from(["1.1", "1.1", "1.0"]), _weighted((1, st.none()), (6, _RANGE)),
        _EXTRA, big, st.sampled_from([None] * 4 + [True, False]),
    )  # fmt: skip


def _build(method: str, target: tuple[bytes, bool], version: str, rng: str | None,
           extra: list[tuple[str, str]], big: list[tuple[str, str]],
           if_range: bool | None) -> FuzzRequest:  # fmt: skip
    headers = [("Host", "fuzz.test"), *extra, *big, ("Connection", "close")]
    if rng is not None:
        headers.append(("Range", rng.strip(" \t")))
    if if_range is not None:
        headers.append(("If-Range", IF_RANGE_MARK if if_range else '"not-the-etag"'))
    return FuzzRequest(method, target[0], version, headers, rng.strip(" \t") if rng else None,
                       if_range is not False, target[1])  # fmt: skip


IF_RANGE_MARK = "<etag>"  # replaced by the blob's ETag when the request is sent


def selection(header: str | None, length: int) -> set[int] | None:
    """The byte offsets ``header`` selects per RFC 9110 §14, or None when it is ignored
    (absent, invalid, another unit, over MAX_RANGE_HEADER or MAX_RANGES): the naive model of
    tests/test_http.py after the list rules of §5.6.1 (OWS, empty elements)."""
    if header is None or len(header) > MAX_RANGE_HEADER:
        return None
    unit, sep, rest = header.partition("=")
    if not sep or unit.lower() != "bytes":  # §14.1: range-unit "=" range-set, no OWS around
        return None
    parts = [p for p in (p.strip(" \t") for p in rest.split(",")) if p]
    if not parts or len(parts) > MAX_RANGES:
        return None
    return reference("bytes=" + ",".join(parts), length)


def _asked(header: str | None, length: int) -> list[set[int]]:
    """The offsets each range of a valid ``header`` selects, in the order asked."""
    assert header is not None
    rest = header.partition("=")[2]
    parts = [p for p in (p.strip(" \t") for p in rest.split(",")) if p]
    return [reference("bytes=" + p, length) or set() for p in parts]


def _contiguous(offsets: set[int]) -> bool:
    return max(offsets) - min(offsets) + 1 == len(offsets)


def check(base_url: str, blob: bytes, request: FuzzRequest, etag: str,
          limits: HTTPLimitsConfig | None = None) -> RawResponse:  # fmt: skip
    """Send ``request`` and assert the answer is what the model allows; returns it."""
    limits = limits or HTTPLimitsConfig()
    headers = [(k, etag if v == IF_RANGE_MARK else v) for k, v in request.headers]
    sent = FuzzRequest(request.method, request.target, request.version, headers, request.range,
                       request.if_range_matches, request.bad_target)  # fmt: skip
    r = raw_request(base_url, sent.data())
    what = (r.status, r.body[:200], sent.data()[:400])
    assert r.status < 500, what
    size = sum(len(k) + len(v) + FIELD_OVERHEAD for k, v in headers)
    if request.method != request.method.upper():
        # methods are case-sensitive (RFC 9110 §9.1): refused, maybe before the head is read
        assert 400 <= r.status < 500, what
    elif len(headers) > limits.max_header_count or size > limits.max_header_bytes:
        assert r.status == 431, what
    elif request.bad_target:
        assert r.status == 400, what
    elif request.method not in ("GET", "HEAD"):
        assert 400 <= r.status < 500, what  # 405 on a blob
    else:
        try:
            _check_blob(r, blob, request, request.method == "HEAD")
        except (AssertionError, KeyError, ValueError) as exc:
            raise AssertionError(f"{exc!r}: {r.status} {r.headers} {r.body[:200]!r}") from exc
    return r


def _check_blob(r: RawResponse, blob: bytes, request: FuzzRequest, head: bool) -> None:
    length = len(blob)
    # Range is defined for GET only (RFC 9110 §14.2): a HEAD's is ignored
    chosen = selection(request.range, length) if request.if_range_matches and not head \
        else None
    if chosen is not None and not chosen:
        assert r.status == 416, (r.status, request.range)
        assert r.headers["content-range"] == f"bytes */{length}"
        return
    if r.status == 200:
        # the whole blob: no Range, an ignored one, or several disjoint ranges (§14.2 allows it)
        assert chosen is None or not _contiguous(chosen), (request.range, chosen and len(chosen))
        assert r.headers["content-length"] == str(length)
        assert r.body == (b"" if head else blob)
        return
    assert r.status == 206 and chosen, (r.status, request.range)
    if r.headers["content-type"].startswith("multipart/byteranges"):
        got: set[int] = set()
        asked = _asked(request.range, length)
        places = []
        for (start, end), part in _parts(r):
            assert part == blob[start : end + 1]
            got |= set(range(start, end + 1))
            # RFC 9110 §14.6: parts come in the order asked; a part that merges several
            # ranges stands where the first of them was
            places.append(min(i for i, offsets in enumerate(asked)
                              if offsets & set(range(start, end + 1))))
        assert got == chosen or head
        assert places == sorted(set(places)), (request.range, places)
        return
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", r.headers["content-range"])
    assert m and int(m.group(3)) == length, r.headers["content-range"]
    start, end = int(m.group(1)), int(m.group(2))
    assert set(range(start, end + 1)) == chosen
    assert r.headers["content-length"] == str(end - start + 1)
    assert r.body == (b"" if head else blob[start : end + 1])


def _parts(r: RawResponse) -> list[tuple[tuple[int, int], bytes]]:
    boundary = r.headers["content-type"].split("boundary=", 1)[1].strip('"')
    out = []
    for chunk in r.body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        m = re.search(rb"content-range: bytes (\d+)-(\d+)/", head, re.IGNORECASE)
        assert m, head
        out.append(((int(m.group(1)), int(m.group(2))), body.removesuffix(b"\r\n")))
    return out
