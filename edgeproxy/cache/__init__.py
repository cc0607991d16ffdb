"""The caching proxy shared by edge and shield nodes."""

from __future__ import annotations

from ..config import Config
from .node import CacheNode
from .store import CacheStore, ObjectMeta

__all__ = ["CacheNode", "CacheStore", "ObjectMeta", "create_app"]


def create_app(config: Config, tier: str, *, upstream: str | None = None) -> CacheNode:
    """The ASGI app of an ``edge`` or ``shield`` node in front of ``upstream``."""
    return CacheNode(config, tier, upstream=upstream)
