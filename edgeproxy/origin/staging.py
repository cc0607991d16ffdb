"""The local staging area: files of uploads still arriving or awaiting confirm, each written
by one request at a time, synced before its offset is recorded."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

WRITE_BUFFER = 256 * 1024  # batch small network chunks into fewer thread hops and writes
# Appended bytes between two records of an upload's offset during one request (each after an
# fsync): a crash of the origin mid-body then loses at most this much of a long PUT, not all
# of it, and HEAD shows the upload moving while it arrives.
CHECKPOINT = 8 * 1024 * 1024

Progress = Callable[[int], Awaitable[None]]  # the upload's offset now durable: record it


class TooLarge(Exception):
    """A streamed body ran past its limit (the staging file has been removed)."""


class StagingBusy(Exception):
    """Another writer (possibly another worker process) is writing the same staging file."""


class ChecksumMismatch(Exception):
    """An appended chunk did not match its declared checksum (the chunk has been dropped)."""


class StagingShort(Exception):
    """The staging file holds fewer bytes than the offset to append at."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the staging file holds only {size} bytes")
        self.size = size


def _write(f: IO[bytes], hasher: Any, data: bytearray) -> None:
    f.write(data)
    hasher.update(data)


def _sync(f: IO[bytes]) -> None:
    # fsync before anyone records the bytes as received: a crash must not leave a record
    # claiming bytes the disk never got.
    f.flush()
    os.fsync(f.fileno())


def _sync_close(f: IO[bytes]) -> None:
    _sync(f)
    f.close()


def _open_locked(path: Path) -> IO[bytes]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        # flock, not only an asyncio lock, so two worker processes can't interleave either;
        # the kernel drops it if the process dies, so a crash never leaves an upload stuck.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StagingBusy(str(path)) from None
    return os.fdopen(fd, "wb")


def _truncate_sync(f: IO[bytes], size: int) -> None:
    f.flush()
    f.truncate(size)
    os.fsync(f.fileno())


async def _pump(chunks: AsyncIterable[bytes], limit: int, put: Callable[[bytearray], None],
                checkpoint: Progress | None = None) -> int:
    """Feed ``chunks`` to ``put`` (in a worker thread) in `WRITE_BUFFER` pieces; the number of
    bytes. Raises `TooLarge` as soon as more than ``limit`` bytes arrived. ``checkpoint`` is
    given the bytes written so far every `CHECKPOINT` bytes (never all ``limit`` of them:
    the end is the caller's to record)."""
    received, buf, noted = 0, bytearray(), 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise TooLarge(f"more than {limit} bytes")
        buf += chunk
        if len(buf) >= WRITE_BUFFER:
            data, buf = buf, bytearray()
            await asyncio.to_thread(put, data)
            written = received - len(buf)
            if checkpoint is not None and written - noted >= CHECKPOINT and written < limit:
                await checkpoint(written)
                noted = written
    await asyncio.to_thread(put, buf)
    return received


class StagingWriter:
    """Exclusive write access to one staging file (see `Staging.writer`)."""

    def __init__(self, path: Path, f: IO[bytes]) -> None:
        self.path = path
        self._f = f

    async def write(self, chunks: AsyncIterable[bytes], limit: int) -> tuple[int, str]:
        """Replace the file's content with ``chunks``, hashing as it goes.

        Returns ``(bytes written, sha256 hex)``, synced to disk. Raises `TooLarge` as soon as
        more than ``limit`` bytes arrive; on any error the file is removed. Only
        `WRITE_BUFFER` bytes are held in memory.
        """
        f, hasher = self._f, hashlib.sha256()
        try:
            await asyncio.to_thread(f.truncate, 0)
            received = await _pump(chunks, limit, lambda data: _write(f, hasher, data))
            await asyncio.to_thread(_sync_close, f)
        except BaseException:
            self.path.unlink(missing_ok=True)  # before close: still ours under the lock
            f.close()
            raise
        return received, hasher.hexdigest()

    async def restart(self) -> None:
        """Drop every staged byte: a whole-blob PUT starts the upload over, then appends at 0
        (the caller has recorded the offset as 0 first)."""
        await asyncio.to_thread(_truncate_sync, self._f, 0)

    async def append(self, chunks: AsyncIterable[bytes], offset: int, limit: int,
                     checksum: tuple[str, bytes] | None = None,
                     progress: Progress | None = None) -> tuple[int, str]:  # fmt: skip
        """Write ``chunks`` at ``offset`` (anything after it is dropped first), resumably.

        Returns ``(bytes appended, sha256 hex of those bytes)``, synced to disk. The bytes that
        arrived before the body ended — also when the client went away mid-body — are kept.
        ``checksum`` is ``(hashlib algorithm, digest)`` of the whole appended chunk; on a
        mismatch the chunk is dropped and `ChecksumMismatch` raised. More than ``limit`` bytes
        raise `TooLarge` with the bytes after the last checkpoint dropped. ``progress`` is told
        the offset every `CHECKPOINT` bytes, once they are synced (not with a ``checksum``: that
        chunk stays whole or goes); the file is never shortened below the last one.
        """
        f, hasher = self._f, hashlib.sha256()
        check = hashlib.new(checksum[0]) if checksum is not None else None
        kept = offset  # the file is not shortened below this

        def put(data: bytearray) -> None:
            _write(f, hasher, data)
            if check is not None:
                check.update(data)

        async def durable(written: int) -> None:
            nonlocal kept
            assert progress is not None
            await asyncio.to_thread(_sync, f)
            kept = offset + written
            await progress(kept)

        try:
            size = await asyncio.to_thread(os.fstat, f.fileno())
            if size.st_size < offset:
                raise StagingShort(size.st_size)
            # A crash after writing but before the offset was recorded leaves extra bytes.
            await asyncio.to_thread(f.truncate, offset)
            await asyncio.to_thread(f.seek, offset)
            received = await _pump(chunks, limit, put,
                                   durable if progress is not None and check is None else None)
            if check is not None and checksum is not None and check.digest() != checksum[1]:
                raise ChecksumMismatch(f"{checksum[0]} of the {received} bytes received differs")
            await asyncio.to_thread(_sync_close, f)
        except StagingShort:
            f.close()
            raise
        except BaseException:
            # Drop this request's bytes past its last checkpoint only: what earlier requests
            # and checkpoints recorded stays resumable. Nothing recorded (a failed body at 0,
            # e.g. a whole-blob PUT over its size): no empty file is left behind either.
            # Synchronous: this path may run while the task is being cancelled.
            if kept:
                _truncate_sync(f, kept)
            else:
                self.path.unlink(missing_ok=True)  # before close: still ours under the lock
            f.close()
            raise
        return received, hasher.hexdigest()


class Staging:
    """Files of uploads in progress, under one directory on the same filesystem as the store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        """The staging file ``name``."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad staging name {name!r}")
        return self.root / name

    @asynccontextmanager
    async def writer(self, name: str) -> AsyncIterator[StagingWriter]:
        """Lock staging file ``name`` for writing (`StagingBusy` if another writer has it).

        The file is only truncated by the `StagingWriter`'s methods, so a caller can re-check,
        under the lock, that the upload still wants bytes before anything is lost.
        """
        path = self.path(name)
        f = await asyncio.to_thread(_open_locked, path)
        try:
            yield StagingWriter(path, f)
        finally:
            f.close()  # releases the flock; a no-op if write() already closed it

    async def write_bytes(self, name: str, data: bytes) -> Path:
        """Write a small, already-verified blob to staging, synced; its path."""
        path = self.path(name)

        def write() -> None:
            try:
                with path.open("wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:
                path.unlink(missing_ok=True)  # no partial file left behind (a full disk)
                raise

        await asyncio.to_thread(write)
        return path

    async def size(self, name: str) -> int | None:
        """The staging file's size, or None if it does not exist."""
        try:
            return (await asyncio.to_thread(os.stat, self.path(name))).st_size
        except FileNotFoundError:
            return None

    async def sha256(self, name: str) -> str:
        """The hex SHA-256 of the staging file (read in a worker thread)."""

        def digest() -> str:
            with self.path(name).open("rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest()

        return await asyncio.to_thread(digest)

    async def head(self, name: str, n: int) -> bytes:
        """The first ``n`` bytes of the staging file."""

        def read() -> bytes:
            with self.path(name).open("rb") as f:
                return f.read(n)

        return await asyncio.to_thread(read)

    async def remove(self, name: str) -> None:
        """Delete the staging file if it exists."""
        await asyncio.to_thread(self.path(name).unlink, True)
