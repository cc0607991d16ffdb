"""What a node knows of one cached representation, apart from its body: its facts."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from .policy import Freshness


@dataclass(frozen=True)
class ObjectMeta:
    """What a node knows of one cached representation, apart from its body."""

    status: int
    length: int | None
    etag: str | None
    last_modified: str | None
    content_type: str | None
    headers: tuple[tuple[str, str], ...]
    freshness: Freshness
    content_class: str
    version: str
    slice_size: int
    upstream_cache: str | None = None
    vary: tuple[str, ...] = ()  # request fields this response varies on (lower-cased)
    vary_values: tuple[str, ...] | None = ()  # the storing request's values of them
    verified: bool = False  # every stored slice came from a fill whose whole hash matched
    # One flight is filling every slice from one whole body that it hashes, and stores none
    # unless the hash matches: readers of these facts leave the hashing to it while it runs
    # (`vouched_send`; a flight that died leaves the flag behind, and readers hash again).
    vouching: bool = False
    stored_at: float = field(default_factory=time.time)

    def with_length(self, length: int) -> ObjectMeta:
        """These facts, for a body whose length became known at its end."""
        return dataclasses.replace(self, length=length)

    def header(self, name: str) -> str | None:
        """The first stored end-to-end header ``name`` (case-insensitive)."""
        lname = name.lower()
        return next((v for n, v in self.headers if n.lower() == lname), None)
