"""Slice sums between tiers: a node answering another node's fill names the xxh3 of each
whole stored slice its answer carries, and the node below commits a slice only if the bytes
it received hash to that.

Why: stored slices go out by ``sendfile(2)``, which hands the socket page-cache pages by
reference, so a write to a file after the sender's last check reaches the wire; a chaos run
that flipped bytes in a shield's files found edges storing such bytes under their own,
freshly computed xxh3 and serving them as hits until evicted. Every node keeps each slice's
xxh3 with the slice and hashes every slice it fills, so the check mostly compares the
sender's stored sum with the receiver's running one (the sender hashes again only a small
inline slice it sends among files: `of_run`).

An edge's fill asks with ``Edgeproxy-Want-Slice-Sums: <slice size>``; an answer from stored
slices of that size carries ``Edgeproxy-Slice-Sums: <slice size> <first index> <sum>,...``
(16 hex digits each, ``-`` for a slice the answer does not carry whole). Both fields are named in
``Connection``: hop-by-hop (RFC 9110 §7.6.1), never forwarded or stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container, Iterable
from typing import TYPE_CHECKING

from . import checksum
from .slicefiles import FilePiece
from .types import RawHeaders

if TYPE_CHECKING:
    from .deliver import Reply
    from .meta import ObjectMeta
    from .store import CacheStore

__all__ = ["SUMS", "WANT", "asked", "expected", "of_run", "request_fields", "response_fields",
           "size_asked", "with_stored"]

WANT = b"edgeproxy-want-slice-sums"
SUMS = b"edgeproxy-slice-sums"
# The most sums one answer names (~17 bytes each): a fill asks for at most 64 slices
# (`fetch.MAX_RUN`), a whole object answered from files has at most 128 (`PIECES_MAX`).
MAX_SUMS = 256

Sum = int | None


def request_fields(size: int) -> RawHeaders:
    """The fields by which a fill asks for the sums of slices of ``size`` bytes."""
    return [(WANT, b"%d" % size), (b"connection", WANT)]


def asked(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The slice size a request asks sums for, or None (not asked, or not a size)."""
    for name, value in headers:
        if name == WANT:
            return size_asked(value)
    return None


def size_asked(value: bytes) -> int | None:
    """The slice size a ``Edgeproxy-Want-Slice-Sums`` value names, or None."""
    text = value.strip()
    return int(text) if text.isdigit() and len(text) < 16 and int(text) > 0 else None


def response_fields(size: int, first: int, sums: list[Sum]) -> RawHeaders:
    """The answer's fields naming ``sums``, the sums of slices ``first``, ``first + 1``...
    (None: not carried whole); none when no sum is known."""
    while sums and sums[-1] is None:
        sums = sums[:-1]
    while sums and sums[0] is None:
        sums, first = sums[1:], first + 1
    if not sums:
        return []
    listed = b",".join(b"-" if s is None else b"%016x" % s for s in sums[:MAX_SUMS])
    return [(SUMS, b"%d %d %s" % (size, first, listed)), (b"connection", SUMS)]


def of_run(run: FilePiece, start: int, size: int, length: int) -> RawHeaders:
    """`response_fields` for an answer that is ``run``, the bytes of an object of ``length``
    from ``start`` (its first piece), in slices of ``size``: the sum of each slice it
    carries whole, as its checked file's name states it (an inline slice's bytes, checked
    as they were read, are hashed here: they are small)."""
    first = start // size
    sums: list[Sum] = []
    for part in (run, *run.then):
        index = first + len(sums)
        whole = min(size, length - index * size)
        if isinstance(part, FilePiece):
            sums.append(part.file.checksum if part.offset == 0 and part.length == whole
                        else None)
        else:  # (a piece after the first starts at its slice's first byte)
            sums.append(checksum.of(part) if len(part) == whole else None)
    return response_fields(size, first, sums)


def expected(value: str | None, size: int) -> dict[int, int]:
    """The sums an answer names, by slice index, if they are of slices of ``size`` bytes;
    empty when there are none, or they are not well formed (then nothing is checked)."""
    if value is None:
        return {}
    parts = value.split()
    if len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit()) \
            or int(parts[0]) != size:
        return {}
    first = int(parts[1])
    out: dict[int, int] = {}
    for i, item in enumerate(parts[2].split(",")[:MAX_SUMS]):
        if item == "-":
            continue
        if len(item) != 16:
            return {}
        try:
            out[first + i] = int(item, 16)
        except ValueError:
            return {}
    return out


def with_stored(reply: Reply, meta: ObjectMeta, store: CacheStore, key: str,
                headers: Iterable[tuple[bytes, bytes]], filling: Container[int] = ()) -> Reply:
    """``reply`` naming the sums of the slices it carries whole that are stored now (one
    index query; none for slices in ``filling``, being filled: a miss's answer asks
    nothing), where the request asked for slices of this size: a slice sent from another
    source (fetched again meanwhile) has the same bytes, so the same sum."""
    length, size = meta.length, meta.slice_size
    if length is None or reply.multipart is not None or reply.status not in (200, 206) \
            or asked(headers) != size:
        return reply
    start, end = (0, length - 1) if reply.ranges is None else \
        (reply.ranges[0].start, reply.ranges[0].end)
    first = -(-start // size)  # the first slice the answer carries from its first byte
    last = (end + 1) // size - 1 if end + 1 < length else (length - 1) // size
    indexes = range(first, min(last, first + MAX_SUMS - 1) + 1)
    if all(i in filling for i in indexes):
        return reply
    stored = store.slice_sums(key, meta.version, [i for i in indexes if i not in filling])
    extra = response_fields(size, first, [stored.get(i) for i in indexes])
    return dataclasses.replace(reply, headers=[*reply.headers, *(
        (n.decode("latin-1"), v.decode("latin-1")) for n, v in extra)])
