"""The caching proxy shared by edge and shield nodes."""

from __future__ import annotations

from ..config import Config
from .meta import ObjectMeta
from .node import CacheNode
from .store import CacheStore
from .transport import BeReq, Transport, UpstreamResponse

__all__ = ["BeReq", "CacheNode", "CacheStore", "ObjectMeta", "Transport", "UpstreamResponse",
           "create_app"]


def create_app(config: Config, tier: str, *, upstream: str | None = None,
               transport: Transport | None = None) -> CacheNode:
    """The ASGI app of an ``edge`` or ``shield`` node in front of ``upstream`` (or of an
    injected ``transport``: the seam tests use for an in-process upstream)."""
    return CacheNode(config, tier, upstream=upstream, transport=transport)
