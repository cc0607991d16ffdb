"""HTTP Range requests (RFC 9110 §14): parsing and resolution, pure and I/O-free.

`parse_range` reads a ``Range`` header into specs without knowing the representation length;
`resolve_ranges` turns specs into concrete, inclusive byte ranges for a known length. A header
that is syntactically invalid or uses another unit is *ignored* (the caller answers 200, §14.2);
a valid header with no satisfiable range raises `RangeNotSatisfiable` (416, §15.5.17).
"""

from __future__ import annotations

import base64
import datetime
import functools
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate

# A request with more ranges than this is answered whole (200): RFC 9110 §14.2 lets a server
# ignore a Range header that asks for many small ranges, a known amplification vector.
MAX_RANGES = 16
# A longer Range header is ignored (200, §14.2 lets a server ignore Range). MAX_RANGES ranges
# of 19-digit positions (2**63, far past any representation) with ", " between them take
# 6 + 16 * 39 + 15 * 2 = 660 bytes: no sensible request is cut off, and no hostile one makes us
# split, match or convert more than this.
MAX_RANGE_HEADER = 1024
# Positions are saturated here: a first-byte-pos this large is unsatisfiable and a last-byte-pos
# this large clamps to the end, for any representation we could hold; and int() never sees
# thousands of digits (Python refuses more than 4,300 with ValueError).
MAX_POSITION = 2**63 - 1
_MAX_DIGITS = len(str(MAX_POSITION))

_INT_RANGE = re.compile(r"(\d+)-(\d*)", re.ASCII)
_SUFFIX_RANGE = re.compile(r"-(\d+)", re.ASCII)


class RangeNotSatisfiable(Exception):
    """No range in a valid Range header overlaps the representation (answer 416)."""

    def __init__(self, length: int) -> None:
        super().__init__(f"no satisfiable range for a representation of {length} bytes")
        self.length = length

    @property
    def content_range(self) -> str:
        """The ``Content-Range`` value a 416 carries (RFC 9110 §14.4)."""
        return f"bytes */{self.length}"


@dataclass(frozen=True, slots=True)
class RangeSpec:
    """One ``range-spec``: ``first-last``, ``first-`` (last None) or ``-suffix`` (first None)."""

    first: int | None
    last: int | None

    def resolve(self, length: int) -> ByteRange | None:
        """The concrete range for ``length`` bytes, or None if unsatisfiable (§14.1.1)."""
        if self.first is None:
            assert self.last is not None
            if self.last == 0 or length == 0:
                return None
            return ByteRange(max(0, length - self.last), length - 1)
        if self.first >= length:
            return None
        last = length - 1 if self.last is None else min(self.last, length - 1)
        return ByteRange(self.first, last)


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range ``start..end`` of a representation."""

    start: int
    end: int

    @property
    def length(self) -> int:
        """Number of bytes in the range."""
        return self.end - self.start + 1

    def content_range(self, total: int | None) -> str:
        """The ``Content-Range`` header value for this range of ``total`` bytes."""
        return f"bytes {self.start}-{self.end}/{'*' if total is None else total}"

    def header_value(self) -> str:
        """This range as a ``Range`` request header value."""
        return f"bytes={self.start}-{self.end}"


def _position(digits: str) -> int:
    """A byte position from ASCII digits, saturated at `MAX_POSITION`."""
    significant = digits.lstrip("0")
    if len(significant) > _MAX_DIGITS:
        return MAX_POSITION
    return min(int(significant or "0"), MAX_POSITION)


def _before(a: str, b: str) -> bool:
    """Whether the decimal ``a`` is less than the decimal ``b``, at any length."""
    a, b = a.lstrip("0"), b.lstrip("0")
    return (len(a), a) < (len(b), b)


def parse_range(value: str | None) -> list[RangeSpec] | None:
    """Parse a ``Range`` header; None when absent, invalid, not in ``bytes``, longer than
    `MAX_RANGE_HEADER` or asking for more than `MAX_RANGES` ranges (all answered 200)."""
    if not value or len(value) > MAX_RANGE_HEADER:
        return None
    unit, sep, rest = value.partition("=")
    if not sep or unit.lower() != "bytes":  # RFC 9110 §14.1: no whitespace around "="
        return None
    specs: list[RangeSpec] = []
    for raw in rest.split(","):
        part = raw.strip(" \t")
        if not part:
            continue  # RFC 9110 §5.6.1: empty list elements are ignored
        if m := _INT_RANGE.fullmatch(part):
            if m.group(2) and _before(m.group(2), m.group(1)):
                return None  # last < first: invalid (§14.1.1), compared before saturating
            last = _position(m.group(2)) if m.group(2) else None
            specs.append(RangeSpec(_position(m.group(1)), last))
        elif m := _SUFFIX_RANGE.fullmatch(part):
            specs.append(RangeSpec(None, _position(m.group(1))))
        else:
            return None
        if len(specs) > MAX_RANGES:
            return None
    if not specs:
        return None
    return specs


def resolve_ranges(specs: list[RangeSpec], length: int) -> list[ByteRange]:
    """Satisfiable ranges of ``length`` bytes, overlaps and neighbours coalesced, in the
    order they were asked for (RFC 9110 §14.6); a coalesced range takes the place of its
    first member.

    Coalescing is what RFC 9110 §14.2 recommends against overlapping-range abuse; a request
    whose ranges collapse into one is answered as a single-part 206. No range at all (an empty
    list): answer the whole representation, which is empty.
    """
    ranges = [r for spec in specs if (r := spec.resolve(length)) is not None]
    if not ranges:
        if length == 0 and any(spec.first is None and spec.last for spec in specs):
            # §14.1.1: a non-zero suffix is satisfiable on a zero-length representation, but
            # no range of it can be named: the answer is the whole, empty (§14.2: Range may
            # be ignored), as deployed servers send it
            return []
        raise RangeNotSatisfiable(length)
    merged: list[ByteRange] = []
    asked: list[int] = []  # where each merged range's first member was in the request
    for at in sorted(range(len(ranges)), key=lambda i: ranges[i].start):
        r = ranges[at]
        if merged and r.start <= merged[-1].end + 1:
            last = merged[-1]
            merged[-1] = ByteRange(last.start, max(last.end, r.end))
            asked[-1] = min(asked[-1], at)
        else:
            merged.append(r)
            asked.append(at)
    return [merged[i] for i in sorted(range(len(merged)), key=asked.__getitem__)]


def satisfiable(specs: list[RangeSpec] | None, length: int) -> bool:
    """Whether ``specs`` name a range of ``length`` bytes (`resolve_ranges` raises no 416)."""
    try:
        resolve_ranges(specs or [], length)
    except RangeNotSatisfiable:
        return False
    return bool(specs)


def parse_content_range(value: str | None) -> tuple[ByteRange | None, int | None] | None:
    """Parse a ``Content-Range`` response header: ``(range, complete length)``.

    ``bytes 0-9/100`` → (ByteRange(0, 9), 100); ``bytes */100`` → (None, 100);
    ``bytes 0-9/*`` → (ByteRange(0, 9), None). None if malformed.
    """
    if not value:
        return None
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value, re.IGNORECASE)
    if not m:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    if m.group(1) is None:
        return (None, total) if total is not None else None
    start, end = int(m.group(1)), int(m.group(2))
    if end < start or (total is not None and end >= total):
        return None
    return ByteRange(start, end), total


# --- field values shared by the cache, the origin and the client ------------------------------

# A decimal header value longer than this is refused rather than parsed: no representation is
# that large, and int() of thousands of digits is a denial of service (and raises past 4300).
MAX_DIGITS = 18


def combine_fields(lines: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Field values by lower-cased name, the lines of one field joined into one value (RFC
    9110 §5.3: with commas; RFC 6265 §5.4: with ``; `` for Cookie). A second Cache-Control
    line counts as much as the first, and two ``bytes=`` Range lines are one invalid Range."""
    out: dict[str, str] = {}
    for name, value in lines:
        field = name.lower()
        before = out.get(field)
        out[field] = value if before is None else \
            f"{before}{'; ' if field == 'cookie' else ', '}{value}"
    return out


def first_member(value: str | None) -> str | None:
    """The first member of a list-valued field (``Age: 7200, 0`` is 7200, RFC 9111 §5.1)."""
    return None if value is None else value.partition(",")[0]


def int_header(value: str | None) -> int | None:
    """A non-negative decimal field value (``Content-Length``, ``Age``), or None if invalid."""
    if value is None:
        return None
    value = value.strip(" \t")
    if not value or len(value) > MAX_DIGITS or not (value.isascii() and value.isdigit()):
        return None
    return int(value)


def split_list(value: str) -> list[str]:
    """The elements of a comma-separated field value (RFC 9110 §5.6.1), quotes respected."""
    if '"' not in value:  # most values (Cache-Control, Vary): no quoted string to respect
        return [p for p in (part.strip() for part in value.split(",")) if p]
    parts: list[str] = []
    buf: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return [p.strip() for p in parts if p.strip()]


_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MON = r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"(\d\d):(\d\d):(\d\d)"
# RFC 9110 §5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms a recipient must
# also accept; nothing else is a date (an invalid Expires means "already expired").
_IMF = re.compile(rf"{_DAY}, (\d\d) {_MON} (\d{{4}}) {_TIME} GMT")
_RFC850 = re.compile(r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
                     rf"(\d\d)-{_MON}-(\d\d) {_TIME} GMT")
_ASCTIME = re.compile(rf"{_DAY} {_MON} ([ \d]\d) {_TIME} (\d{{4}})")


_WORD = re.compile(r"[A-Za-z]+")


def http_date(value: str | None) -> float | None:
    """An HTTP-date as epoch seconds, or None if absent or invalid (RFC 9110 §5.6.7)."""
    return _http_date(value) if value else None


@functools.lru_cache(maxsize=1024)  # Date and Last-Modified repeat within a second
def _http_date(value: str) -> float | None:
    # Names in another case are accepted, as deployed caches do (strictly they are invalid)
    value = _WORD.sub(lambda m: "GMT" if m.group().upper() == "GMT" else m.group().capitalize(),
                      value.strip(" \t"))
    if m := _IMF.fullmatch(value):
        day, mon, year, hh, mm, ss = m.groups()
    elif m := _RFC850.fullmatch(value):
        day, mon, yy, hh, mm, ss = m.groups()
        # §5.6.7: a two-digit year more than 50 years in the future is in the past century
        year = str(2000 + int(yy) if 2000 + int(yy) <= time.gmtime().tm_year + 50
                   else 1900 + int(yy))
    elif m := _ASCTIME.fullmatch(value):
        mon, day, hh, mm, ss, year = m.groups()
    else:
        return None
    try:
        return datetime.datetime(int(year), _MONTHS[mon], int(day), int(hh), int(mm), int(ss),
                                 tzinfo=datetime.UTC).timestamp()
    except ValueError:  # no such day or time
        return None


def format_http_date(timestamp: float) -> str:
    """Epoch seconds as an IMF-fixdate (RFC 9110 §5.6.7)."""
    return formatdate(timestamp, usegmt=True)


def etag_matches(if_none_match: str, etag: str | None) -> bool:
    """Weak comparison for ``If-None-Match`` (RFC 9110 §13.1.2); ``*`` matches whatever
    representation there is, one without an ETag too (the caller has one)."""
    if if_none_match.strip() == "*":
        return True
    if etag is None:
        return False
    weak = etag.removeprefix("W/")
    return any(tag.removeprefix("W/") == weak for tag in split_list(if_none_match))


def precondition_failed(headers: dict[str, str], etag: str | None,
                        last_modified: str | None) -> bool:
    """Whether ``If-Match``, or else ``If-Unmodified-Since``, is false for this representation
    (RFC 9110 §13.2.2 steps 1-2: a 412). If-Match compares strongly (§13.1.1: a weak ETag
    never matches); If-Unmodified-Since is false only when the representation was modified
    after its date (§13.1.4; without a Last-Modified, or with an invalid date, it says
    nothing)."""
    if_match = headers.get("if-match")
    if if_match is not None:
        if if_match.strip() == "*":
            return False
        return etag is None or etag.startswith("W/") or etag not in split_list(if_match)
    since = headers.get("if-unmodified-since")
    if since is None:
        return False
    date, modified = http_date(since), http_date(last_modified)
    return date is not None and modified is not None and modified > date


def if_range_matches(if_range: str, etag: str | None, last_modified: str | None,
                     date: str | None = None, received: float | None = None) -> bool:
    """RFC 9110 §13.1.5: strong ETag comparison, or an exact match of a Last-Modified that is
    a strong validator (`strong_date`; without ``received``, the caller's own current one)."""
    value = if_range.strip()
    if value.startswith('"') or value.startswith("W/"):
        return etag is not None and not value.startswith("W/") and value == etag \
            and not etag.startswith("W/")
    asked, lm = http_date(value), http_date(last_modified)
    return asked is not None and lm is not None and asked == lm and \
        (received is None or strong_date(last_modified, date, received))


def strong_date(last_modified: str | None, date: str | None, received: float) -> bool:
    """Whether a stored response's ``Last-Modified`` is a strong validator (RFC 9110
    §8.8.2.2): its ``Date`` (the time it was received, without a valid one) is at least a
    second later. One changed within the second of its date is not told apart by it."""
    modified = http_date(last_modified)
    if modified is None:
        return False
    dated = http_date(date)
    return (received if dated is None else dated) - modified >= 1.0


def not_modified(headers: dict[str, str], etag: str | None, last_modified: str | None,
                 date: str | None = None) -> bool:
    """Whether a GET/HEAD with these request fields gets 304 (RFC 9110 §13.2.2 order).

    Without a Last-Modified, a cache compares If-Modified-Since with the stored response's
    Date (RFC 9111 §4.3.2).
    """
    inm = headers.get("if-none-match")
    if inm is not None:
        return etag_matches(inm, etag)  # §13.1.3: If-Modified-Since is then ignored
    ims = http_date(headers.get("if-modified-since"))
    lm = http_date(last_modified) if last_modified else http_date(date)
    return ims is not None and lm is not None and lm <= ims


_SF_KEY = r"[a-z*][a-z0-9_\-.*]*"
_SF_ITEM = (r"(?:-?\d{1,15}(?:\.\d{1,3})?|\"(?:[ !#-\[\]-~]|\\[\"\\])*\"|"
            r"[A-Za-z*][!#$%&'*+\-.^_`|~:/0-9A-Za-z]*|:[A-Za-z0-9+/=]*:|\?[01])")
_SF_PARAMS = rf"(?:;\s*{_SF_KEY}(?:={_SF_ITEM})?)*"
_SF_MEMBER = re.compile(rf"({_SF_KEY})(?:=({_SF_ITEM}|\((?:\s*{_SF_ITEM}{_SF_PARAMS})*\s*\)))?"
                        rf"{_SF_PARAMS}")


def sf_dictionary(value: str) -> dict[str, str | None] | None:
    """A Structured Field dictionary (RFC 8941 §3.2) as ``{key: value as written or None}``; None if
    the value is not a valid dictionary (a recipient then ignores the whole field)."""
    out: dict[str, str | None] = {}
    for member in split_list(value):
        m = _SF_MEMBER.fullmatch(member.strip(" \t"))
        if m is None:
            return None
        out[m.group(1)] = m.group(2)  # as written: a string keeps its quotes (its type)
    return out


def digest_sha256(value: str | None) -> str | None:
    """The ``sha-256`` member of an RFC 9530 Integrity field (``Content-Digest`` §2,
    ``Repr-Digest`` §3) as lowercase hex; None when there is none, or when the field or the
    member is malformed (§2: a recipient then has no digest of that algorithm to check)."""
    members = sf_dictionary(value) if value else None
    raw = members.get("sha-256") if members else None
    if raw is None or len(raw) < 2 or not (raw[0] == raw[-1] == ":"):
        return None
    try:
        digest = base64.b64decode(raw[1:-1], validate=True)
    except ValueError:
        return None
    return digest.hex() if len(digest) == 32 else None


def digest_field(hexdigest: str) -> str:
    """An RFC 9530 Integrity field value with one ``sha-256`` member (a byte sequence, RFC 8941
    §3.3.5)."""
    return f"sha-256=:{base64.b64encode(bytes.fromhex(hexdigest)).decode()}:"
