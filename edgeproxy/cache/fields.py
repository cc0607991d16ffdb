"""Which header fields a node sends, and where: pure rules, no I/O (RFC 9110/9111).

Upstream-side rules produce ``bereq`` fields from the client's; downstream-side rules produce
the ``resp`` fields from a stored object's. `tests/test_fields.py` checks them by tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal
from urllib.parse import urlsplit

from ..http import (
    RangeNotSatisfiable,
    RangeSpec,
    digest_field,
    etag_matches,
    http_date,
    resolve_ranges,
    split_list,
)
from .types import RawHeaders

# RFC 9110 §7.6.1: hop-by-hop fields a proxy must not forward.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})
_HOP_BY_HOP_RAW = frozenset(n.encode() for n in HOP_BY_HOP)

# Request fields a cache answers itself on a cached fetch: the fill is shared by every client,
# so it asks for the whole (sliced) representation and carries the cache's own validators.
# Identity encoding keeps stored bytes equal to the representation that ranges refer to.
_OWN_ON_FILL = frozenset({
    b"host", b"range", b"if-range", b"if-match", b"if-none-match", b"if-modified-since",
    b"if-unmodified-since", b"accept-encoding", b"via", b"content-length", b"expect",
    b"edgeproxy-want-slice-sums",  # (the cache asks for its own slice size: `slicesums`)
})

_HOST = frozenset({b"host"})  # the transport sends the upstream's own authority
_HOST_RANGE = _HOST | {b"range", b"if-range"}

# RFC 9110 §9.2.1: the methods a cache may answer from storage without invalidating anything.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

# RFC 9110 §15.4.5: a 304 carries the fields a 200 would, less the representation's own
# metadata; the rest of the stored fields go along "for the purpose of updating" the copy a
# cache downstream holds (one tier revalidating against another).
NOT_IN_304 = frozenset({
    "content-length", "content-range", "content-type", "content-encoding", "content-language",
    "transfer-encoding", "accept-ranges",
})


def hop(tier: str) -> str:
    """This node's ``Via`` entry (RFC 9110 §7.6.3)."""
    return f"1.1 edgeproxy-{tier}"


def via(upstream_via: str | None, name: str) -> str:
    """The ``Via`` a node sends on: the chain so far plus this hop."""
    return f"{upstream_via}, {hop(name)}" if upstream_via else hop(name)


def _connection_named(raw: RawHeaders) -> frozenset[bytes]:
    named: set[bytes] = set()
    for name, value in raw:
        if name == b"connection":
            named.update(t.strip().lower() for t in value.split(b","))
    return frozenset(named)


def _forward(raw: RawHeaders, name: str, owned: frozenset[bytes]) -> RawHeaders:
    """The client's end-to-end fields less hop-by-hop ones, Connection-named ones and
    ``owned``, then this hop's ``Via`` after the client's (RFC 9110 §7.6)."""
    named = _connection_named(raw)
    client_via: bytes | None = None
    out: RawHeaders = []
    for field, value in raw:
        if field == b"via":
            client_via = value if client_via is None else client_via + b", " + value
        elif field not in _HOP_BY_HOP_RAW and field not in owned and field not in named:
            out.append((field, value))
    out.append((b"via", via(client_via.decode("latin-1") if client_via else None, name)
                .encode("latin-1")))
    return out


def fill_headers(raw: RawHeaders, name: str) -> RawHeaders:
    """``bereq`` fields of a cached fetch: the client's end-to-end fields, less hop-by-hop ones
    and those the cache owns, plus identity encoding and ``Via``."""
    out = _forward(raw, name, _OWN_ON_FILL)
    out.insert(-1, (b"accept-encoding", b"identity"))
    return out


def pass_headers(raw: RawHeaders, name: str, *, ranges: bool = True) -> RawHeaders:
    """``bereq`` fields of a pass: every end-to-end field as the client sent it, plus ``Via``.

    ``ranges`` False: the node ignores this request's Range (invalid, oversized: RFC 9110
    §14.2), and so must its upstream, or a request relayed would be answered otherwise than
    one served from storage (a 206 for a range the node calls invalid, an origin's 400 for
    a 12 KB field); ``If-Range`` goes with it (§13.1.5: meaningless without Range)."""
    return _forward(raw, name, _HOST if ranges else _HOST_RANGE)


def forwardable(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """End-to-end fields of a response: hop-by-hop fields and those named in ``Connection``
    removed (RFC 9110 §7.6.1)."""
    items = list(headers)
    named = {
        token.strip().lower()
        for name, value in items if name.lower() == "connection"
        for token in value.split(",")
    }
    return [(n, v) for n, v in items if n.lower() not in HOP_BY_HOP and n.lower() not in named]


def vary_fields(vary: str | None) -> tuple[str, ...]:
    """The request fields a response varies on (RFC 9110 §12.5.5), lower-cased and sorted.

    ``Accept-Encoding`` is dropped: a cache's fetches always ask for identity, so every client
    gets the same bytes whatever it accepts.
    """
    if not vary:
        return ()
    fields = {f.lower() for f in split_list(vary)} - {"accept-encoding"}
    return ("*",) if "*" in fields else tuple(sorted(fields))


# RFC 9110 §12.5.4: language ranges are case-insensitive and weighed by their q-values, not by
# where they stand in the list.
_UNORDERED_CASELESS = frozenset({"accept-language"})
# Request fields whose value is one item, not a list (RFC 9110, RFC 6265, RFC 6454): a comma
# in them is text ("Mozilla/5.0 (X11, Linux)", "Thu, 01 Jan 1970"), so the spaces around it
# are part of the value and selecting compares the value as sent. A field not named here may
# come as several lines (which only a list may, RFC 9110 §5.3): it is compared as a list.
_SINGLE_VALUED = frozenset({
    "authorization", "content-length", "content-location", "content-type", "cookie", "date",
    "from", "host", "if-modified-since", "if-range", "if-unmodified-since", "max-forwards",
    "origin", "proxy-authorization", "range", "referer", "user-agent"})


def vary_values(fields: tuple[str, ...], headers: Mapping[str, str]) -> tuple[str, ...] | None:
    """The request's values of ``fields``, normalised as RFC 9111 §4.1 allows; None for
    ``Vary: *``, which no request matches.

    Lines of one field are combined (the server joins them), list members lose the
    whitespace around them and runs of it within them become one space, quoted strings kept
    whole; `_UNORDERED_CASELESS` fields are compared without case, whitespace or order, and
    `_SINGLE_VALUED` ones as sent.
    """
    if "*" in fields:
        return None
    return tuple(_normalised(f, headers.get(f, "")) for f in fields)


def selects(vary: tuple[str, ...], stored_values: tuple[str, ...] | None,
            headers: Mapping[str, str]) -> bool:
    """Whether a request with these fields may be answered with a response that varies on
    ``vary`` and was selected by ``stored_values`` (RFC 9111 §4.1)."""
    if not vary:
        return True
    values = vary_values(vary, headers)
    return values is not None and values == stored_values  # (Vary: * selects no request)


def _normalised(name: str, value: str) -> str:
    if name in _SINGLE_VALUED:
        return value.strip(" \t")  # (a field value has no whitespace at its ends, §5.5)
    members = [" ".join(m.split()) for m in split_list(value)]
    if name in _UNORDERED_CASELESS:
        return ",".join(sorted("".join(m.split()).lower() for m in members))
    return ",".join(members)


# Methods a cache node does not relay. TRACE echoes the request back, its credentials and
# cookies included, to whoever made it (cross-site tracing); nginx answers it with 405 too.
# CONNECT asks for a tunnel (RFC 9110 §9.3.6), which a cache node is not (its authority-form
# target is refused by the guard already; this is one with a path).
REFUSED_METHODS = frozenset({"TRACE", "CONNECT"})
# What a refused request's 405 names in Allow (RFC 9110 §15.5.6): the standard methods that are
# looked up or relayed (an extension method, PROPFIND say, is relayed too).
ALLOWED_METHODS = "GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE"

Route = Literal["lookup", "pass", "refuse"]


def route(method: str) -> Route:
    """What `steps.recv` does with a request: ``"lookup"`` for GET and HEAD, the methods whose
    answers a cache stores (RFC 9111 §3, §4); ``"refuse"`` for `REFUSED_METHODS`; ``"pass"``
    upstream for every other method (RFC 9111 §4.4 invalidates after an unsafe one)."""
    if method in ("GET", "HEAD"):
        return "lookup"
    return "refuse" if method in REFUSED_METHODS else "pass"


def invalidates(method: str, status: int) -> bool:
    """RFC 9111 §4.4: an unsafe method answered with a non-error status invalidates."""
    return method not in SAFE_METHODS and 200 <= status < 400


def invalidated_paths(request_path: str, host: str | None,
                      response: Mapping[str, str]) -> list[str]:
    """The paths an invalidating response removes: the target URI, and the ``Location`` and
    ``Content-Location`` URIs when they are on the same origin (§4.4, to prevent DoS)."""
    paths = [request_path]
    for name in ("location", "content-location"):
        value = response.get(name)
        if not value:
            continue
        parts = urlsplit(value)
        if parts.netloc and parts.netloc != host:
            continue
        if parts.path.startswith("/"):
            paths.append(parts.path + (f"?{parts.query}" if parts.query else ""))
    return paths


def updates_stored(stored_etag: str | None, stored_lm: str | None, etag: str | None,
                   last_modified: str | None) -> bool:
    """Whether a 304 with ``etag``/``last_modified`` selects the stored response it answers
    for update (RFC 9111 §4.3.4): its entity tag matches the stored one's (weakly), or it has
    none and its Last-Modified is the stored one's; a 304 with neither updates as it comes.
    One naming another representation (a Last-Modified gone back in time answered the
    cache's If-Modified-Since) MUST NOT update: those bytes are not of it."""
    if etag is not None:
        return stored_etag is not None and etag_matches(stored_etag, etag)
    if last_modified is not None:
        return stored_lm is not None and http_date(stored_lm) == http_date(last_modified)
    return True


def not_modified_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The fields of a 304 built from a full response's (RFC 9110 §15.4.5)."""
    return [(n, v) for n, v in headers if n.lower() not in NOT_IN_304]



# The first and last byte (inclusive) of the representation that a message's content carries,
# and that message's Content-Digest value as received.
MessageDigest = tuple[int, int, str]


def content_digest(content: tuple[int, int] | None, length: int | None,
                   representation_sha256: str | None,
                   upstream: MessageDigest | None) -> str | None:
    """The ``Content-Digest`` an answer may carry (RFC 9530 §2), or None to send none.

    ``content``: the bytes (first, last) of the representation of ``length`` bytes that the
    answer's content is; None when it has no content (HEAD, 304) or is not one span of it
    (multipart/byteranges). Content-Digest covers the content of one message, so the digest of
    one range is never replayed on another: the upstream's value goes on unchanged only with
    exactly the bytes it came with (``upstream``: a fill of that very range); an answer that
    carries the whole representation states its SHA-256 when that is known (a content address,
    ``Repr-Digest``), its content being the representation data; anything else, a range
    assembled from stored slices, carries none rather than a stale one.
    """
    if content is None:
        return None
    if upstream is not None and upstream[:2] == content:
        return upstream[2]
    if representation_sha256 is not None and length is not None and content == (0, length - 1):
        return digest_field(representation_sha256)
    return None


def holds_ranges(specs: list[RangeSpec] | None, body_start: int, body_length: int | None,
                 length: int | None) -> bool:
    """Whether a 206 of bytes ``body_start`` on (``body_length`` of them, of ``length``)
    holds every byte a client asked for (``specs``; None: the whole). An upstream may send
    fewer bytes than asked (RFC 9110 §15.3.7), and an answer relayed unstored was announced
    with the client's range and cut where the upstream's ended."""
    if length is None or body_length is None:
        return False
    end = body_start + body_length
    if not specs:
        return body_start == 0 and end >= length
    try:
        ranges = resolve_ranges(specs, length)
    except RangeNotSatisfiable:
        return True  # (answered 416 from the length alone)
    return all(body_start <= r.start and r.end < end for r in ranges)
