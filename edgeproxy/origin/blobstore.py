"""Content-addressed storage of committed blobs, and the local staging area that feeds it.

A blob is named by the lowercase hex SHA-256 of its bytes and never changes once committed, so
the same bytes uploaded twice are stored once. Callers verify a blob *before* committing it:
`BlobStore.commit` moves a local file that already has the right hash into the store.
`LocalBlobStore` keeps blobs on the local filesystem; an S3-compatible backend implements
the same `BlobStore` protocol. Uploads still arriving or awaiting confirm are staged apart
(`edgeproxy.origin.staging`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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
