"""Fills in flight: `SliceFill` (one slice's temp file, followed as it grows) and
`SpanFetch` (one upstream request and the slices it fills)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
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


# How often a follower in another worker process looks at a foreign fill's progress.
FOREIGN_POLL = 0.005


class ForeignFill:
    """A slice another worker process is filling, followed through its temp file.

    There is no event to wait on across processes, so progress is polled. The last byte is
    held back until the leader has committed the slice (its lock gone and the slice stored):
    the leader may still discard the body (a failed digest), and a follower must then fail too.
    """

    def __init__(self, key: str, index: int, temp: Path, version: str | None,
                 is_running: Callable[[], bool], is_stored: Callable[[], bool]) -> None:
        self.key = key
        self.index = index
        self.version = version
        self.fd = os.open(temp, os.O_RDONLY)  # FileNotFoundError: already committed or gone
        self._is_running = is_running
        self._is_stored = is_stored
        self.visible = 0
        self.done = False
        self.error: BaseException | None = None

    def reader(self) -> int:
        """A private descriptor for one delivery."""
        return os.dup(self.fd)

    def _refresh(self) -> None:
        if self._is_running():
            self.visible = max(0, os.fstat(self.fd).st_size - 1)
        elif self._is_stored():
            # measured after the commit was seen: the leader may have written since
            self.visible, self.done = os.fstat(self.fd).st_size, True
        else:
            self.error = UpstreamError("the worker filling this slice gave up")

    async def wait_beyond(self, position: int, timeout: float) -> None:
        """Poll until more than ``position`` bytes may be sent, or the fill ended."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            self._refresh()
            if self.visible > position or self.done or self.error is not None:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise UpstreamError(f"no progress from the filling worker for {timeout:.0f}s")
            await asyncio.sleep(FOREIGN_POLL)

    def close(self) -> None:
        """Close our descriptor."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
