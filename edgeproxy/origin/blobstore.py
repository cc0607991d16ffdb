"""Content-addressed storage of committed blobs, and the local staging area that feeds it.

A blob is named by the lowercase hex SHA-256 of its bytes and never changes once committed, so
the same bytes uploaded twice are stored once. Callers verify a blob *before* committing it:
`BlobStore.commit` moves a local file that already has the right hash into the store.
`LocalBlobStore` keeps blobs on the local filesystem; an S3-compatible backend will implement
the same `BlobStore` protocol. `Staging` holds uploads still arriving or awaiting confirm; it
is always local disk, whatever the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
DEFAULT_CHUNK_SIZE = 256 * 1024


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """What the store knows about one committed blob."""

    sha256: str
    size: int
    modified: float  # unix seconds the blob was first stored (Last-Modified)


class BlobStore(Protocol):
    """Where committed blobs live; every method is safe to call from the event loop."""

    async def stat(self, sha256: str) -> BlobInfo | None:
        """The blob's size and time, or None if it is not stored."""
        ...

    async def exists(self, sha256: str) -> bool:
        """Whether the blob is stored."""
        ...

    def open(
        self, sha256: str, start: int = 0, length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncIterator[bytes]:  # fmt: skip
        """Stream ``length`` bytes of the blob from ``start`` (to the end if None)."""
        ...

    async def commit(self, sha256: str, source: Path) -> bool:
        """Move the verified local file ``source`` into the store under ``sha256``.

        ``source`` is consumed either way. Returns True if the blob was newly stored and False
        if an identical blob was already there (the copy is dropped: the same bytes are kept
        once).
        """
        ...

    async def delete(self, sha256: str) -> bool:
        """Remove the blob; False if it was not stored."""
        ...


def _check_name(sha256: str) -> str:
    # The name becomes a path: anything but 64 lowercase hex digits could escape the root.
    if not SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"not a lowercase hex SHA-256: {sha256!r}")
    return sha256


def fsync_dir(path: Path) -> None:
    """Make a rename or link in directory ``path`` durable (POSIX needs the directory synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStore:
    """Blobs as files ``<root>/ab/cd/<sha256>`` on the local filesystem.

    Two directory levels keep any one directory small (65,536 leaves) at millions of blobs.
    ``source`` files given to `commit` must be on the same filesystem as ``root`` so the move
    is an atomic link/rename, never a copy a crash could leave half-written.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """The file a blob is (or would be) stored in."""
        name = _check_name(sha256)
        return self.root / name[:2] / name[2:4] / name

    async def stat(self, sha256: str) -> BlobInfo | None:
        """The blob's size and time, or None if it is not stored."""
        try:
            st = await asyncio.to_thread(os.stat, self.path(sha256))
        except FileNotFoundError:
            return None
        return BlobInfo(sha256, st.st_size, st.st_mtime)

    async def exists(self, sha256: str) -> bool:
        """Whether the blob is stored."""
        return await self.stat(sha256) is not None

    async def open(
        self, sha256: str, start: int = 0, length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncIterator[bytes]:  # fmt: skip
        """Stream ``length`` bytes of the blob from ``start`` (to the end if None).

        Reads run in a worker thread one chunk at a time, so a large blob never sits in memory
        and a slow disk never blocks the event loop.
        """
        f = await asyncio.to_thread(open, self.path(sha256), "rb")
        try:
            await asyncio.to_thread(f.seek, start)
            remaining = length
            while remaining is None or remaining > 0:
                n = chunk_size if remaining is None else min(chunk_size, remaining)
                chunk = await asyncio.to_thread(f.read, n)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            f.close()

    async def commit(self, sha256: str, source: Path) -> bool:
        """Move the verified local file ``source`` into the store (see `BlobStore.commit`)."""
        return await asyncio.to_thread(self._commit, self.path(sha256), source)

    @staticmethod
    def _commit(dest: Path, source: Path) -> bool:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            # link() fails if dest exists, so two commits of the same blob racing each other
            # keep exactly one copy and neither overwrites a blob a reader has open.
            os.link(source, dest)
        except FileExistsError:
            source.unlink(missing_ok=True)
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            # A filesystem without hard links: rename is still atomic, and the blob is the
            # same bytes either way if another commit won the race.
            if dest.exists():
                source.unlink(missing_ok=True)
                return False
            os.replace(source, dest)
        else:
            source.unlink()
        fsync_dir(dest.parent)
        return True

    async def delete(self, sha256: str) -> bool:
        """Remove the blob; False if it was not stored."""
        path = self.path(sha256)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        with contextlib.suppress(OSError):
            await asyncio.to_thread(fsync_dir, path.parent)
        return True


# --- staging -----------------------------------------------------------------------------------

WRITE_BUFFER = 256 * 1024  # batch small network chunks into fewer thread hops and writes


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


def _sync_close(f: IO[bytes]) -> None:
    # fsync before anyone records the bytes as received: a crash must not leave a record
    # claiming bytes the disk never got.
    f.flush()
    os.fsync(f.fileno())
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


async def _pump(chunks: AsyncIterable[bytes], limit: int,
                put: Callable[[bytearray], None]) -> int:
    """Feed ``chunks`` to ``put`` (in a worker thread) in `WRITE_BUFFER` pieces; the number of
    bytes. Raises `TooLarge` as soon as more than ``limit`` bytes arrived."""
    received, buf = 0, bytearray()
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise TooLarge(f"more than {limit} bytes")
        buf += chunk
        if len(buf) >= WRITE_BUFFER:
            data, buf = buf, bytearray()
            await asyncio.to_thread(put, data)
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

    async def append(self, chunks: AsyncIterable[bytes], offset: int, limit: int,
                     checksum: tuple[str, bytes] | None = None) -> tuple[int, str]:  # fmt: skip
        """Write ``chunks`` at ``offset`` (anything after it is dropped first), resumably.

        Returns ``(bytes appended, sha256 hex of those bytes)``, synced to disk. The bytes that
        arrived before the body ended — also when the client went away mid-body — are kept.
        ``checksum`` is ``(hashlib algorithm, digest)`` of the whole appended chunk; on a
        mismatch the chunk is dropped and `ChecksumMismatch` raised. More than ``limit`` bytes
        raise `TooLarge` with the chunk dropped. The file is never shortened below ``offset``.
        """
        f, hasher = self._f, hashlib.sha256()
        check = hashlib.new(checksum[0]) if checksum is not None else None

        def put(data: bytearray) -> None:
            _write(f, hasher, data)
            if check is not None:
                check.update(data)

        try:
            size = await asyncio.to_thread(os.fstat, f.fileno())
            if size.st_size < offset:
                raise StagingShort(size.st_size)
            # A crash after writing but before the offset was recorded leaves extra bytes.
            await asyncio.to_thread(f.truncate, offset)
            await asyncio.to_thread(f.seek, offset)
            received = await _pump(chunks, limit, put)
            if check is not None and checksum is not None and check.digest() != checksum[1]:
                raise ChecksumMismatch(f"{checksum[0]} of the {received} bytes received differs")
            await asyncio.to_thread(_sync_close, f)
        except StagingShort:
            f.close()
            raise
        except BaseException:
            # Drop this request's bytes only: what earlier requests stored stays resumable.
            # Synchronous: this path may run while the task is being cancelled.
            _truncate_sync(f, offset)
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

        The file is only truncated by `StagingWriter.write`, so a caller can re-check, under
        the lock, that the upload still wants bytes before anything is lost.
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
            with path.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

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
