"""What a fast-lane answer is made of: the one byte range a request asks for (resolved once
per Range value and length), the stored fields of an object encoded once, a range kept for
asking again, and the answer itself (`Hit`)."""

from __future__ import annotations

import functools
from typing import NamedTuple

from ..http import ByteRange, RangeNotSatisfiable, parse_range, resolve_ranges
from .hot import SliceId
from .meta import ObjectMeta
from .slicefiles import FilePiece

# Range values remembered per worker, the least recently used dropped first (a video player
# repeats a few)
MEMO_SIZE = 4096

Fields = list[tuple[bytes, bytes]]

WHOLE = True  # a Range to ignore (RFC 9110 §14.2): the whole answer
STEPS = False  # 416 or several ranges: the steps answer them


@functools.lru_cache(maxsize=MEMO_SIZE)  # pure: a video player repeats a few Range values
def one_range(value: bytes, length: int) -> tuple[ByteRange, bytes, bytes] | bool:
    """The one range ``value`` asks of ``length`` bytes with its Content-Range and
    Content-Length values; `WHOLE` or `STEPS` else."""
    specs = parse_range(value.decode("latin-1"))
    if specs is None:
        return WHOLE
    try:
        ranges = resolve_ranges(specs, length)
    except RangeNotSatisfiable:
        ranges = []
    if len(ranges) != 1:
        return STEPS
    rng = ranges[0]
    return rng, rng.content_range(length).encode(), str(rng.length).encode()


def field_pairs(lines: bytes) -> Fields:
    """The (name, value) pairs of encoded ``name: value`` lines (`field_lines` undone)."""
    return [(name, value) for name, _, value in
            (line.partition(b": ") for line in lines.split(b"\r\n") if line)]


class Hit(NamedTuple):
    """A fast answer: fixed fields (encoded lines), the ones of this moment, and the body."""

    meta: ObjectMeta
    status: int
    fixed_lines: bytes
    more: Fields
    body: bytes | memoryview | FilePiece  # a piece only where the caller may send files

    @property
    def fixed(self) -> Fields:
        """The fixed fields as pairs (for an ASGI ``send``)."""
        return field_pairs(self.fixed_lines)


class StoredFields(NamedTuple):
    """The stored fields of one object's facts, encoded once (only as lines: a few thousand
    objects' are kept, and pairs too cost a worker ~10 MiB more)."""

    meta: ObjectMeta
    lines: bytes
    dated: bool
    whole: bool  # False: no whole answer from here (several slices, a hash to check)
    whole_lines: bytes  # what a whole answer adds: its length and digest


class KeptRange(NamedTuple):
    """A range answered from one slice, its fields encoded: asked for again while the facts
    and the slice stay in memory, it is answered from here (a seek to a popular spot, a
    player's repeated range) without resolving the range or the fields again."""

    meta: ObjectMeta
    sid: SliceId
    start: int  # within the slice
    end: int
    lines: bytes  # the stored fields, Content-Range and Content-Length
    dated: bool
