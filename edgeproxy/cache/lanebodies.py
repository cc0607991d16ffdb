"""The bodies of fast-lane answers read from stored slices: a range of one slice (from
memory, or read and checked from its file), or the whole of an object as pieces of its
slices' files for the server to send itself."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .meta import ObjectMeta
from .slicefiles import FilePiece

if TYPE_CHECKING:
    from .node import CacheNode

# Answers of up to this many slices go from their files in one go (each found and checked
# before the head goes out); larger ones stream from the steps, slice after slice. The steps
# cost twice the CPU per byte: a 100 MiB hit took ~22 ms of edge CPU there, ~12.7 ms from
# here (nginx ~10; wrk, 64 connections, side by side). Descriptors are the store's kept ones,
# shared by every answer of the object; answers of many distinct objects at once hold up to
# this many each (the server raises its open-files limit: `server.raise_open_files_limit`).
PIECES_MAX = 128


def read_slice(node: CacheNode, key: str, meta: ObjectMeta, index: int, offset: int,
               length: int, piece: bool = False) -> bytes | memoryview | FilePiece | None:
    """``length`` bytes at ``offset`` of a slice: from memory, or read and checked from
    the store (a file slice asked for twice lately is then kept in memory; ``piece``: a
    checked file is handed over unread); None when it is not stored or not as it should
    be (the steps then fetch or check it again)."""
    hot, sid = node.hot, (key, meta.version, index)
    kept = hot.slice(sid)
    if kept is not None:
        view = memoryview(kept)[offset:offset + length]  # no copy of a large range
        return view if len(view) == length else None
    stored = node.store.get_slice(key, meta.version, index)
    if stored is None:
        return None  # missing: the steps fetch it
    if isinstance(stored, bytes):
        data = stored[offset:offset + length]
    elif piece:
        if stored.size >= offset + length:  # (as its check found it: no system call)
            return FilePiece(stored, offset, length)
        stored.close()
        return None
    else:
        with stored:
            fd = stored.fileno()
            size = stored.size
            whole = length < (meta.length or 0) and hot.wants_slice(sid, size)
            data = os.pread(fd, size if whole else length, 0 if whole else offset)
            if not stored.unchanged():
                return None  # written to while read: the steps check it again
        if whole:
            hot.put_slice(sid, data)
            data = data[offset:offset + length]
    return data if len(data) == length else None


def file_pieces(node: CacheNode, key: str, meta: ObjectMeta, first: int, last: int,
                ) -> FilePiece | None:
    """Bytes ``first..last`` of a stored object as pieces of its slices' files (a small
    slice's as its bytes), each slice checked as the steps check one (`Store.get_slice`);
    None when one is not stored whole (being fetched, evicted), or there are too many to
    open at once (the steps then send them one after another)."""
    assert meta.length is not None
    size = meta.slice_size
    low, high = first // size, last // size
    if high - low >= PIECES_MAX:
        return None
    parts: list[FilePiece | bytes] = []
    for index in range(low, high + 1):
        start = first - index * size if index == low else 0
        end = last - index * size if index == high else size - 1
        stored = node.store.get_slice(key, meta.version, index)
        part: FilePiece | bytes | None = None
        if isinstance(stored, bytes):
            part = stored[start:end + 1] if len(stored) > end else None
        elif stored is not None:
            part = FilePiece(stored, start, end + 1 - start)
            if stored.size <= end:
                part.close()
                part = None
        if part is None or (index == low and isinstance(part, bytes)):
            for done in parts:  # (a large range's first slice is never inline)
                if isinstance(done, FilePiece):
                    done.close()
            return None
        parts.append(part)
    head = parts[0]
    assert isinstance(head, FilePiece)
    return FilePiece(head.file, head.offset, head.length, tuple(parts[1:]))
