"""Fills in flight: `SliceFill` (one slice's file, followed as it grows), `Flight` (one
upstream request and the slices it fills) and `ForeignFill` (a slice another worker fills)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FillAborted, UpstreamTimeout
from .beresp import BeResp

# How often a waiter polls what another worker process does (there is no event across them).
POLL_INTERVAL = 0.005


async def poll(ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``ready()`` holds; the one poll loop of the cache (cross-process waits)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not ready():
        if loop.time() > deadline:
            raise UpstreamTimeout(f"{what}: nothing for {timeout:.0f}s")
        await asyncio.sleep(POLL_INTERVAL)


class SliceFill:
    """One slice being written from upstream into its claim file; readers follow it."""

    def __init__(self, key: str, index: int, path: Path, fd: int, flight: Flight) -> None:
        self.key = key
        self.index = index
        self.path = path
        self.fd = fd  # holds the cross-process claim (flock) until closed
        self.flight = flight
        self.written = 0
        self.visible = 0  # bytes followers may send; lags `written` while a digest is pending
        self.hold_last = False  # the object's last byte waits for its digest check
        self.expected: int | None = None  # None: an unknown-length body, until its end
        self.done = False
        self.stored = False  # committed to the store
        self.discard = False  # purged while filling: serve followers, store nothing
        self.error: BaseException | None = None
        self.keep: bytearray | None = None  # small slices: kept to commit without a read-back
        self._progress = asyncio.Event()

    def reader(self) -> int:
        """A private descriptor for a follower, valid after the file is renamed or unlinked.

        A new open, not a dup: a dup would share the claim's lock, and a slow reader would
        keep other workers believing the fill still runs. Only called while the fill is
        registered, and so while its file is still at its path.
        """
        return os.open(self.path, os.O_RDONLY)

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes and wake followers."""
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, self.written)
            self.written += n
            view = view[n:]
        if self.keep is not None:
            self.keep += data
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
        if not self.done and self.error is None:
            self.error = error
            self._notify()

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def wait_beyond(self, position: int, timeout: float) -> None:
        """Wait until more than ``position`` bytes are visible, or the fill ended."""
        if self.visible > position or self.done or self.error is not None:
            return
        try:
            await asyncio.wait_for(self._progress.wait(), timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"no progress from upstream for {timeout:.0f}s") from None

    def release(self) -> None:
        """Drop the claim (close the writer's descriptor; followers keep their own)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


@dataclass(eq=False)
class Flight:
    """One upstream request (``bereq``) covering slices ``first..last`` (None: to the end)."""

    key: str
    first: int
    last: int | None
    headers: asyncio.Future[BeResp] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    fills: dict[int, SliceFill] = field(default_factory=dict)
    context: Any = None  # the leading request's view (stale copy, Vary values...)
    meta: Any = None  # the ObjectMeta to deliver with, once the headers are in
    version: str | None = None  # slices are committed under it; None: not stored
    shareable: bool = True  # False: only the leading request may use this answer
    direct: Any = None  # an UpstreamResponse handed to the leader (answers not stored)
    store_meta: str = "now"  # when the facts are stored: now, with the body, or not at all
    digest: str | None = None  # expected SHA-256 (hex) of the whole representation
    hasher: Any = None  # running SHA-256 when this flight carries the whole body from byte 0
    length: int | None = None  # learnt at the end for a body without Content-Length
    ended: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    taken: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    _progress: asyncio.Event = field(default_factory=asyncio.Event)

    def grew(self) -> None:
        """A fill was added, or the flight ended: wake those waiting for the next slice."""
        self._progress.set()
        self._progress = asyncio.Event()

    async def wait_growth(self, timeout: float) -> None:
        """Wait for the next `grew` (a body of unknown length being cut into slices)."""
        if self.ended.done():
            return
        try:
            await asyncio.wait_for(self._progress.wait(), timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"no progress from upstream for {timeout:.0f}s") from None


class ForeignFill:
    """A slice another worker process is filling, followed through its claim file.

    The last byte is held back until the leader has committed the slice (its claim released
    and the slice stored): the leader may still discard the body on a failed digest.
    """

    def __init__(self, fd: int, is_stored: Callable[[], bool]) -> None:
        self.fd = fd
        self._is_stored = is_stored
        self.visible = 0
        self.done = False
        self.error: BaseException | None = None

    def reader(self) -> int:
        """A private descriptor for one delivery."""
        return os.dup(self.fd)

    def _refresh(self) -> bool:
        if lock_held(self.fd):
            self.visible = max(0, os.fstat(self.fd).st_size - 1)
        elif self._is_stored():
            self.visible, self.done = os.fstat(self.fd).st_size, True
        else:
            self.error = FillAborted("the worker filling this slice gave up")
        return True

    async def wait_beyond(self, position: int, timeout: float) -> None:
        """Poll until more than ``position`` bytes may be sent, or the fill ended."""
        await poll(lambda: self._refresh() and (self.visible > position or self.done
                                                or self.error is not None),
                   timeout, "the worker filling this slice")

    def release(self) -> None:
        """Close our descriptor."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


def lock_held(fd: int) -> bool:
    """Whether another open file description holds the claim lock on ``fd``'s file."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False

