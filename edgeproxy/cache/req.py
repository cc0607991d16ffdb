"""``req``: the client request as a cache node sees it, parsed once in recv."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from ..http import RangeSpec, combine_fields, parse_range
from ..signing import signature_params
from ..target import canonical_path
from .types import RawHeaders, Scope

# Parameters of signed download URLs: one cached copy serves every signature of a URL.
_SIGNATURE_PARAMS = frozenset(signature_params())
# What a path may carry unescaped (RFC 3986 pchar, '/'), and '%' so that escapes stay.
_PATH_SAFE = "/%:@!$&'()*+,;="


@dataclass(slots=True)
class Req:
    """The client request (``req``): method, canonical path, key and Range, parsed once."""

    method: str
    path: str  # canonical, percent-encoded (content class, signature, key, upstream all use it)
    query: str  # exactly as sent
    raw_headers: RawHeaders
    headers: dict[str, str]  # each field's lines as one value (`combine_fields`), names lower-cased
    key: str
    ranges: list[RangeSpec] | None  # GET with a valid bytes Range; None: the whole body

    @classmethod
    def from_scope(cls, scope: Scope) -> Req:
        """Parse the ASGI scope; raises `HTTPError` 400 for a target that has no canonical form."""
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        path = canonical_path(raw_path)
        query = scope.get("query_string", b"").decode("latin-1")
        raw_headers: RawHeaders = scope["headers"]
        headers = combine_fields((n.decode("latin-1"), v.decode("latin-1")) for n, v in raw_headers)
        method = scope["method"]
        # RFC 9110 §14.2: range handling is defined for GET only, and a server MUST ignore
        # Range with any other method: a HEAD has the whole representation's fields (§9.3.2)
        ranges = parse_range(headers.get("range")) if method == "GET" else None
        return cls(method, path, query, raw_headers, headers, cache_key(path, query), ranges)

    @property
    def target(self) -> str:
        """Path and query as sent upstream."""
        return f"{self.path}?{self.query}" if self.query else self.path

    def last_slice(self, slice_size: int) -> int | None:
        """The slice of the last byte asked for (None: the whole, a suffix or an open end)."""
        if not self.ranges or any(s.first is None or s.last is None for s in self.ranges):
            return None
        return max(s.last for s in self.ranges if s.last is not None) // slice_size

    def first_byte(self, length: int | None) -> int | None:
        """Where the first requested byte is (None: a suffix range on an unknown length)."""
        if not self.ranges:
            return 0
        starts: list[int] = []
        for spec in self.ranges:
            if spec.first is not None:
                starts.append(spec.first)
            elif length is None:
                return None
            else:
                starts.append(max(0, length - (spec.last or 0)))
        return min(starts)


def cache_key(path: str, query: str) -> str:
    """The cache key: path plus query exactly as sent, less signature parameters.

    Order and repetition are kept: ``?v=2&v=1`` and ``?v=1&v=2`` may be different resources.
    """
    if not query:
        return path
    kept = [p for p in query.split("&") if p.partition("=")[0] not in _SIGNATURE_PARAMS]
    return f"{path}?{'&'.join(kept)}" if kept else path


def target_key(target: str) -> str:
    """The cache key of a target given as text (an admin call's path or prefix, a Location
    field): canonical as a request's path (`canonical_path`), any other character
    percent-encoded as a client sends it. A purge of ``/v/./t1/x`` or ``/v/t1/%78`` used
    to miss the object every spelling of it is served from (found from outside).
    `HTTPError` 400 ``bad_target`` when it has no canonical form."""
    path, _, query = target.partition("?")
    return cache_key(canonical_path(quote(path, safe=_PATH_SAFE).encode("ascii")), query)
