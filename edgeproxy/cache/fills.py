"""`SliceFill`: one slice being written from upstream, followed as it grows by the readers
of this process (a flight fills its slices: `flight`; other workers follow them: `foreign`)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UpstreamTimeout
from .checksum import SliceHasher
from .foreign import mark_filling
from .space import NoRoom
from .waits import Signal

if TYPE_CHECKING:
    from .flight import Flight

# Readers are woken when a slice's first bytes are in, then when this many more are, or this
# long after bytes that did not make that many came in (a slow upstream's are not held back).
# Woken at every chunk landed (~256 KiB), a stampede's followers each went through their send
# loop four times per MiB: in one worker serving 100 clients, 22,000 sends and 36,000 waits
# per three stampedes, the most of its Python time after `sendfile` itself.
WAKE_BYTES = 1024 * 1024
WAKE_AFTER = 0.020


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
        self.want: int | None = None  # the xxh3 the upstream named for it (`slicesums`)
        self.done = False
        self.discard = False  # purged while filling: serve followers, store nothing
        self.private = False  # not claimed: for its own flight's readers only (`keep`)
        self.error: BaseException | None = None
        self.readers = 0
        self.released = False
        self.unstorable = False  # the disk failed while filling: serve, do not store
        self.on_fault: Callable[[BaseException], None] = lambda exc: None
        self.sum = SliceHasher()  # the checksum stored with the slice, as the bytes pass
        # whether the volume has room for a file of this many bytes (evicting if need be)
        # (anew: judged by a new reading of the volume)
        self.make_room: Callable[[int, bool], bool] = lambda nbytes, anew: True
        self._progress = Signal()
        self._told = 0  # `visible` when readers were last woken
        self._wake: asyncio.TimerHandle | None = None
        self._refilled = False  # room was made again after a full volume (once per slice)

    @property
    def on_disk(self) -> bool:
        """Whether the bytes are in the slice's file (else in memory)."""
        return self.fd >= 0

    def _spill(self, nbytes: int) -> None:
        if not self.make_room(nbytes, False):
            raise NoRoom(f"no room above the reserve on the cache's volume for a slice of "
                         f"{nbytes} bytes")
        self.spilling = True

    def _create(self) -> int:
        """The slice's file, made with the bytes kept in memory so far. In `land`, so in the
        landing thread when the bytes go there: under a stampede's writes, creating a file
        waited on the file system's journal (22 % of a worker's loop time, traced)."""
        # A new file, never one left at the path: a worker that followed that one (another
        # answer's) reads on from it, and must not find this answer's bytes there.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            mark_filling(fd, self.flight.version)  # (before any byte: `foreign.FILLING`)
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
        return _pwrite(fd, memoryview(data), position)

    def landed(self, data: bytes | memoryview, done: int, error: OSError | None) -> None:
        """Account bytes `land` took care of (``done`` of them in the file, the rest go to
        memory), and wake followers."""
        if self._opened >= 0:  # `land` made the file: the bytes live there from now on
            self.fd, self._opened, self.buf = self._opened, -1, None
        self.spilling = False
        if error is not None and error.errno == errno.ENOSPC and self.fd >= 0 \
                and not self._refilled:
            # Room was made for the whole slice, and something else on the volume took it
            # meanwhile (another fill, the index's journal): make room once more, then go on.
            self._refilled = True
            if self.make_room(max(self.expected or 0, self.written + len(data))
                              - self.written - done, True):
                more, error = _pwrite(self.fd, memoryview(data)[done:], self.written + done)
                done += more
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
        self.flight.moved = time.monotonic()
        if not self._told or self.visible - self._told >= WAKE_BYTES:
            self._notify()
        elif self._wake is None:
            try:
                self._wake = asyncio.get_running_loop().call_later(WAKE_AFTER, self._notify)
            except RuntimeError:  # no loop (a script): at once
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
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        self._told = self.visible
        self._progress.fire()

    async def wait_beyond(self, position: int, timeout: float) -> None:
        """Wait until more than ``position`` bytes are visible, or the fill ended;
        `UpstreamTimeout` once its flight has brought no byte for ``timeout`` seconds.

        The flight's bytes, not this slice's: a flight writes its slices in order, and a
        range far into an object that a slow origin sends whole waited for its own slice's
        first byte, so it was answered 504, or cut after its head, while bytes kept coming
        (found from outside: a video seek into a large cold object being filled)."""
        began = time.monotonic()
        while not (self.visible > position or self.done or self.error is not None):
            quiet = time.monotonic() - max(self.flight.moved, began)
            if quiet >= timeout:
                raise UpstreamTimeout(f"no progress from upstream for {timeout:.0f}s")
            with contextlib.suppress(TimeoutError):
                await self._progress.wait(timeout - quiet)

    async def settled(self) -> None:
        """Wait until the fill is finished (its bytes vouched for) or failed.

        No timeout of its own: every flight ends by finishing or failing each of its fills,
        and it ends within the transport's timeouts.
        """
        while not self.done and self.error is None:
            await self._progress.wait(None)

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


def _pwrite(fd: int, view: memoryview, position: int) -> tuple[int, OSError | None]:
    """Write ``view`` at ``position``: how many bytes went, and the error that stopped the
    rest."""
    done = 0
    try:
        while done < len(view):
            done += os.pwrite(fd, view[done:], position + done)
    except OSError as exc:
        return done, exc
    return done, None
