"""What a node did for one request, and the one place that words it for ``X-Cache``."""

from __future__ import annotations

import enum


class Verdict(enum.Enum):
    """A request's outcome at one tier (Varnish's hit/miss/pass, plus stale and revalidated)."""

    HIT = "HIT"  # served from storage, no upstream traffic
    MISS = "MISS"  # some bytes or facts came from upstream
    PASS = "PASS"  # not a cache matter: relayed both ways, nothing stored
    STALE = "STALE"  # a stale copy served (upstream failing, or refreshed in the background)
    REVALIDATED = "REVALIDATED"  # a stale copy confirmed by a 304, then served
    ERROR = "ERROR"  # answered with an error by this node


def x_cache(verdict: Verdict, node: str, upstream: str | None = None) -> str:
    """The ``X-Cache`` value: this tier's verdict, then the upstream's when bytes came from it.

    A hit names only this node: whatever the upstream said when the copy was filled is history.
    """
    own = f"{verdict.value} from {node}"
    if upstream and verdict is not Verdict.HIT:
        return f"{own}, {upstream}"
    return own
