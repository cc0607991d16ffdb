"""The names of a node's index entries: an object's facts, its variants and its slices.

Index keys are plain strings: diskcache stores them as they are, where a tuple key would be
pickled (and pickle-optimised) on every lookup — the largest cost of a hit, once measured.
Every entry of an object carries the object's key as its tag, so a purge is one statement.
"""

from __future__ import annotations

META_PREFIX = "m\0"

# "c": a checksummed slice. Slices stored before checksums ("s") are never read, so they are
# fetched again rather than served unchecked, and age out of the index.
SLICE_PREFIX = "c\0"


def tag_of(key: str) -> str:
    """The tag of every index entry of the object ``key``."""
    return key


def meta_key(key: str) -> str:
    """The entry of the object's latest facts."""
    return META_PREFIX + key


def variant_key(key: str, values: tuple[str, ...]) -> str:
    """The entry of the object's facts for one set of Vary values (RFC 9111 §4.1)."""
    return "v\0" + "\0".join(values) + "\0\0" + key


def slice_key(key: str, version: str, index: int) -> str:
    """The entry of slice ``index`` of the object at ``version``."""
    return f"{SLICE_PREFIX}{index}\0{version}\0{key}"


def slice_of(skey: str) -> tuple[str, int]:
    """The object key and slice index a slice entry names."""
    _kind, index, _version, key = skey.split("\0", 3)
    return key, int(index)
