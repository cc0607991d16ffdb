"""What a node knows of one cached representation, apart from its body: its facts."""

from __future__ import annotations

import dataclasses
import marshal
import operator
import time
from dataclasses import dataclass, field
from typing import Any

from ..http import if_range_matches, strong_date
from .policy import Freshness, expected_sha256


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
        return self.evolve(length=length)

    def evolve(self, **changes: Any) -> ObjectMeta:
        """These facts with ``changes``: `dataclasses.replace`, for a fraction of its cost
        (5.7 -> 1.0 us: it walks the fields and runs ``__init__``; here the values were
        checked when first made, and a copy of them is enough)."""
        unknown = changes.keys() - _FIELDS
        if unknown:
            raise TypeError(f"ObjectMeta has no field {sorted(unknown)}")
        new = object.__new__(ObjectMeta)
        vars(new).update(vars(self), **changes)
        return new

    @property
    def unvalidated(self) -> bool:
        """Whether no strong validator ties other answers' bytes to this one's (the version
        is a token of one answer: `BeResp.version`), so none may join its slices."""
        return self.version.startswith("u") or self.if_range is None

    @property
    def if_range(self) -> str | None:
        """The validator a fetch of missing slices sends in ``If-Range`` (RFC 9110 §13.1.5):
        the strong ETag, or a strong Last-Modified when there is no ETag at all; None when
        there is neither (facts stored before the rule was this strict included)."""
        if self.etag:
            return None if self.etag.startswith("W/") else self.etag
        if self.last_modified is not None and \
                self.version == f"{self.length}|{self.last_modified}" and \
                strong_date(self.last_modified, self.header("date"),
                            self.freshness.response_time):
            return self.last_modified
        return None

    def if_range_fails(self, if_range: str | None) -> bool:
        """Whether a request's ``If-Range`` does not match this stored 200 (RFC 9110
        §13.1.5): its Range is then ignored and the answer is the whole representation."""
        return if_range is not None and self.status == 200 and not if_range_matches(
            if_range, self.etag, self.last_modified, self.header("date"),
            self.freshness.response_time)

    def header(self, name: str) -> str | None:
        """The first stored end-to-end header ``name`` (case-insensitive)."""
        lname = name.lower()
        return next((v for n, v in self.headers if n.lower() == lname), None)



# Facts as the index stores them: this tag, then the fields by `marshal`. A pickled dataclass
# loads in about twice the time (its classes are looked up through the import system) and is
# stored in three times: both were most of what reading or writing an object's facts cost.
def whole_body_digest(key: str, meta: ObjectMeta) -> str | None:
    """The SHA-256 a whole 200 body of ``meta`` must have (content-addressed path,
    Repr-Digest); None when there is none to check, or its slices already matched it."""
    if meta.status != 200 or meta.verified:
        return None  # verified: its slices came from fills whose whole hash matched
    headers = {n.lower(): v for n, v in meta.headers}
    return expected_sha256(key.partition("?")[0], headers)


# Anything else under a facts key (a pickle of an older version, another tag) reads as "not
# stored": the object is fetched again.
_TAG = b"F1"
_FIELDS = tuple(f.name for f in dataclasses.fields(ObjectMeta))
_VALUES = operator.attrgetter(*_FIELDS)
_FRESH = _FIELDS.index("freshness")
_FRESH_VALUES = operator.attrgetter(*(f.name for f in dataclasses.fields(Freshness)))


def encode(meta: ObjectMeta) -> bytes:
    """``meta`` as the index stores it (`decode` reads it back)."""
    values = list(_VALUES(meta))
    values[_FRESH] = _FRESH_VALUES(meta.freshness)
    return _TAG + marshal.dumps(tuple(values), 4)


def decode(data: bytes) -> ObjectMeta | None:
    """Facts stored by `encode`; None for anything else."""
    if data[:2] != _TAG:
        return None
    try:
        values = list(marshal.loads(data[2:]))
        values[_FRESH] = Freshness(*values[_FRESH])
    except (ValueError, EOFError, TypeError, IndexError):
        return None
    if len(values) != len(_FIELDS):
        return None
    meta = object.__new__(ObjectMeta)
    meta.__dict__.update(zip(_FIELDS, values, strict=True))  # frozen: as __init__ sets them
    return meta
