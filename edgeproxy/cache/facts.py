"""Facts of stored objects: how an upstream answer becomes an `ObjectMeta`, by policy."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ..config import Config, ContentClass
from ..errors import StorageFault, UpstreamProtocolError
from ..http import combine_fields
from . import fields, policy
from .beresp import BeResp
from .flight import Flight
from .meta import ObjectMeta
from .store import CacheStore


@dataclass(frozen=True)
class FlightContext:
    """What the request that leads a flight knows: its stored copy and its own fields."""

    req_headers: dict[str, str]
    stale: ObjectMeta | None = None  # a stored copy being revalidated
    known: ObjectMeta | None = None  # a fresh object whose missing slices are fetched
    private: bool = False  # the request carries credentials (RFC 9111 §3.5)
    absent: bool = False  # nothing at all was stored under the key, no other variant either


def hash_values(values: tuple[str, ...] | None) -> str:
    """A short, stable name for a request's Vary values."""
    joined = "\0".join(values) if values is not None else "*"
    return hashlib.blake2b(joined.encode(), digest_size=8).hexdigest()


def variant_version(version: str, vary: tuple[str, ...],
                    vary_values: tuple[str, ...] | None) -> str:
    """The version an answer of ``version`` is stored under: a varying object's names its
    variant too, so that variants of one key never share slices, whatever their validators."""
    return f"{version}|{hash_values(vary_values)}" if vary else version


class FactsContradicted(UpstreamProtocolError):
    """An answer contradicts the stored facts of its own representation (same validator,
    another complete length): the node drops the object, and the next request fetches it."""


def contradiction(stored_length: int | None, asked: int, status: int, length: int | None,
                  same: bool) -> str | None:
    """Why an answer to a request for a stored object's bytes from ``asked`` on shows the
    object's stored complete length wrong; None when it does not. ``length``: the complete
    length the answer states; ``same``: it names the stored representation (validator).

    - A 206 of the same representation with another complete length: one of the two
      answers was wrong (a length too short served the object cut, as complete).
    - A 416 to bytes inside the stored length: a range is unsatisfiable only when it starts
      at or past the current length (RFC 9110 §14.1.1, §15.5.17), so the stored length is
      wrong, or the object changed. An origin whose 206s overstated the length answered the
      bytes past its real end 416: every whole answer was cut there, for the facts' life.
    """
    if stored_length is None:
        return None
    if status == 416 and asked < stored_length:
        stated = f" (it states {length} bytes)" if length is not None else ""
        return (f"upstream finds bytes from {asked} on unsatisfiable{stated}, in an object "
                f"stored as {stored_length} bytes")
    if status == 206 and same and length is not None and length != stored_length:
        return f"upstream states {length} bytes where the stored facts say {stored_length}"
    return None


@dataclass
class Plan:
    """What the node's facts decided for an answer (see `Facts.plan`)."""

    kind: Literal["store", "direct", "not_modified"]
    meta: ObjectMeta  # the facts to deliver with (stored or fleeting)
    digest: str | None = None  # the SHA-256 (hex) the whole body must have
    store_meta: Literal["now", "with_body", "end", "no"] = "now"


class Facts:
    """Builds and stores `ObjectMeta` for one node (tier) from upstream answers."""

    def __init__(self, config: Config, tier: str, store: CacheStore) -> None:
        self.config = config
        self.tier = tier
        self.store = store
        # The node's for its lifetime, as its flights cut answers by it: facts of a reloaded
        # config's other size told readers to find bytes where no slice holds them (wrong
        # bytes in complete answers, after a SIGHUP; found from outside).
        self.slice_size = config.cache.slice_size
        self.classes: dict[str, ContentClass] = {c.name: c for c in config.content_classes}

    def class_of(self, key: str, content_type: str | None) -> ContentClass | None:
        """The configured content class of ``key`` (None: the default class)."""
        return policy.classify(key.partition("?")[0], content_type, self.config.content_classes)

    def plan(self, flight: Flight, beresp: BeResp) -> Plan:
        """Decide what an answer becomes, storing its facts where they are due now."""
        ctx: FlightContext = flight.context
        key = flight.key
        if beresp.status == 304 and ctx.stale is not None:
            stale = ctx.stale
            if not fields.updates_stored(stale.etag, stale.last_modified, beresp.etag,
                                         beresp.last_modified):
                raise FactsContradicted(
                    f"a 304 for {key} names another representation ({beresp.etag}, "
                    f"{beresp.last_modified}) than the stored copy's: dropped, fetched anew")
            return Plan("not_modified", self.revalidated(key, stale, beresp))
        hmap = policy.targeted(beresp.header_map)
        cls = self.class_of(key, beresp.content_type) if beresp.status in (200, 206) else None
        vary = fields.vary_fields(hmap.get("vary"))
        vary_values = fields.vary_values(vary, ctx.req_headers)
        meta = self._meta(key, beresp, cls, vary, vary_values, hmap)
        storable = (
            vary_values is not None
            and beresp.status not in (304, 416)
            and (beresp.status != 206 or beresp.length is not None)
            and policy.is_storable(
                meta.status, policy.parse_cache_control(ctx.req_headers.get("cache-control")),
                policy.parse_cache_control(hmap.get("cache-control")),
                has_authorization=ctx.private,
                has_explicit_freshness=policy.has_explicit_freshness(hmap),
                has_class=cls is not None)
        )
        known = ctx.known or ctx.stale
        if known is not None:
            why = contradiction(known.length, flight.first * known.slice_size, beresp.status,
                                meta.length, known.version == meta.version)
            if why is not None:
                raise FactsContradicted(f"{key} at {known.version}: {why}: dropped, fetched "
                                        "anew next time")
        if not storable:
            return Plan("direct", meta)
        if known is not None and known.version == meta.version and beresp.status == 206:
            return Plan("store", known, policy.expected_sha256(key.partition("?")[0], hmap),
                        store_meta="no")  # missing slices of an object we hold
        # only a 200/206 carries the representation a content address or Repr-Digest names
        digest = policy.expected_sha256(key.partition("?")[0], hmap) \
            if beresp.status in (200, 206) else None
        try:
            if known is not None:
                self.store.purge(key)  # a new representation: old slices must never splice
            if meta.length is not None and not self.store.room.admits(key, meta.length):
                return Plan("direct", meta)  # larger than the cache can ever hold: pass it
            if meta.length is None:
                return Plan("store", meta, digest, store_meta="end")
            if policy.slice_count(meta.length, meta.slice_size) == 1:
                return Plan("store", meta, digest, store_meta="with_body")
            self.store.set_meta(key, meta)
            # Other workers' requests for it wait on these facts (`foreign_facts`): in the
            # index within milliseconds, not at the next group commit; one transaction
            # beside many slices.
            self.store.commit_soon()
        except StorageFault:
            return Plan("direct", meta)  # the disk is failing: pass this answer through
        return Plan("store", meta, digest, store_meta="now")

    def head_facts(self, key: str, beresp: BeResp,
                   req_headers: dict[str, str]) -> ObjectMeta | None:
        """The facts a HEAD answer gives (RFC 9111 §4.3.5), stored when storable; None when
        they may not be kept (their object is then fetched whole)."""
        hmap = policy.targeted(beresp.header_map)
        cls = self.class_of(key, beresp.content_type)
        vary = fields.vary_fields(hmap.get("vary"))
        vary_values = fields.vary_values(vary, req_headers)
        meta = self._meta(key, beresp, cls, vary, vary_values, hmap)
        if vary_values is None or meta.unvalidated or not policy.is_storable(
                200, policy.parse_cache_control(req_headers.get("cache-control")),
                policy.parse_cache_control(hmap.get("cache-control")), has_authorization=False,
                has_explicit_freshness=policy.has_explicit_freshness(hmap),
                has_class=cls is not None):
            return None
        try:
            self.store.set_meta(key, meta)
        except StorageFault:
            return None
        return meta

    def _meta(self, key: str, beresp: BeResp, cls: ContentClass | None, vary: tuple[str, ...],
              vary_values: tuple[str, ...] | None,
              hmap: Mapping[str, str] | None = None) -> ObjectMeta:
        status = 200 if beresp.status == 206 else beresp.status
        return ObjectMeta(
            status=status, length=beresp.length, etag=beresp.etag,
            last_modified=beresp.last_modified, content_type=beresp.content_type,
            headers=tuple(
                (n, v) for n, v in beresp.headers if n.lower() not in policy.REGENERATED
                and not (beresp.status == 206 and n.lower() == "content-range")
            ),
            freshness=self.freshness(cls, status, beresp,
                                     hmap if hmap is not None else beresp.header_map),
            content_class=cls.name if cls else policy.DEFAULT_CLASS,
            version=variant_version(beresp.version, vary, vary_values),
            slice_size=self.slice_size, upstream_cache=beresp.x_cache,
            vary=vary, vary_values=vary_values,
        )

    def freshness(self, cls: ContentClass | None, status: int, beresp: BeResp,
                  headers: Mapping[str, str]) -> policy.Freshness:
        """Freshness of an answer at this tier, with the configured stale windows."""
        cache = self.config.cache
        return policy.freshness_for(
            self.tier, cls, status, headers, request_time=beresp.request_time,
            response_time=beresp.response_time, negative_ttl=cache.negative_ttl,
            stale_if_error=cache.stale_if_error,
            stale_while_revalidate=cache.stale_while_revalidate,
            upstream_stale=(beresp.x_cache or "").startswith("STALE"),
        )

    def revalidated(self, key: str, stale: ObjectMeta, beresp: BeResp) -> ObjectMeta:
        """RFC 9111 §4.3.4: a 304 updates the stored headers and freshness; the body stays."""
        fresh_headers = {n.lower(): v for n, v in beresp.headers
                         if n.lower() not in policy.REGENERATED}
        merged = [(n, fresh_headers.pop(n.lower(), v)) for n, v in stale.headers]
        merged += list(fresh_headers.items())
        cls = self.classes.get(stale.content_class)
        hmap = policy.targeted(combine_fields(merged))
        meta = dataclasses.replace(
            stale, headers=tuple(merged), freshness=self.freshness(cls, stale.status, beresp,
                                                                   hmap),
            upstream_cache=beresp.x_cache)
        with contextlib.suppress(StorageFault):  # served refreshed, kept as it was
            # (unless another worker stored a newer version meanwhile: that one stays)
            self.store.set_meta(key, meta, if_version=stale.version)
        return meta
