"""Following what another worker process fills: `ForeignFill` (one slice) and `poll`, the
cache's one loop for waits across processes (there is no event between them)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import FillAborted, UpstreamTimeout
from .checksum import file_matches
from .waits import broadcast, shared

if TYPE_CHECKING:
    from .store import SliceBody

# How often a waiter polls what another worker process does (there is no event across them).
POLL_INTERVAL = 0.005

# The extended attribute by which a worker vouches for a fill file it finished: the version
# of the object it holds a slice of, and that slice's xxh3 (`vouch_file`).
VOUCHED = "user.edgeproxy.vouched"
# ... and, on a slice of a body whose whole SHA-256 matched, that SHA-256 (`Proof`): it goes
# with the file (into the store by rename, and on in the descriptors readers hold once it is
# evicted), so a reader's proof does not rest on the object's stored facts (`proven_file`).
PROVEN = "user.edgeproxy.proven"
# The version of the object a fill's file holds a slice of, set as the file is made, before
# its first byte: the file's name is the slice's, whatever the version, and a worker that
# followed another's fill of the slice sent the bytes of the version that worker fetched
# (an object changed meanwhile) under a head announcing its own (`filling_version`).
FILLING = "user.edgeproxy.filling"


@dataclass(frozen=True)
class Proof:
    """A body's bytes matched their whole SHA-256 (hex), ``digest``: what a slice of it, a
    file or a fill, carries to show it is right (`sources.Witness`).

    ``tail``: the index and SHA-256 of the body's last slice when it is small enough to be
    stored inline (`store.INLINE_MAX`, no file to mark): a reader that got it from the index
    proves it right by its hash against the proof of another slice it sent.
    """

    digest: str
    tail: tuple[int, str] | None = None

    def encode(self) -> bytes:
        """As a file's mark carries it (`decode` reads it back)."""
        tail = f" {self.tail[0]}:{self.tail[1]}" if self.tail is not None else ""
        return f"{self.digest}{tail}".encode()

    @classmethod
    def decode(cls, raw: bytes) -> Proof:
        """A mark written by `encode` (ValueError if it is not one)."""
        digest, _, tail = raw.decode().partition(" ")
        if not tail:
            return cls(digest)
        index, _, sha = tail.partition(":")
        if not sha:
            raise ValueError(f"a mark's tail without its SHA-256: {tail!r}")
        return cls(digest, (int(index), sha))


def vouch_file(fd: int, version: str, checksum: int, proof: Proof | None = None) -> None:
    """Mark a finished fill's file as the whole slice of ``version`` that hashes to
    ``checksum``: a worker following it reads it to its end even when the slice is gone
    from the index by then (evicted at once, passed through unstored). ``proof``: that of
    the whole body it is a slice of, if that matched its SHA-256. Where the file system
    keeps no extended attributes nothing is marked, and such followers are cut."""
    with contextlib.suppress(OSError):
        # (first: a file marked vouched for is marked proven or not)
        if proof is not None:
            os.setxattr(fd, PROVEN, proof.encode())
        else:
            with contextlib.suppress(OSError):
                os.removexattr(fd, PROVEN)
        os.setxattr(fd, VOUCHED, f"{version}:{checksum:016x}".encode())


def mark_filling(fd: int, version: str | None) -> None:
    """Mark a new fill file as a slice of ``version`` (`FILLING`; none: unmarked)."""
    with contextlib.suppress(OSError):
        if version is not None:
            os.setxattr(fd, FILLING, version.encode())
        else:
            os.removexattr(fd, FILLING)


def filling_version(fd: int) -> str | None:
    """The version file ``fd`` was made for (`mark_filling`); None if it carries none (not
    marked yet, or the volume keeps no extended attributes)."""
    try:
        return os.getxattr(fd, FILLING).decode()
    except (OSError, UnicodeDecodeError):
        return None


def proven_file(fd: int) -> Proof | None:
    """The proof file ``fd`` carries (`vouch_file`): None when its fill was not hashed
    whole (a range refill), or nothing is marked."""
    try:
        return Proof.decode(os.getxattr(fd, PROVEN))
    except (OSError, ValueError):  # (UnicodeDecodeError is one)
        return None


def vouched(fd: int, version: str) -> bool:
    """Whether file ``fd`` is a fill of ``version`` that its worker finished and vouched
    for (`vouch_file`), and still holds those bytes (hashed again here)."""
    try:
        found, _, value = os.getxattr(fd, VOUCHED).decode().rpartition(":")
        return found == version and file_matches(fd, os.fstat(fd).st_size, int(value, 16))
    except (OSError, ValueError):
        return False


async def poll(ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``ready()`` holds; the one poll loop of the cache (cross-process waits)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not ready():
        if loop.time() > deadline:
            raise UpstreamTimeout(f"{what}: nothing for {timeout:.0f}s")
        await asyncio.sleep(POLL_INTERVAL)


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
                 on_last: Callable[[ForeignFill], None] = lambda fill: None,
                 version: str | None = None) -> None:
        self.path = path
        self.version = version  # the object's, whose slice this is
        self._is_running = is_running
        self._stored = stored
        self._on_last = on_last
        self.fd = -1
        self.body: bytes | None = None  # the committed slice, once it is read from the store
        self.visible = 0
        self.done = False
        self.error: BaseException | None = None
        self.users = 0
        self.proven: Proof | None = None  # once done from a file: its proof, if it has one
        self.mixed = False  # bytes read from the file, then the store's inline ones
        self.other = False  # the file found is another version's
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
            self._open()
        if self._is_running():
            if self.fd >= 0:
                self.visible = max(self.visible, os.fstat(self.fd).st_size - 1)
            return
        body = self._stored()
        if body is None:
            if self.fd >= 0 and self.version is not None:
                proven = proven_file(self.fd)  # (read before the bytes are checked)
                if vouched(self.fd, self.version):
                    # finished and vouched for, then not stored or evicted at once: the
                    # bytes are all in the file we hold (answers that had sent some were
                    # cut here)
                    self.visible, self.done = os.fstat(self.fd).st_size, True
                    self.proven = proven
                    return
            self.error = FillAborted("the worker filling this slice gave up")
        elif isinstance(body, bytes):
            self._close_fd()
            self.mixed = self.visible > 0  # (some bytes may have gone from the file)
            self.body, self.visible, self.done = body, len(body), True
        else:
            with body:  # the committed file: read from it (our own open may be a stale one)
                ours = os.fstat(self.fd) if self.fd >= 0 else None
                self._close_fd()
                self.fd = os.dup(body.fileno())
            stat = os.fstat(self.fd)
            self.visible, self.done = stat.st_size, True
            if ours is None or (ours.st_dev, ours.st_ino) == (stat.st_dev, stat.st_ino):
                # the bytes read so far came from this very file: its mark covers them
                self.proven = proven_file(self.fd)

    def _open(self) -> None:
        """Follow the fill's file if it is one of our version. A file of another version
        (the object changed, and the other worker fetched the new one) or not marked yet
        is left alone: the bytes then come from the store once the fill is done, or the
        slice is found missing there and fetched anew."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        if self.version is not None and (found := filling_version(fd)) != self.version:
            self.other = found is not None  # (not marked yet: the mark comes before a byte)
            os.close(fd)
            return
        self.fd = fd

    async def ours(self, timeout: float, *, wait: bool = True) -> bool:
        """Whether the fill may be of our version, once that can be told: its file is marked
        with a version as the fill's first bytes go to disk, or the fill ends. Asked before a
        head announces our version: False when the file is another version's (the object
        changed, and the other worker fetched the new one) or the fill ended with no byte of
        ours, and the request looks again rather than send a head no byte will follow.
        ``wait``: else only what the file says now (a later slice's fill may not have begun:
        the head does not wait for it)."""
        if not wait:
            if self.fd < 0 and not self.done:
                self._open()
            return not self.other
        await self._wait(lambda: self.fd >= 0 or self.done or self.error is not None
                         or self.other, timeout)
        return not self.other and (self.error is None or self.visible > 0)

    async def _wait(self, settled: Callable[[], bool], timeout: float) -> None:
        """Until ``settled()``: one waiter looks at the other worker each poll interval,
        the others wait for its look."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._tick is None:
            self._refresh()  # a first look at once, unless one is under way
        while not settled():
            if loop.time() > deadline:
                if self.other or not self._is_running():  # (another version's: none of ours)
                    raise UpstreamTimeout(f"the worker filling this slice: nothing for "
                                          f"{timeout:.0f}s")
                # Its claim is still held: the other worker's flight is alive, writing the
                # slices before this one first (a seek far into an object another client
                # fetches whole, from a slow origin, was a 504 here while bytes kept coming).
                # That flight fails, and lets go, once its upstream is silent as long: the
                # wait is for its progress, as a follower's here (`SliceFill.wait_beyond`).
                deadline = loop.time() + timeout
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

    def evidence(self) -> Proof | bytes | None:
        """What shows this slice's bytes right, once it is done (`sources.Witness`): the
        proof its file carried, or the store's inline bytes (proven by a `Proof.tail`)."""
        if not self.done or self.error is not None or self.mixed:
            return None
        return self.body if self.body is not None else self.proven

    def _close_fd(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
