"""Fills in flight: `SliceFill` (one slice's file, followed as it grows), `Flight` (one
upstream request and the slices it fills) and `ForeignFill` (a slice another worker fills)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FillAborted, UpstreamTimeout
from .beresp import BeResp
from .checksum import SliceHasher
from .space import NoRoom
from .types import RawHeaders
from .waits import broadcast, shared, within

if TYPE_CHECKING:
    from .store import SliceBody

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
    """One slice being written from upstream; readers in this process follow it as it grows.

    Small slices stay in memory (they are committed inline in the index): no file is made for
    them. A slice that grows past ``inline_max`` spills to a file at its claim's path, where
    other worker processes can follow it. Readers share the writer's descriptor (``pread``),
    which is closed only when the last of them is done.
    """

    def __init__(self, key: str, index: int, path: Path, flight: Flight,
                 inline_max: int) -> None:
        self.key = key
        self.index = index
        self.path = path
        self.flight = flight
        self.inline_max = inline_max
        self.fd = -1
        self.buf: bytearray | None = bytearray()
        self.spilling = False  # room is made for the file; the next `land` creates it
        self._opened = -1  # the file `land` created, until `landed` puts it in use
        self.written = 0
        self.visible = 0  # bytes followers may send; lags `written` while a digest is pending
        self.hold_last = False  # the answer's last byte waits for its digest check
        self.expected: int | None = None  # None: an unknown-length body, until its end
        self.done = False
        self.discard = False  # purged while filling: serve followers, store nothing
        self.error: BaseException | None = None
        self.readers = 0
        self.released = False
        self.unstorable = False  # the disk failed while filling: serve, do not store
        self.on_fault: Callable[[BaseException], None] = lambda exc: None
        self.sum = SliceHasher()  # the checksum stored with the slice, as the bytes pass
        # whether the volume has room for a file of this many bytes (evicting if need be)
        self.make_room: Callable[[int], bool] = lambda nbytes: True
        self._progress = asyncio.Event()

    @property
    def on_disk(self) -> bool:
        """Whether the bytes are in the slice's file (else in memory)."""
        return self.fd >= 0

    def _spill(self, nbytes: int) -> None:
        if not self.make_room(nbytes):
            raise NoRoom(f"no room above the reserve on the cache's volume for a slice of "
                         f"{nbytes} bytes")
        self.spilling = True

    def _create(self) -> int:
        """The slice's file, made with the bytes kept in memory so far. In `land`, so in the
        landing thread when the bytes go there: under a stampede's writes, creating a file
        waited on the file system's journal (22 % of a worker's loop time, traced)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if self.buf:
                # a copy (at most the inline limit and a read): no view of the buffer may
                # outlive this call, in an error's traceback say, as it grows again after it
                view = memoryview(bytes(self.buf))
                done = 0
                while done < len(view):
                    done += os.pwrite(fd, view[done:], done)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise
        return fd

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes and wake followers: `prepare`, `land` and `landed` in one go.

        A disk that fails (full, I/O error) moves the slice back into memory: its readers
        still get every byte; it just will not be stored.
        """
        self.prepare(len(data))
        self.landed(data, *self.land(data, self.written))

    def prepare(self, nbytes: int) -> None:
        """Before ``nbytes`` more bytes: a slice growing past ``inline_max`` moves to its file.
        On the event loop (making room may evict)."""
        if self.buf is not None and self.written + nbytes > self.inline_max \
                and not self.unstorable and not self.spilling:
            try:
                self._spill(max(self.expected or 0, self.written + nbytes))
            except OSError as exc:
                self._to_memory(exc)

    def land(self, data: bytes | memoryview, position: int) -> tuple[int, OSError | None]:
        """The part of a write that may run in another thread: the checksum, and the file
        write at ``position``. How many bytes reached the file, and the error that stopped
        the rest; the fill's state is `landed`'s to change, on the event loop."""
        self.sum.update(data)
        fd = self.fd
        if self.buf is not None:
            if not self.spilling:
                return 0, None  # the slice is in memory
            try:
                fd = self._opened = self._create()
            except OSError as exc:
                return 0, exc
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(fd, view[done:], position + done)
        except OSError as exc:
            return done, exc
        return done, None

    def landed(self, data: bytes | memoryview, done: int, error: OSError | None) -> None:
        """Account bytes `land` took care of (``done`` of them in the file, the rest go to
        memory), and wake followers."""
        if self._opened >= 0:  # `land` made the file: the bytes live there from now on
            self.fd, self._opened, self.buf = self._opened, -1, None
        self.spilling = False
        self.written += done
        if error is not None:
            self._to_memory(error)
        elif self.unstorable and self.fd >= 0:
            self.keep_in_memory()  # it stopped being stored while `land` made its file
        if done < len(data):
            assert self.buf is not None
            self.buf += memoryview(data)[done:]
            self.written += len(data) - done
        held = self.hold_last and self.expected is not None and self.written >= self.expected
        self.visible = self.written - 1 if held else self.written
        self._notify()

    def _to_memory(self, exc: OSError) -> None:
        self.keep_in_memory()
        self.on_fault(exc)

    def keep_in_memory(self) -> None:
        """The slice will not be stored: its bytes move from its file to memory, where the
        requests of its flight still read them (the file goes)."""
        if self.fd >= 0:
            if self.buf is None:  # else the spill itself failed: the bytes are still here
                self.buf = bytearray(os.pread(self.fd, self.written, 0))
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
            with contextlib.suppress(OSError):
                self.path.unlink()
        self.unstorable = True

    def read(self, position: int, size: int) -> bytes:
        """Bytes already written, from memory or the file."""
        if self.buf is not None:
            return bytes(self.buf[position:position + size])
        return os.pread(self.fd, size, position)

    def descriptor(self) -> int:
        """The file the written bytes may be sent from, or -1 while they are in memory."""
        return self.fd if self.buf is None else -1

    def data(self) -> bytes | None:
        """The whole slice if it is in memory."""
        return bytes(self.buf) if self.buf is not None else None

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
            await within(self._progress.wait(), timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"no progress from upstream for {timeout:.0f}s") from None

    async def settled(self) -> None:
        """Wait until the fill is finished (its bytes vouched for) or failed.

        No timeout of its own: every flight ends by finishing or failing each of its fills,
        and it ends within the transport's timeouts.
        """
        while not self.done and self.error is None:
            await self._progress.wait()

    def attach(self) -> None:
        """A reader starts following this fill."""
        self.readers += 1

    def detach(self) -> None:
        """A reader is done."""
        self.readers -= 1
        self._maybe_close()

    def release(self) -> None:
        """The writer is done (committed, failed or discarded)."""
        self.released = True
        if self._opened >= 0:  # made by a `land` whose flight ended before `landed`
            with contextlib.suppress(OSError):
                os.close(self._opened)
            with contextlib.suppress(OSError):
                self.path.unlink()
            self._opened = -1
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.released and self.readers <= 0 and self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


@dataclass
class FlightSpec:
    """What a flight asks for, and for whom (the leading request's view)."""

    key: str
    target: str
    headers: RawHeaders  # the leader's fill headers (client fields less the cache's own)
    first: int
    last: int | None
    slice_size: int
    validators: RawHeaders = field(default_factory=list)  # If-None-Match / If-Range ...
    whole: bool = False  # ask without Range: the plain GET of an unknown object


@dataclass(eq=False)
class Flight:
    """One upstream request (``bereq``) covering slices ``first..last`` (None: to the end)."""

    key: str
    first: int
    last: int | None
    # a `Broadcast`: the leader and every follower wake in the turn the headers come in
    headers: asyncio.Future[BeResp] = field(default_factory=broadcast)
    fills: dict[int, SliceFill] = field(default_factory=dict)
    context: Any = None  # the leading request's view (stale copy, Vary values...)
    meta: Any = None  # the ObjectMeta to deliver with, once the headers are in
    version: str | None = None  # slices are committed under it; None: not stored
    shareable: bool = True  # False: only the leading request may use this answer
    direct: Any = None  # an UpstreamResponse handed to the leader (answers not stored)
    store_meta: str = "now"  # when the facts are stored: now, with the body, or not at all
    digest: str | None = None  # expected SHA-256 (hex) of the whole representation
    content_digest: Any = None  # the answer's Content-Digest and its span (fields.MessageDigest)
    checks: tuple[str, ...] = ()  # SHA-256s (hex) the answer's body must have, all of them
    hasher: Any = None  # running SHA-256 of the answer's body while `checks` are pending
    whole: bool = False  # the body is the whole representation, checked against `digest`
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
            await within(self._progress.wait(), timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"no progress from upstream for {timeout:.0f}s") from None


class ForeignFill:
    """A slice another worker process is filling, as this process follows it.

    A large slice is followed through its file as it grows; a small one lives in the other
    worker's memory, so it is read from the store once committed. The last byte is held back
    until the leader has committed the slice (its claim released and the slice stored): the
    leader may still discard the body on a failed digest.

    One per slice and process, however many requests follow it (`attach`/`detach`): in a
    stampede a hundred followers cost one look at the other worker per poll interval, not a
    hundred, and they wake together on its result.
    """

    def __init__(self, path: Path, is_running: Callable[[], bool],
                 stored: Callable[[], SliceBody | None],
                 on_last: Callable[[ForeignFill], None] = lambda fill: None) -> None:
        self.path = path
        self._is_running = is_running
        self._stored = stored
        self._on_last = on_last
        self.fd = -1
        self.body: bytes | None = None  # the committed slice, once it is read from the store
        self.visible = 0
        self.done = False
        self.error: BaseException | None = None
        self.users = 0
        self._tick: asyncio.Future[None] | None = None  # the look in progress, if any

    def attach(self) -> None:
        """One more request follows this slice."""
        self.users += 1

    def detach(self) -> None:
        """A request stopped following; the last one closes the descriptor."""
        self.users -= 1
        if self.users <= 0:
            self._close_fd()
            self._on_last(self)

    def read(self, position: int, size: int) -> bytes:
        """Bytes already visible."""
        if self.body is not None:
            return self.body[position:position + size]
        return os.pread(self.fd, size, position)

    def descriptor(self) -> int:
        """The file the visible bytes may be sent from, or -1 when they are in memory."""
        return self.fd if self.body is None else -1

    def _refresh(self) -> None:
        if self.done or self.error is not None:
            return
        if self.fd < 0:
            with contextlib.suppress(FileNotFoundError):
                self.fd = os.open(self.path, os.O_RDONLY)
        if self._is_running():
            if self.fd >= 0:
                self.visible = max(self.visible, os.fstat(self.fd).st_size - 1)
            return
        body = self._stored()
        if body is None:
            self.error = FillAborted("the worker filling this slice gave up")
        elif isinstance(body, bytes):
            self._close_fd()
            self.body, self.visible, self.done = body, len(body), True
        else:
            with body:  # the committed file: read from it (our own open may be a stale one)
                self._close_fd()
                self.fd = os.dup(body.fileno())
            self.visible, self.done = os.fstat(self.fd).st_size, True

    async def _wait(self, settled: Callable[[], bool], timeout: float) -> None:
        """Until ``settled()``: one waiter looks at the other worker each poll interval,
        the others wait for its look."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._tick is None:
            self._refresh()  # a first look at once, unless one is under way
        while not settled():
            if loop.time() > deadline:
                raise UpstreamTimeout(f"the worker filling this slice: nothing for "
                                      f"{timeout:.0f}s")
            tick = self._tick
            if tick is not None:
                await shared(tick, None)  # (the look ends within its interval)
                continue
            tick = self._tick = broadcast()
            try:
                await asyncio.sleep(POLL_INTERVAL)
                self._refresh()
            finally:
                self._tick = None
                if not tick.done():
                    tick.set_result(None)

    async def wait_beyond(self, position: int, timeout: float) -> None:
        """Until more than ``position`` bytes may be sent, or the fill ended."""
        await self._wait(lambda: self.visible > position or self.done
                         or self.error is not None, timeout)

    async def wait_done(self, timeout: float) -> None:
        """Until the slice is committed, or the fill failed."""
        await self._wait(lambda: self.done or self.error is not None, timeout)

    def _close_fd(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


