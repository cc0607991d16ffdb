"""Caching rules for a shared cache: pure functions, no I/O (hishel's split).

Each rule names the RFC 9111 section or the seed line it implements; `tests/test_policy.py`
checks them by tables. Times are plain floats (seconds since the epoch) passed in by the caller,
so nothing here reads a clock.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import ContentClass
from ..http import digest_sha256, first_member, http_date, int_header, sf_dictionary, split_list

DEFAULT_CLASS = "default"

# Fields the cache computes itself for every response it delivers; upstream values are dropped.
# Date stays (RFC 9110 §6.6.1: the cache did not generate the response), and so does a
# Content-Range on anything but a 206 (RFC 9111 §3.1: every end-to-end field is stored).
# Content-Digest describes one message's content (RFC 9530 §2), not the stored representation:
# replayed on another range it would be wrong, so each answer gets its own (`fields`).
REGENERATED = frozenset({"content-length", "age", "x-cache", "server", "accept-ranges",
                         "content-digest"})

# Status codes cacheable by default (RFC 9110 §15.1): a cache may store them without
# explicit freshness, using a heuristic — we only use heuristics for 200.
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
NEGATIVE_STATUSES = frozenset({404, 410})
# Final statuses whose caching semantics this cache implements (RFC 9111 §5.2.2.3).
UNDERSTOOD = frozenset({200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501})

# RFC 9111 §4.2.2 suggests 10% of the time since Last-Modified; the cap keeps an old file from
# being cached for months on a guess.
HEURISTIC_FRACTION = 0.1
HEURISTIC_MAX = 86400.0


# --- Cache-Control ---------------------------------------------------------------------------

_DIRECTIVE = re.compile(r'\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,]*))?')


def parse_cache_control(value: str | None) -> Mapping[str, str | None]:
    """Directives of a ``Cache-Control`` value (RFC 9111 §5.2), names lower-cased."""
    return _parse_cache_control(value) if value else _NO_DIRECTIVES


_NO_DIRECTIVES: Mapping[str, str | None] = {}


def only_if_cached(request_cache_control: str | None) -> bool:
    """RFC 9111 §5.2.1.7: the client wants a stored response or a 504, never a fetch."""
    return "only-if-cached" in parse_cache_control(request_cache_control)


def request_no_store(request_cache_control: str | None) -> bool:
    """RFC 9111 §5.2.1.5: nothing of this request or of any answer to it may be stored; it
    is answered as any other, from what is stored or by upstream."""
    return "no-store" in parse_cache_control(request_cache_control)


@functools.lru_cache(maxsize=1024)  # a few distinct values answer most misses
def _parse_cache_control(value: str) -> Mapping[str, str | None]:
    directives: dict[str, str | None] = {}
    for part in split_list(value):
        m = _DIRECTIVE.fullmatch(part)
        if not m:
            continue
        name, arg = m.group(1).lower(), m.group(2)
        if arg is not None:
            arg = arg.strip()
            if arg.startswith('"'):
                arg = re.sub(r"\\(.)", r"\1", arg[1:-1])
        # §4.2.1: when a directive appears twice, the first one is used.
        directives.setdefault(name, arg)
    return directives


def _seconds(directives: Mapping[str, str | None], name: str) -> float | None:
    raw = directives.get(name)
    if raw is None or not raw.isdigit():
        return None
    return float(raw)


# --- content classes and keys ----------------------------------------------------------------


def classify(path: str, content_type: str | None,
             classes: tuple[ContentClass, ...]) -> ContentClass | None:
    """The first configured class whose path glob or content-type pattern matches (seed 000,
    "Cache Rules"); None means the default class, which follows the upstream's headers."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    for cc, paths, types in _rules(classes):
        if paths is not None and paths.match(path):
            return cc
        if media_type and types is not None and types.match(media_type):
            return cc
    return None


_Rules = list[tuple[ContentClass, "re.Pattern[str] | None", "re.Pattern[str] | None"]]
# The classes' globs, each class's compiled into one pattern, by the (long-lived) tuple of
# classes they came in: a miss matched every glob with `fnmatchcase` (a cache lookup and a
# match each).
_COMPILED: dict[int, tuple[tuple[ContentClass, ...], _Rules]] = {}


def _rules(classes: tuple[ContentClass, ...]) -> _Rules:
    entry = _COMPILED.get(id(classes))
    if entry is not None and entry[0] is classes:
        return entry[1]
    rules = [(cc, _globs(cc.paths), _globs(cc.content_types)) for cc in classes]
    if len(_COMPILED) >= 64:
        _COMPILED.clear()
    _COMPILED[id(classes)] = (classes, rules)  # (the tuple kept: its id is not reused)
    return rules


def _globs(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One pattern matching what any of ``patterns`` matches (as `fnmatch.fnmatchcase`)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


# --- storability and freshness ---------------------------------------------------------------


def targeted(headers: Mapping[str, str]) -> Mapping[str, str]:
    """The fields this cache obeys: with a valid ``CDN-Cache-Control`` (RFC 9213 §2.1), its
    directives stand in for ``Cache-Control`` and ``Expires``; an invalid one is ignored."""
    value = headers.get("cdn-cache-control")
    if value is None:
        return headers
    directives = sf_dictionary(value)
    if directives is None:
        return headers
    own = {k: v for k, v in headers.items() if k not in ("cache-control", "expires")}
    # a directive whose value has the wrong type is ignored (RFC 9213 §2.1): the
    # delta-seconds ones take integers, not strings
    kept = {k: v for k, v in directives.items()
            if k not in _INTEGER_DIRECTIVES or (v is not None and v.isdigit())}
    own["cache-control"] = ", ".join(k if v is None else f"{k}={v}" for k, v in kept.items())
    return own


_INTEGER_DIRECTIVES = frozenset({"max-age", "s-maxage", "stale-while-revalidate",
                                 "stale-if-error"})


def is_storable(status: int, request_cc: Mapping[str, str | None],
                response_cc: Mapping[str, str | None], *, has_authorization: bool,
                has_explicit_freshness: bool, has_class: bool) -> bool:
    """RFC 9111 §3: may a shared cache store this response at all?"""
    if "no-store" in request_cc:
        return False
    if "no-store" in response_cc and not (
            "must-understand" in response_cc and status in UNDERSTOOD):
        return False  # §5.2.2.3: must-understand overrides no-store for a status we know
    if "private" in response_cc:  # §5.2.2.7: shared caches must not store it
        return False
    if has_authorization and not (
        {"public", "must-revalidate", "s-maxage"} & response_cc.keys()
    ):  # §3.5
        return False
    if status < 200 or status in (304, 206):
        return False  # not a final, whole response (partial content is stored as slices)
    if has_class and status == 200:
        return True  # seed 000's classes: configured TTLs whatever the origin says
    if has_explicit_freshness or "public" in response_cc:
        return True  # §3 "contains ... an Expires / max-age / s-maxage / public"
    return status in HEURISTICALLY_CACHEABLE  # §4.2.2: cacheable by default


def freshness_lifetime(tier: str, content_class: ContentClass | None, status: int,
                       headers: Mapping[str, str], *, negative_ttl: float,
                       response_time: float | None = None) -> float:
    """How long a stored response stays fresh at ``tier`` (RFC 9111 §4.2.1).

    A configured class TTL wins for its 200s (seed 000's table: media 7 d at the edge, 30 d at
    the shield); negative answers get at most the short ``negative_ttl``; otherwise
    ``s-maxage``, ``max-age``, ``Expires - Date``, then the Last-Modified heuristic (§4.2.2)
    for statuses that are cacheable by default.
    """
    cc = parse_cache_control(headers.get("cache-control"))
    if status in NEGATIVE_STATUSES:
        if "no-cache" in cc:
            return 0.0  # §5.2.2.4 binds a 404 too: negative_ttl is only a heuristic cap
        explicit = _explicit_lifetime(cc, headers, response_time)
        return min(negative_ttl, explicit) if explicit is not None else negative_ttl
    if content_class is not None and status == 200:
        return content_class.ttl.for_tier(tier)
    if "no-cache" in cc:
        return 0.0  # §5.2.2.4: stored, but validated before every use
    explicit = _explicit_lifetime(cc, headers, response_time)
    if explicit is not None:
        return explicit
    if status not in HEURISTICALLY_CACHEABLE and "public" not in cc:
        return 0.0  # §4.2.2: heuristics for cacheable-by-default statuses, or marked public
    last_modified = http_date(headers.get("last-modified"))
    date = http_date(headers.get("date")) or response_time
    if last_modified is not None and date is not None and date > last_modified:
        return min(HEURISTIC_MAX, (date - last_modified) * HEURISTIC_FRACTION)
    return 0.0


def has_explicit_freshness(headers: Mapping[str, str]) -> bool:
    """Whether the response carries its own expiry (``s-maxage``/``max-age``/``Expires``)."""
    directives = parse_cache_control(headers.get("cache-control"))
    return _explicit_lifetime(directives, headers, 0.0) is not None


def _explicit_lifetime(cc: Mapping[str, str | None], headers: Mapping[str, str],
                       response_time: float | None) -> float | None:
    for name in ("s-maxage", "max-age"):  # §4.2.1: s-maxage first for a shared cache
        seconds = _seconds(cc, name)
        if seconds is not None:
            return seconds
        if name in cc:
            return 0.0  # §4.2.1: an invalid max-age is treated as stale
    if "expires" in headers:
        expires = http_date(headers["expires"])
        if expires is None:
            return 0.0  # §5.3: an invalid Expires means "already expired"
        # RFC 9110 §6.6.1: without a Date, the time the response was received stands in
        date = http_date(headers.get("date")) or response_time
        if date is not None:
            return max(0.0, expires - date)
    return None


def corrected_initial_age(headers: Mapping[str, str], request_time: float,
                          response_time: float) -> float:
    """RFC 9111 §4.2.3: the age a response already had when it arrived here.

    Counting the upstream's ``Age`` is what keeps a chain of caches (edge → shield) from
    extending freshness: the edge starts where the shield left off. An invalid ``Age`` is
    ignored (§5.1).
    """
    date = http_date(headers.get("date"))
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    age_value = float(int_header(first_member(headers.get("age"))) or 0)
    response_delay = max(0.0, response_time - request_time)
    return max(apparent_age, age_value + response_delay)


@dataclass(frozen=True, slots=True)
class Freshness:
    """When a stored response was received, how old it was then, and how long it lives."""

    response_time: float
    initial_age: float
    lifetime: float
    must_revalidate: bool = False
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0

    def age(self, now: float) -> float:
        """``current_age`` of RFC 9111 §4.2.3."""
        return self.initial_age + max(0.0, now - self.response_time)

    def is_fresh(self, now: float) -> bool:
        """§4.2: fresh while the lifetime exceeds the current age."""
        return self.lifetime > self.age(now)

    def remaining(self, now: float) -> float:
        """Seconds of freshness left (0 when stale)."""
        return max(0.0, self.lifetime - self.age(now))

    def may_serve_stale_while_revalidating(self, now: float) -> bool:
        """RFC 5861 §3: stale within the ``stale-while-revalidate`` window."""
        if self.must_revalidate:
            return False
        return self.age(now) - self.lifetime <= self.stale_while_revalidate

    def may_serve_stale_on_error(self, now: float) -> bool:
        """§4.2.4 with RFC 5861 ``stale-if-error``; ``must-revalidate`` forbids it."""
        if self.must_revalidate:
            return False
        return self.age(now) - self.lifetime <= self.stale_if_error


def freshness_for(tier: str, content_class: ContentClass | None, status: int,
                  headers: Mapping[str, str], *, request_time: float, response_time: float,
                  negative_ttl: float, stale_if_error: float = 0.0,
                  stale_while_revalidate: float = 0.0,
                  upstream_stale: bool = False) -> Freshness:
    """The `Freshness` of a response just received from upstream.

    ``upstream_stale``: the upstream cache said it served this stale (``X-Cache: STALE``); a
    downstream tier must not turn that into a fresh copy, so its lifetime here is zero.
    """
    cc = parse_cache_control(headers.get("cache-control"))
    swr = _seconds(cc, "stale-while-revalidate")
    sie = _seconds(cc, "stale-if-error")
    lifetime = 0.0 if upstream_stale else freshness_lifetime(
        tier, content_class, status, headers, negative_ttl=negative_ttl,
        response_time=response_time)
    return Freshness(
        response_time=response_time,
        initial_age=corrected_initial_age(headers, request_time, response_time),
        lifetime=lifetime,
        # §5.2.2.10: s-maxage implies proxy-revalidate for a shared cache
        must_revalidate=bool({"must-revalidate", "proxy-revalidate", "no-cache", "s-maxage"}
                             & cc.keys()),
        stale_while_revalidate=stale_while_revalidate if swr is None else swr,
        stale_if_error=stale_if_error if sie is None else sie,
    )


def downstream_cache_control(content_class: ContentClass | None, tier: str,
                             upstream_value: str | None) -> str | None:
    """The ``Cache-Control`` a node sends to its clients.

    For a configured class the node states its own tier's TTL (``immutable`` for media, which
    never changes under its URL, seed 000 "Cache Invalidation"); otherwise the upstream's value
    passes through unchanged, as a shared cache must forward it.
    """
    if content_class is None:
        return upstream_value
    value = f"public, max-age={int(content_class.ttl.for_tier(tier))}"
    return value + ", immutable" if content_class.immutable else value


# --- integrity ---

_SHA256_PATH = re.compile(r"/v/t1/([0-9a-f]{64})")


def expected_sha256(path: str, headers: Mapping[str, str]) -> str | None:
    """The SHA-256 (hex) a body must have: from a content-addressed media path
    (``/v/t1/<sha256>``, DESIGN "Integrity"), else from ``Repr-Digest`` (RFC 9530 §3)."""
    if m := _SHA256_PATH.fullmatch(path):
        return m.group(1)
    return digest_sha256(headers.get("repr-digest"))


def body_checks(content_digest: str | None, representation: str | None, body_start: int,
                body_length: int | None, length: int | None) -> tuple[tuple[str, ...], bool]:
    """The SHA-256s (hex) an answer's body must have before a cache lets its last byte go,
    and whether the representation's is among them (DESIGN "Integrity").

    ``content_digest``: the answer's ``Content-Digest`` field, which covers this message's
    content, the partial bytes of a 206 (RFC 9530 §2); ``representation``: the SHA-256 of the
    whole representation (content address, ``Repr-Digest`` §3), which applies only when the
    body is all of it. A body of unknown extent is not checked as it is filled.
    """
    if body_length is None or length is None:
        return (), False
    checks = [] if content_digest is None else [digest_sha256(content_digest)]
    whole = representation is not None and body_start == 0 and body_length == length
    if whole:
        checks.append(representation)
    return tuple(c for c in checks if c is not None), whole


# --- slices ----------------------------------------------------------------------------------


def slice_span(start: int, end: int, slice_size: int) -> range:
    """Indexes of the aligned slices that cover bytes ``start..end`` (inclusive)."""
    return range(start // slice_size, end // slice_size + 1)


def slice_bounds(index: int, slice_size: int, length: int) -> tuple[int, int]:
    """Inclusive byte bounds of slice ``index`` of an object of ``length`` bytes."""
    start = index * slice_size
    return start, min(length, start + slice_size) - 1


def slice_count(length: int, slice_size: int) -> int:
    """How many slices an object of ``length`` bytes has (an empty object has one, empty)."""
    return max(1, -(-length // slice_size))


def last_whole_slice(start: int, end: int, length: int, slice_size: int) -> int | None:
    """The last slice an answer of bytes ``start..end - 1`` (``start`` aligned) holds whole,
    of an object of ``length`` bytes; None if it holds none. An answer may carry fewer bytes
    than asked for (RFC 9110 §15.3.7: its Content-Range says which); one that reaches the
    end holds the object's last, short slice whole."""
    covered = end if end == length else end - end % slice_size
    return (covered - 1) // slice_size if covered > start else None
