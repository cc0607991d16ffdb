"""Fills in flight: `SliceFill` (one slice's temp file, followed as it grows) and
`SpanFetch` (one upstream request and the slices it fills)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UpstreamError
from .beresp import BeResp


class SliceFill:
    """One slice being written from upstream; readers follow its temp file as it grows."""

    def __init__(self, key: str, index: int, temp: Path, span: SpanFetch) -> None:
        self.key = key
        self.span = span
        self.index = index
        self.temp = temp
        self.fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.written = 0
        self.visible = 0  # bytes followers may send; lags `written` while a hash is pending
        self.hold_last = False  # the object's last byte waits for its digest check
        self.expected: int | None = None
        self.version: str | None = None
        self.done = False
        self.discard = False  # purged while filling: serve followers, store nothing
        self.error: BaseException | None = None
        self._progress = asyncio.Event()

    def reader(self) -> int:
        """A private descriptor for a follower (valid even after the temp file is renamed)."""
        if self.fd >= 0:
            return os.dup(self.fd)
        # Released already: only an uncacheable fill's temp file lingers for late followers.
        return os.open(self.temp, os.O_RDONLY)

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes and wake followers."""
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, self.written)
            self.written += n
            view = view[n:]
        held = self.hold_last and self.expected is not None and self.written >= self.expected
        self.visible = self.written - 1 if held else self.written
        self._notify()

    def finish(self) -> None:
        """Mark complete (and verified) and wake followers."""
        self.done = True
        self.visible = self.written
        self._notify()

    def fail(self, error: BaseException) -> None:
        """Mark failed: followers abort rather than deliver a short body."""
        if not self.done:
            self.error = error
            self._notify()

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def wait_beyond(self, position: int, timeout: float) -> None:
        """Wait until more than ``position`` bytes are written, or the fill ended."""
        if self.visible > position or self.done or self.error is not None:
            return
        try:
            await asyncio.wait_for(self._progress.wait(), timeout)
        except TimeoutError:
            raise UpstreamError(f"no progress from upstream for {timeout:.0f}s") from None

    def close(self) -> None:
        """Close the writer's descriptor (followers keep their own)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


@dataclass
class SpanFetch:
    """One upstream request covering slices ``first..last`` (``last`` None: to the end)."""

    key: str
    first: int
    last: int | None
    headers_ready: asyncio.Future[BeResp] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    fills: dict[int, SliceFill] = field(default_factory=dict)
    digest: str | None = None  # expected SHA-256 (hex) of the whole representation
    hasher: Any = None  # running SHA-256 when this span carries the whole body from byte 0
