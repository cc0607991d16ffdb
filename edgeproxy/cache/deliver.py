"""`deliver`: write a cached (or filling) object to the client, whole or by ranges.

Bodies are assembled from slices: stored ones are read from the index (small) or their file,
slices still filling are followed as they grow. Nothing holds a whole body in memory.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UpstreamError
from ..http import ByteRange
from . import policy
from .fetch import Fetcher
from .fills import ForeignFill, SliceFill, SpanFetch
from .store import CacheStore, SliceBody

Send = Callable[[dict[str, Any]], Awaitable[None]]

# A slice can be claimed by another worker between our look and our claim; look again this
# many times before giving up.
CLAIM_ATTEMPTS = 3


@dataclass
class BodySource:
    """Where the bytes of one object version come from, and the readers already attached."""

    store: CacheStore
    fetcher: Fetcher
    key: str
    path: str
    version: str | None  # None: an uncacheable answer, readable only from attached fills
    length: int
    slice_size: int
    read_size: int
    wait_timeout: float
    span: SpanFetch | None = None  # the fetch this request started or joined, if any
    attached: dict[int, tuple[SliceFill | ForeignFill, int]] = field(default_factory=dict)
    prefetched: dict[int, SliceBody] = field(default_factory=dict)  # looked up before headers
    fetched: bool = False  # did this delivery need any upstream bytes?

    def attach(self, indexes: range) -> None:
        """Take a reader on every in-flight fill among ``indexes`` *now*, synchronously.

        A fill unregisters itself when done; holding a descriptor keeps its bytes readable
        (for an uncacheable answer they are never committed anywhere else).
        """
        for i in indexes:
            fill = self.fetcher.fill_for(self.key, i)
            if fill is None and self.span is not None and self.version is None:
                fill = self.span.fills.get(i)
            if fill is not None and self.version is not None \
                    and self.store.has_slice(self.key, self.version, i):
                continue  # a refetch of a slice we hold (revalidation): serve ours
            if fill is not None and fill.error is None and i not in self.attached:
                self.attached[i] = (fill, fill.reader())
                self.fetched = True

    def release(self) -> None:
        """Close attached descriptors."""
        for _fill, fd in self.attached.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.attached.clear()
        for body in self.prefetched.values():
            if not isinstance(body, bytes):
                body.close()
        self.prefetched.clear()

    async def stream(self, rng: ByteRange, send: Send) -> int:
        """Send bytes ``rng`` of the object; returns the number sent."""
        sent = 0
        span = policy.slice_span(rng.start, rng.end, self.slice_size)
        for index in span:
            lo, hi = policy.slice_bounds(index, self.slice_size, self.length)
            start, end = max(rng.start, lo) - lo, min(rng.end, hi) - lo
            sent += await self._stream_slice(index, start, end, span.stop - 1, send)
        return sent

    async def _stream_slice(self, index: int, start: int, end: int, last: int,
                            send: Send) -> int:
        if index not in self.attached and self.version is not None:
            body = self.prefetched.pop(index, None) or \
                self.store.get_slice(self.key, self.version, index)
            if body is not None:
                return await _send_stored(body, start, end, self.read_size, send)
            for _attempt in range(CLAIM_ATTEMPTS):
                if self.fetcher.fill_for(self.key, index) is not None:
                    break
                foreign = await self.fetcher.foreign_fill(self.key, index, self.version,
                                                          self.wait_timeout)
                if foreign is not None:
                    # another worker process fills it: follow its file rather than refetch
                    self.fetched = True
                    try:
                        return await self._follow(foreign, foreign.fd, start, end, send)
                    finally:
                        foreign.close()
                body = self.store.get_slice(self.key, self.version, index)  # just committed?
                if body is not None:
                    return await _send_stored(body, start, end, self.read_size, send)
                if self.fetcher.start_span(self.key, self.path, index, last,
                                           self.version) is not None:
                    break
            self.attach(range(index, last + 1))
        if index not in self.attached:
            raise UpstreamError(f"slice {index} is neither stored nor being filled")
        fill, fd = self.attached[index]
        return await self._follow(fill, fd, start, end, send)

    async def _follow(self, fill: SliceFill | ForeignFill, fd: int, start: int, end: int,
                      send: Send) -> int:
        pos = start
        while pos <= end:
            if fill.error is not None:
                raise UpstreamError(f"fill failed: {fill.error}")
            if fill.version is not None and self.version is not None \
                    and fill.version != self.version:
                raise UpstreamError("the object changed upstream during delivery")
            available = min(fill.visible, end + 1)
            if available > pos:
                data = os.pread(fd, min(available - pos, self.read_size), pos)
                if not data:
                    raise UpstreamError("fill file shorter than reported")
                await send({"type": "http.response.body", "body": data, "more_body": True})
                pos += len(data)
            elif fill.done:
                raise UpstreamError("fill ended short of the slice")
            else:
                await fill.wait_beyond(pos, self.wait_timeout)
        return end - start + 1


async def _send_stored(body: Any, start: int, end: int, read_size: int, send: Send) -> int:
    if isinstance(body, bytes):
        await send({"type": "http.response.body", "body": body[start : end + 1],
                    "more_body": True})
        return end - start + 1
    try:
        fd = body.fileno()
        pos = start
        while pos <= end:
            # Reads come from the page cache for hot slices; a worker-thread hop per chunk
            # would cost more than the read itself.
            data = os.pread(fd, min(end + 1 - pos, read_size), pos)
            if not data:
                raise UpstreamError("stored slice is shorter than its index says")
            await send({"type": "http.response.body", "body": data, "more_body": True})
            pos += len(data)
    finally:
        body.close()
    return end - start + 1


# --- multipart/byteranges (RFC 9110 §14.6) ---------------------------------------------------


@dataclass(frozen=True)
class Multipart:
    """The framing of a multipart/byteranges body for a set of ranges."""

    ranges: list[ByteRange]
    total: int
    content_type: str
    boundary: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def media_type(self) -> str:
        """The response's ``Content-Type``."""
        return f"multipart/byteranges; boundary={self.boundary}"

    def part_head(self, rng: ByteRange, first: bool) -> bytes:
        """The delimiter and headers in front of one part."""
        lead = b"" if first else b"\r\n"
        return lead + (
            f"--{self.boundary}\r\nContent-Type: {self.content_type}\r\n"
            f"Content-Range: {rng.content_range(self.total)}\r\n\r\n"
        ).encode()

    @property
    def closing(self) -> bytes:
        """The final delimiter."""
        return f"\r\n--{self.boundary}--\r\n".encode()

    @property
    def content_length(self) -> int:
        """Exact body length, so the response needs no chunked encoding."""
        heads = sum(len(self.part_head(r, i == 0)) for i, r in enumerate(self.ranges))
        return heads + sum(r.length for r in self.ranges) + len(self.closing)
