"""Where a flight's body bytes land: placed in its fills on the event loop, hashed and written
to the slice files in a thread when they are many, accounted on the loop again.

Traced under a stampede (20 cold 16 MiB objects at once, ~500 MiB/s into each worker), the
kernel's copy into the page cache (`pwrite`) was 38 % of a worker's CPU and SHA-256 another
~10 %: done on the event loop, they made its turns last 15-40 ms, and a leader whose
upstream head had arrived waited one or two such turns for its first byte. Both release the
GIL, so a thread takes them off the loop (as nginx's ``aio threads`` does for its writes).

A fill's state (`written`, `visible`, the files it may open or close) changes only on the
loop; the thread only hashes and writes bytes at positions fixed before it starts. One
flight has at most one write in a thread at a time (its pump waits for it), so its bytes
land in order, and no file of its fills can be closed under the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from ..errors import UpstreamProtocolError
from .fills import SliceFill
from .flight import Flight

# Below this many bytes a write is done on the loop: a thread's hand-off costs more.
OFFLOAD_MIN = 64 * 1024
# A flight's first bytes up to this many land on the loop (see `Landing.write`).
INLINE_FIRST = 256 * 1024
# Threads per worker process writing fills (the copies are CPU-bound: a few suffice).
THREADS = 4
# The fill threads' nice value, above the event loop's (0): on a busy machine the loop, which
# answers heads and sends first bytes, runs before the bulk hashing and writing. Measured on
# the stampede (two workers, side by side with nginx, 8 runs each, twice): the leaders' median
# first byte 49-53 ms at 10, 69-90 ms at 0; 19 was no better than 10.
THREAD_NICE = 10

Piece = tuple[SliceFill, memoryview, int]  # a fill, its bytes, where they go in its slice
Landed = list[tuple[int, OSError | None]]


def land(hasher: Any, chunk: bytes, pieces: list[Piece]) -> Landed:
    """The thread's part: the answer's running SHA-256, then each piece's checksum and file
    write (`SliceFill.land`)."""
    if hasher is not None:
        hasher.update(chunk)
    return [fill.land(piece, position) for fill, piece, position in pieces]


def _lower_priority() -> None:
    """Run this thread below the event loop (`THREAD_NICE`). Linux sets a nice value per
    thread; where that is refused, the thread keeps the process's."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       os.getpriority(os.PRIO_PROCESS, 0) + THREAD_NICE)


Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Landed]", Any, bytes, list[Piece]]


class FillThreads:
    """A few threads that `land` writes handed over from an event loop, each answered on the
    loop's future. Not a `ThreadPoolExecutor`: its hand-off (a concurrent future with its
    condition, chained to an asyncio one) was a quarter of the loop's time during a fill,
    traced; here it is a queue put and one ``call_soon_threadsafe``."""

    def __init__(self, count: int = THREADS) -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"edgeproxy-fill-{i}",
                                          daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def land(self, hasher: Any, chunk: bytes, pieces: list[Piece]) -> asyncio.Future[Landed]:
        """`land` these pieces in a thread; the loop's future of its outcome."""
        loop = asyncio.get_running_loop()
        job: asyncio.Future[Landed] = loop.create_future()
        self._jobs.put((loop, job, hasher, chunk, pieces))
        return job

    def _work(self) -> None:
        _lower_priority()
        while (item := self._jobs.get()) is not None:
            loop, job, hasher, chunk, pieces = item
            try:
                outcome: Landed | BaseException = land(hasher, chunk, pieces)
            except BaseException as exc:  # (handed to the loop, raised there)
                outcome = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
                loop.call_soon_threadsafe(_settle, job, outcome)

    def close(self) -> None:
        """Let the threads go once the writes queued are done (shutdown). They are daemon
        threads: a process that exits before then cuts a write short, into a fill's file
        that nothing committed (the loop commits after a write lands), swept at start-up."""
        for _ in self._threads:
            self._jobs.put(None)


def _settle(job: asyncio.Future[Landed], outcome: Landed | BaseException) -> None:
    if job.done():
        return
    if isinstance(outcome, BaseException):
        job.set_exception(outcome)
    else:
        job.set_result(outcome)


class Landing:
    """Writes a flight's body into its fills; ``grow`` claims the next slice of a body of
    unknown length, ``complete`` takes a fill whose bytes are all in."""

    def __init__(self, grow: Callable[[Flight, int, int], SliceFill | None],
                 complete: Callable[[Flight, SliceFill], None]) -> None:
        self.grow = grow
        self.complete = complete
        self._threads: FillThreads | None = None  # made on first use, in the worker

    async def write(self, flight: Flight, offset: int, chunk: bytes, size: int,
                    length: int | None, received: int) -> bool:
        """Write ``chunk``, the body's bytes from ``offset`` (``received`` bytes of the
        answer's body before it); whether a thread did it (the loop ran others meanwhile)."""
        pieces = self.place(flight, offset, chunk, size, length)
        # A flight's first bytes land on the loop: its readers wait for them, and a thread
        # takes a while to get the GIL back from a busy loop (up to the switch interval, 5 ms,
        # per call that released it; 100 ms for a first chunk, traced in a stampede).
        offload = len(chunk) >= OFFLOAD_MIN and received >= INLINE_FIRST
        if offload:
            self._landed(flight, pieces, await self._offload(flight, chunk, pieces), size)
        else:
            self.settle(flight, chunk, pieces, size)
        return offload

    def settle(self, flight: Flight, chunk: bytes, pieces: list[Piece], size: int) -> None:
        """Land ``chunk``'s pieces (`place`) here, on the loop, and complete the fills they
        finish."""
        self._landed(flight, pieces, land(flight.hasher, chunk, pieces), size)

    def _landed(self, flight: Flight, pieces: list[Piece], landed: Landed, size: int) -> None:
        for (fill, piece, _), (done, error) in zip(pieces, landed, strict=True):
            fill.landed(piece, done, error)
            if fill.expected is not None and fill.written >= fill.expected:
                self.complete(flight, fill)
            elif fill.expected is None and fill.written >= size:
                fill.expected = size
                self.complete(flight, fill)

    def place(self, flight: Flight, offset: int, chunk: bytes, size: int,
              length: int | None) -> list[Piece]:
        """The fills ``chunk`` goes to, each prepared for its piece (a slice growing past
        the inline limit gets its file here, on the loop)."""
        pieces: list[Piece] = []
        view = memoryview(chunk)
        while view:
            index, within = divmod(offset, size)
            take = min(len(view), size - within)
            fill = flight.fills.get(index)
            if fill is None and length is None and within == 0:
                fill = self.grow(flight, index, size)
            if fill is not None and not fill.done and fill.error is None:
                limit = fill.expected if fill.expected is not None else size
                if within != fill.written:
                    raise UpstreamProtocolError(f"slice {index}: bytes out of order")
                piece = view[: min(take, limit - within)]
                fill.prepare(len(piece))
                pieces.append((fill, piece, fill.written))
            view = view[take:]
            offset += take
        return pieces

    async def _offload(self, flight: Flight, chunk: bytes, pieces: list[Piece]) -> Landed:
        if self._threads is None:
            self._threads = FillThreads()
        job = self._threads.land(flight.hasher, chunk, pieces)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            # The thread still writes into the fills' files: the flight's end closes them,
            # so it waits until the thread is done with them.
            while not job.done():
                try:
                    await asyncio.wait([job])
                except asyncio.CancelledError:
                    continue
            if not job.cancelled():
                job.exception()  # retrieved: the flight ends with the cancellation
            raise

    def close(self) -> None:
        """Let the threads go (shutdown; writes queued finish, `FillThreads.close`)."""
        if self._threads is not None:
            self._threads.close()
            self._threads = None
