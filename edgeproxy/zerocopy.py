"""Zero-copy sends: file bytes go from the page cache to the socket with ``sendfile(2)``.

A large hit used to be read into a bytes object (one copy) and written to the socket (a
second copy), 256 KiB per ASGI message. The server protocol offers ASGI's zero-copy send
extension (``http.response.zerocopysend``: a file, an offset and a count) on plain TCP
connections; the kernel then moves the bytes itself, as nginx's ``sendfile on`` does.

uvloop's transports have no sendfile of their own, and a transport's descriptor may not be
watched by anyone else: the bytes go out on a duplicate of the socket's descriptor, and only
once the transport has nothing buffered, so the bytes stay in order. Waiting for room in the
socket is a writer callback on that duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import termios
from collections.abc import Callable, Iterable
from typing import Any

from .cache.slicefiles import FilePiece
from .cache.types import ZEROCOPY
from .errors import FillAborted

# Bytes of one file to send: its descriptor, where they start, how many, and the check that
# the file is still as it was found (asked before its first ``sendfile`` and after each wait
# for room), if any.
Segment = tuple[int, int, int, "Callable[[], bool] | None"]

# An answer of at least WIDE_MIN bytes from files gets a socket send buffer of WIDE_SEND
# (Linux doubles it; autotuning stops at tcp_wmem's 4 MiB): fewer, larger sendfile calls, and
# fewer wake-ups of the loop to make them. A 16 MiB hit's edge CPU ~1.7 -> ~1.5 ms per answer
# (wrk -c16 side by side with nginx, 2 x 4 alternations). Not below: a 1 MiB hit costs ~20 us
# more with it (a buffer it cannot fill, set anew on each answer).
WIDE_MIN = 4 * 1024 * 1024
WIDE_SEND = 4 * 1024 * 1024

__all__ = ["WIDE_MIN", "WIDE_SEND", "ZEROCOPY", "Segment", "send_file",
           "send_files", "send_now", "send_rest", "socket_fd", "unsent_bytes", "widen",
           "write_piece"]


def socket_fd(transport: Any) -> int | None:
    """The descriptor of a plain TCP transport's socket; None when bytes may not bypass it
    (TLS, no socket, closing)."""
    if transport.is_closing() or transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    fd = sock.fileno() if sock is not None else -1
    return fd if fd >= 0 else None


def unsent_bytes(transport: Any) -> int:
    """Bytes of answers the kernel still holds for the client (Linux ``SIOCOUTQ``; 0 where
    it cannot tell): a client still reading a large answer is not idle."""
    sock = transport.get_extra_info("socket")  # (TLS too: its bytes wait there the same)
    try:
        out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (AttributeError, OSError, ValueError):
        return 0
    return int(struct.unpack("i", out)[0])


def widen(transport: Any) -> None:
    """Give the transport's socket a send buffer of `WIDE_SEND` (where it may be set)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WIDE_SEND)


def send_now(transport: Any, fd: int, offset: int, count: int) -> int:
    """Send what the socket takes at once of ``count`` bytes of file ``fd`` from ``offset``
    (none while the transport still buffers earlier bytes); how many were sent."""
    sock = socket_fd(transport)
    if sock is None or transport.get_write_buffer_size():
        return 0
    try:
        return os.sendfile(sock, fd, offset, count)
    except OSError:  # full (EAGAIN) or gone: the caller writes the rest the usual way
        return 0


def write_piece(transport: Any, head: bytes, piece: FilePiece) -> int:
    """Write ``head``, then ``piece`` of its file (and the pieces that follow it) by
    ``sendfile`` as far as the socket takes them at once, each once its file is found
    unchanged (else the answer is aborted short); the bytes still to send (by `send_rest`).
    When none are left, the pieces are closed.

    The rest is not read into memory to go out with the rest of the answer: a client that
    reads slowly, with pipelined requests, then held a slice's worth of the edge's memory
    per answer (48 stalled readers grew an edge by 54 MiB)."""
    rest = len(piece)
    if rest >= WIDE_MIN:
        widen(transport)
    try:
        transport.write(head)
        for part in (piece, *piece.then):
            if isinstance(part, bytes):
                transport.write(part)  # (in order: a sendfile waits for the buffer to drain)
                rest -= len(part)
                continue
            if not part.unchanged():
                transport.abort()
                break
            sent = send_now(transport, part.fileno(), part.offset, part.length)
            rest -= sent
            if sent < part.length:
                return rest
    except BaseException:
        piece.close()
        raise
    piece.close()
    return 0


async def send_rest(transport: Any, piece: FilePiece, rest: int, timeout: float) -> bool:
    """Send the last ``rest`` bytes of the pieces `write_piece` began, as the socket drains;
    False if the connection went away (or took no byte for ``timeout`` seconds). A file
    found changed raises `FillAborted` (`send_file`). The pieces are closed."""
    try:
        skip = len(piece) - rest  # bytes gone already
        files: list[Segment] = []  # file pieces in a row go out in one `send_files`
        for part in (piece, *piece.then):
            size = len(part) if isinstance(part, bytes) else part.length  # (its own bytes)
            if skip >= size:
                skip -= size
                continue
            if not isinstance(part, bytes):
                files.append((part.fileno(), part.offset + skip, size - skip, part.unchanged))
            else:
                if files and not await send_files(transport, files, timeout):
                    return False
                files = []
                if transport.is_closing():
                    return False
                transport.write(part[skip:])
            skip = 0
        return not files or await send_files(transport, files, timeout)
    finally:
        piece.close()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def _writable(loop: asyncio.AbstractEventLoop, fd: int, timeout: float) -> None:
    """Wait until the socket takes bytes again; TimeoutError after ``timeout`` seconds."""
    waiter = loop.create_future()
    loop.add_writer(fd, _wake, waiter)
    expiry = loop.call_later(timeout, _expire, waiter)
    try:
        await waiter
    finally:
        expiry.cancel()
        loop.remove_writer(fd)


async def send_file(transport: Any, fd: int, offset: int, count: int, timeout: float,
                    unchanged: Callable[[], bool] | None = None) -> bool:
    """Send ``count`` bytes of file ``fd`` from ``offset`` on ``transport``'s socket, after
    what it buffers; False if the connection went away, or took no byte for ``timeout``
    seconds (it is then aborted: nginx's ``send_timeout``). A file shorter than ``count``
    raises EOFError (the answer must not look complete).

    ``unchanged`` is asked before the file's first ``sendfile`` and after every wait for
    room (`_FileRun`): a file found written to since it was checked raises `FillAborted`,
    and no later byte of it goes out. (No byte is held back for a check after the last
    call: a held byte went out as a segment of its own, 40 % more edge CPU per 1 MiB hit.
    Nor would it cover more: ``sendfile`` hands the socket page-cache pages, read when the
    peer takes them, so a write after the last call reaches the wire either way. Stored
    files are never written in place; such a write is a fault the next reader's check and
    the scrubber find.)"""
    return await send_files(transport, ((fd, offset, count, unchanged),), timeout)


async def send_files(transport: Any, segments: Iterable[Segment], timeout: float) -> bool:
    """`send_file` for several files' bytes in a row (the slices of one answer), on one
    duplicate of the socket's descriptor."""
    loop = asyncio.get_running_loop()
    while transport.get_write_buffer_size():  # earlier bytes first
        sock = socket_fd(transport)
        if sock is None:
            return False
        dup = os.dup(sock)
        try:
            await _writable(loop, dup, timeout)
        except TimeoutError:
            transport.abort()
            return False
        finally:
            os.close(dup)
        await asyncio.sleep(0)  # the transport writes its buffer in its own callback
    sock = socket_fd(transport)
    if sock is None:
        return False
    # a duplicate: the transport may close its own descriptor meanwhile, and a number
    # closed there must not be reused under this send
    run = _FileRun(loop, transport, os.dup(sock), list(segments), timeout)
    try:
        run.step()
        return await run.done
    finally:
        run.release()  # (also when the awaiting task is cancelled)


class _FileRun:
    """Segments going out on a socket duplicate, driven by its writer callback as nginx's
    event loop drives ``sendfile``: a short send means the socket is full, so the run waits
    for room rather than ask again at once, and the writer stays registered for the whole
    run (a 16 MiB hit made a new future, timer and writer per wait, and checked its file
    before every call: per answer ~21 ``sendfile``, ~33 ``fstat`` and ~15 ``epoll_ctl``
    calls, now ~18, ~31 and ~5; 88 ms of user CPU per GiB sent, now 63).
    Each segment's file is checked before its first ``sendfile`` and again after every
    wait for room: a file found written to sends no byte more (`FillAborted`)."""

    __slots__ = ("check", "done", "dup", "expiry", "loop", "moved", "segments", "timeout",
                 "transport", "watching")

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: Any, dup: int,
                 segments: list[Segment], timeout: float) -> None:
        self.loop = loop
        self.transport = transport
        self.dup = dup
        self.segments = segments[::-1]  # (the next one last: popped when sent)
        self.timeout = timeout
        self.done: asyncio.Future[bool] = loop.create_future()
        self.check = True
        self.watching = False
        self.moved = loop.time()  # when the socket last took bytes
        self.expiry: asyncio.TimerHandle | None = None

    def step(self) -> None:
        """Send what the socket takes now; the writer callback."""
        if self.done.done():
            return
        if self.watching and self.transport.is_closing():
            self._finish(False)
            return
        try:
            if self._send():
                self._finish(True)
            elif not self.watching:
                self.watching = True
                self.loop.add_writer(self.dup, self.step)
                self.expiry = self.loop.call_later(self.timeout, self._expire)
        except OSError:  # reset, broken pipe: the client is gone
            self.transport.abort()
            self._finish(False)
        except Exception as exc:  # a changed file (FillAborted), one ended short (EOFError)
            self._finish(exc)

    def _send(self) -> bool:
        """Whether every segment went; False: the socket is full."""
        segments = self.segments
        while segments:
            fd, offset, count, unchanged = segments[-1]
            if self.check:
                if unchanged is not None and not unchanged():
                    raise FillAborted("a stored file was written to while it was sent")
                self.check = False
            try:
                sent = os.sendfile(self.dup, fd, offset, count)
            except BlockingIOError:
                self.check = True
                return False
            if sent == 0:
                raise EOFError(f"the file ended {count} bytes short")
            self.moved = self.loop.time()
            if sent < count:
                segments[-1] = (fd, offset + sent, count - sent, unchanged)
                self.check = True
                return False
            segments.pop()
            self.check = True  # (the next file: checked before its first byte)
        return True

    def _expire(self) -> None:
        idle = self.loop.time() - self.moved
        if idle < self.timeout:
            self.expiry = self.loop.call_later(self.timeout - idle, self._expire)
            return
        self.transport.abort()  # took no byte for the whole time: nginx's send_timeout
        self._finish(False)

    def _finish(self, outcome: bool | BaseException) -> None:
        self.release()
        if isinstance(outcome, BaseException):
            self.done.set_exception(outcome)
        else:
            self.done.set_result(outcome)

    def release(self) -> None:
        """Stop watching the socket and close the duplicate (once)."""
        if self.watching:
            self.watching = False
            self.loop.remove_writer(self.dup)
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if self.dup >= 0:
            os.close(self.dup)
            self.dup = -1
