"""Range parsing (RFC 9110 §14) by table and by property against a reference model; RFC 9530
Integrity fields by table."""

from __future__ import annotations

import base64
import hashlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.http import (
    MAX_POSITION,
    MAX_RANGE_HEADER,
    MAX_RANGES,
    ByteRange,
    RangeNotSatisfiable,
    combine_fields,
    digest_field,
    digest_sha256,
    parse_content_range,
    parse_range,
    precondition_failed,
    resolve_ranges,
    split_list,
)


@pytest.mark.parametrize(("header", "length", "expected"), [
    ("bytes=0-9", 100, [(0, 9)]),
    ("bytes=90-", 100, [(90, 99)]),
    ("bytes=-10", 100, [(90, 99)]),
    ("bytes=-1000", 100, [(0, 99)]),        # §14.1.3: suffix longer than the representation
    ("bytes=95-200", 100, [(95, 99)]),      # last-pos beyond the end is clipped
    ("bytes=0-9,5-20", 100, [(0, 20)]),     # overlapping ranges coalesced
    ("bytes=0-9, 10-19", 100, [(0, 19)]),   # adjacent ones too
    # §14.6: parts in the order asked for; a coalesced range where its first member was
    ("bytes=50-59,0-9", 100, [(50, 59), (0, 9)]),
    ("bytes=0-0,-1", 100, [(0, 0), (99, 99)]),
    ("bytes=-1,0-0", 100, [(99, 99), (0, 0)]),
    ("bytes=80-89,0-9,85-95", 100, [(80, 95), (0, 9)]),
    ("bytes=80-89,0-9,5-20", 100, [(80, 89), (0, 20)]),
    ("bytes=200-300,50-59,0-9", 100, [(50, 59), (0, 9)]),  # an unsatisfiable one left out
    ("Bytes=0-0", 100, [(0, 0)]),           # the unit is case-insensitive
])
def test_resolve(header: str, length: int, expected: list[tuple[int, int]]) -> None:
    specs = parse_range(header)
    assert specs is not None
    assert [(r.start, r.end) for r in resolve_ranges(specs, length)] == expected


@pytest.mark.parametrize("header", [
    None, "", "bytes", "bytes=", "items=0-9", "bytes=9-1", "bytes=a-b", "bytes=--1",
    "bytes=1-2-3", "bytes=" + ",".join(["0-0"] * (MAX_RANGES + 1)),
    "bytes =0-1", "bytes\t=0-1",  # §14.1: ranges-specifier = range-unit "=" range-set
])
def test_invalid_headers_are_ignored(header: str | None) -> None:
    assert parse_range(header) is None  # §14.2: ignore, answer 200


@pytest.mark.parametrize(("header", "length"), [
    ("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0), ("bytes=200-300,150-", 100),
])
def test_unsatisfiable(header: str, length: int) -> None:
    specs = parse_range(header)
    assert specs is not None
    with pytest.raises(RangeNotSatisfiable) as info:
        resolve_ranges(specs, length)
    assert info.value.content_range == f"bytes */{length}"  # §14.4 / §15.5.17


@pytest.mark.parametrize(("value", "expected"), [
    ("bytes 0-9/100", (ByteRange(0, 9), 100)),
    ("bytes */100", (None, 100)),
    ("bytes 0-9/*", (ByteRange(0, 9), None)),
    ("bytes 9-0/100", None), ("bytes 0-100/100", None), ("garbage", None),
])
def test_parse_content_range(value: str, expected: object) -> None:
    assert parse_content_range(value) == expected


def reference(header: str, length: int) -> set[int] | None:
    """A deliberately naive model: the set of byte offsets a Range header selects."""
    unit, _, rest = header.partition("=")
    if unit.lower() != "bytes":
        return None
    selected: set[int] = set()
    for part in rest.split(","):
        first, dash, last = part.strip().partition("-")
        if not dash:
            return None
        if first == "":
            if not last.isdigit():
                return None
            selected |= set(range(max(0, length - int(last)), length))
        else:
            if not first.isdigit() or (last and not last.isdigit()):
                return None
            if last and int(last) < int(first):
                return None
            end = length - 1 if not last else min(int(last), length - 1)
            selected |= set(range(int(first), end + 1))
    return selected


spec = st.one_of(
    st.tuples(st.integers(0, 300), st.one_of(st.none(), st.integers(0, 300))).map(
        lambda t: f"{t[0]}-{'' if t[1] is None else t[1]}"),
    st.integers(0, 300).map(lambda n: f"-{n}"),
)


@given(st.lists(spec, min_size=1, max_size=MAX_RANGES), st.integers(0, 250))
def test_matches_reference(specs: list[str], length: int) -> None:
    header = "bytes=" + ",".join(specs)
    expected = reference(header, length)
    parsed = parse_range(header)
    if expected is None:
        assert parsed is None
        return
    assert parsed is not None
    if not expected and length == 0 and any(s.startswith("-") and int(s[1:]) for s in specs):
        # RFC 9110 §14.1.1: a non-zero suffix is the one satisfiable form on an empty
        # representation; no range of it can be named, so the answer is all of it (none)
        assert resolve_ranges(parsed, length) == []
        return
    if not expected:
        with pytest.raises(RangeNotSatisfiable):
            resolve_ranges(parsed, length)
        return
    ranges = resolve_ranges(parsed, length)
    got: set[int] = set()
    for r in ranges:
        got |= set(range(r.start, r.end + 1))
    assert got == expected
    # coalesced: disjoint, non-adjacent
    in_order = sorted(ranges, key=lambda r: r.start)
    assert all(a.end + 1 < b.start for a, b in itertools.pairwise(in_order))
    # RFC 9110 §14.6: in the order asked for, each where its first satisfiable member was
    members = [(one, i) for i, s in enumerate(parsed) if (one := s.resolve(length)) is not None]
    firsts = [min(i for one, i in members if m.start <= one.start and one.end <= m.end)
              for m in ranges]
    assert firsts == sorted(firsts)


HUGE = "9" * 4301  # more digits than Python's int() converts (ValueError)


@pytest.mark.parametrize(("header", "length", "expected"), [
    # §14.1.2: a last-byte-pos past the end is clipped, however many digits it has
    (f"bytes=0-{HUGE}", 100, [(0, 99)]),
    (f"bytes=10-{'9' * 25}", 100, [(10, 99)]),
    (f"bytes=-{HUGE}", 100, [(0, 99)]),              # §14.1.3: a suffix past the start: whole
    (f"bytes=0-0,{HUGE}-", 100, [(0, 0)]),           # the huge range is not satisfiable
    (f"bytes={'0' * 900}5-{'0' * 90}9", 100, [(5, 9)]),  # leading zeros are only zeros
])  # fmt: skip
def test_huge_positions(header: str, length: int, expected: list[tuple[int, int]]) -> None:
    if HUGE in header:
        assert parse_range(header) is None  # over MAX_RANGE_HEADER: ignored, never a 500
        header = header.replace(HUGE, "9" * 500)  # still far more digits than int64 holds
    specs = parse_range(header)
    assert specs is not None
    assert [(r.start, r.end) for r in resolve_ranges(specs, length)] == expected


@pytest.mark.parametrize("header", [
    f"bytes={'9' * 500}-", f"bytes={'9' * 400}-{'9' * 500}", f"bytes={'1' + '0' * 18}-",
])
def test_huge_first_pos_is_unsatisfiable(header: str) -> None:
    """§14.1.1: a first-byte-pos past the end makes the range unsatisfiable (416)."""
    specs = parse_range(header)
    assert specs is not None
    with pytest.raises(RangeNotSatisfiable) as info:
        resolve_ranges(specs, 2**40)
    assert info.value.content_range == f"bytes */{2**40}"


@pytest.mark.parametrize("header", [
    "bytes=" + "0-" + "0" * MAX_RANGE_HEADER,           # over the length bound: ignored
    "bytes=0-1" + " " * 1_000_000,                       # a 1 MB header
    "bytes=" + ",".join(["1-2"] * 100_000),              # 100,000 parts
    "bytes=" + ",".join(["0-0"] * (MAX_RANGES + 1)),     # one part too many (§14.2)
    f"bytes={'9' * 500}-{'9' * 499}",                    # last < first, both huge: invalid
    "bytes=\u0661-\u0662",                               # non-ASCII digits are not DIGIT
])  # fmt: skip
def test_hostile_headers_are_ignored(header: str) -> None:
    assert parse_range(header) is None  # §14.2: a server MAY ignore Range; answer 200


@given(st.text(alphabet="bytes=0123456789-, \t", max_size=3000))
def test_never_raises(header: str) -> None:
    specs = parse_range(header)
    if specs is not None:
        assert 1 <= len(specs) <= MAX_RANGES
        for s in specs:
            assert all(v is None or 0 <= v <= MAX_POSITION for v in (s.first, s.last))


_HEX = hashlib.sha256(b"abc").hexdigest()
_B64 = base64.b64encode(hashlib.sha256(b"abc").digest()).decode()


@pytest.mark.parametrize(("value", "expected"), [
    (f"sha-256=:{_B64}:", _HEX),
    (f"sha-512=:{base64.b64encode(bytes(64)).decode()}:, sha-256=:{_B64}:", _HEX),  # §2: any
    (f"sha-256=:{_B64}:;p=1", _HEX),  # parameters on a member are allowed (RFC 8941 §3.2)
    ("sha-512=:AAAA:", None),  # no sha-256 member: nothing for us to check
    (f"sha-256={_HEX}", None),  # not a byte sequence
    ("sha-256=:AAAA:", None),  # not 32 bytes
    ("sha-256=:!!!!:", None),  # not base64
    (f"SHA-256=:{_B64}:", None),  # keys are lowercase (RFC 8941 §3.2): not a dictionary
    ("", None),
    (None, None),
])
def test_digest_sha256(value: str | None, expected: str | None) -> None:
    """RFC 9530 §2-§3: the sha-256 member of Content-Digest / Repr-Digest, a Structured Field
    dictionary of byte sequences; a field that does not parse is ignored."""
    assert digest_sha256(value) == expected


def test_digest_field_round_trips() -> None:
    assert digest_field(_HEX) == f"sha-256=:{_B64}:"
    assert digest_sha256(digest_field(_HEX)) == _HEX


@pytest.mark.parametrize(("value", "expected"), [
    # RFC 9110 §5.6.1: empty elements and the whitespace around elements are dropped
    ("public, max-age=600, immutable", ["public", "max-age=600", "immutable"]),
    (" ,a,, b ,", ["a", "b"]),
    ("", []),
    (",,", []),
    # §5.6.4: a comma inside a quoted string separates nothing
    ('no-cache="a, b", max-age=1', ['no-cache="a, b"', "max-age=1"]),
    ('"x,y"', ['"x,y"']),
])
def test_split_list(value: str, expected: list[str]) -> None:
    assert split_list(value) == expected


@given(st.text(alphabet=' ,ab"=\t', max_size=30))
def test_split_list_without_quotes_matches_the_quote_aware_reading(value: str) -> None:
    """The fast path (no quote in the value) and the character walk agree: a quoted empty
    element after the value takes the walk, and adds just itself."""
    plain = value.replace('"', "")
    assert split_list(plain) == split_list(plain + ',""')[:-1]


@pytest.mark.parametrize(("lines", "expected"), [
    # RFC 9110 §5.3: the lines of one field are one comma-joined value, in order
    ([("Cache-Control", "max-age=5"), ("cache-control", "only-if-cached")],
     {"cache-control": "max-age=5, only-if-cached"}),
    ([("range", "bytes=0-9"), ("range", "bytes=20-29")], {"range": "bytes=0-9, bytes=20-29"}),
    ([("Accept-Language", "de"), ("Host", "a"), ("accept-language", "fr")],
     {"accept-language": "de, fr", "host": "a"}),
    # RFC 6265 §5.4: cookie-pairs are joined with "; "
    ([("cookie", "a=1"), ("cookie", "b=2")], {"cookie": "a=1; b=2"}),
    ([("x-one", "")], {"x-one": ""}),
    ([], {}),
])
def test_combine_fields(lines: list[tuple[str, str]], expected: dict[str, str]) -> None:
    assert combine_fields(lines) == expected


LM = "Tue, 01 Dec 2026 10:00:00 GMT"


@pytest.mark.parametrize(("fields", "etag", "expected"), [
    # RFC 9110 §13.1.1: If-Match compares strongly; "*" holds for any representation
    ({"if-match": '"a"'}, '"a"', False),
    ({"if-match": '"b", "a"'}, '"a"', False),
    ({"if-match": '"b"'}, '"a"', True),
    ({"if-match": 'W/"a"'}, '"a"', True),
    ({"if-match": '"a"'}, 'W/"a"', True),
    ({"if-match": '"a"'}, None, True),
    ({"if-match": "*"}, None, False),
    # §13.2.2: If-Unmodified-Since only without If-Match
    ({"if-match": '"a"', "if-unmodified-since": "Mon, 30 Nov 2026 10:00:00 GMT"}, '"a"', False),
    # §13.1.4: false when modified after the date; an invalid date is ignored
    ({"if-unmodified-since": "Mon, 30 Nov 2026 10:00:00 GMT"}, None, True),
    ({"if-unmodified-since": LM}, None, False),
    ({"if-unmodified-since": "Wed, 02 Dec 2026 10:00:00 GMT"}, None, False),
    ({"if-unmodified-since": "yesterday"}, None, False),
    ({}, '"a"', False),
])
def test_precondition_failed(fields: dict[str, str], etag: str | None, expected: bool) -> None:
    assert precondition_failed(fields, etag, LM) is expected


def test_if_unmodified_since_without_last_modified_says_nothing() -> None:
    assert not precondition_failed({"if-unmodified-since": LM}, '"a"', None)
