"""Facts of stored objects: how an upstream answer becomes an `ObjectMeta`, by policy."""

from __future__ import annotations

import dataclasses

from ..config import Config, ContentClass
from . import policy
from .beresp import BeResp
from .store import CacheStore, ObjectMeta


class Facts:
    """Builds and stores `ObjectMeta` for one node (tier) from upstream answers."""

    def __init__(self, config: Config, tier: str, store: CacheStore) -> None:
        self.config = config
        self.tier = tier
        self.store = store
        self.classes: dict[str, ContentClass] = {c.name: c for c in config.content_classes}

    def class_of(self, key: str, content_type: str | None) -> ContentClass | None:
        """The configured content class of ``key`` (None: the default class)."""
        return policy.classify(key.partition("?")[0], content_type, self.config.content_classes)

    def on_headers(self, key: str, beresp: BeResp) -> tuple[str | None, str | None]:
        """Called by a fill when upstream headers arrive: store the facts; return the version
        to store slices under (None: don't) and the SHA-256 the body must have."""
        hmap = beresp.header_map
        digest = policy.expected_sha256(key.partition("?")[0], hmap)
        cls = self.class_of(key, beresp.content_type)
        vary = {v.strip().lower() for v in hmap.get("vary", "").split(",") if v.strip()}
        storable = not (vary - {"accept-encoding"}) and policy.is_storable(
            200, {}, policy.parse_cache_control(hmap.get("cache-control")),
            has_authorization=False, has_explicit_freshness=policy.has_explicit_freshness(hmap),
            has_class=cls is not None,
        )
        if not storable or beresp.length is None:
            return None, digest
        meta = self.meta_from(key, beresp, store=True)
        return meta.version, digest

    def meta_from(self, key: str, beresp: BeResp, *, store: bool) -> ObjectMeta:
        """The facts of a 200/206 answer, stored unless ``store`` is False (uncacheable)."""
        cls = self.class_of(key, beresp.content_type)
        old = self.store.get_meta(key) if store else None
        if old is not None and old.version == beresp.version and \
                old.freshness.is_fresh(beresp.response_time):
            return old  # a slice fill of an object we already know: keep its clock
        meta = ObjectMeta(
            status=200, length=beresp.length, etag=beresp.etag,
            last_modified=beresp.last_modified, content_type=beresp.content_type,
            headers=tuple(
                (n, v) for n, v in beresp.headers if n.lower() not in policy.REGENERATED
            ),
            freshness=self.freshness(cls, 200, beresp, beresp.header_map),
            content_class=cls.name if cls else policy.DEFAULT_CLASS, version=beresp.version,
            slice_size=self.config.cache.slice_size, upstream_cache=beresp.x_cache,
        )
        if store:
            self.store.set_meta(key, meta)
        return meta

    def freshness(self, cls: ContentClass | None, status: int, beresp: BeResp,
                   headers: dict[str, str]) -> policy.Freshness:
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
        hmap = dict(merged)
        meta = dataclasses.replace(stale, headers=tuple(merged),
                                   freshness=self.freshness(cls, 200, beresp, hmap))
        self.store.set_meta(key, meta)
        return meta

    def negative(self, key: str, beresp: BeResp) -> ObjectMeta:
        """The facts of a 404/410, stored briefly (negative caching) when allowed."""
        body = beresp.body or b""
        meta = ObjectMeta(
            status=beresp.status, length=len(body), etag=None, last_modified=None,
            content_type=beresp.content_type,
            headers=tuple((n, v) for n, v in beresp.headers if n.lower() not in policy.REGENERATED),
            freshness=self.freshness(None, beresp.status, beresp, beresp.header_map),
            content_class=policy.DEFAULT_CLASS, version="negative", slice_size=0, body=body,
        )
        hmap = beresp.header_map
        if policy.is_storable(beresp.status, {}, policy.parse_cache_control(
                hmap.get("cache-control")), has_authorization=False,
                has_explicit_freshness=True, has_class=False):
            self.store.set_meta(key, meta)
        return meta
