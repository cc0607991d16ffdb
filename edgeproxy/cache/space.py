"""The cache's volume: its free space, the reserve the cache keeps free on it, and a ballast.

``statvfs`` is a system call, so a reading is trusted for `READING_TTL` with the bytes written
since subtracted: a fill asks once per slice, not per write. The ballast is a small file,
really allocated, that is deleted when the volume is full so the index still has room for the
journal of a purge or an eviction (SQLite needs to write before it can free), and made again
once there is space.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import struct
import time
from pathlib import Path

from ..config import FreeSpace

log = logging.getLogger("edgeproxy.cache")

READING_TTL = 1.0
BALLAST = "space.ballast"
BALLAST_MAX = 8 * 1024**2
EVICTIONS = "evict.epoch"
_COUNTER = struct.Struct("=Q")


class NoRoom(OSError):
    """The volume has no room for a write without going below the cache's reserve."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)


class Volume:
    """The volume a cache directory lives on (one per worker process; the kernel's numbers
    are shared by all)."""

    def __init__(self, directory: Path, min_free: FreeSpace) -> None:
        self.directory = directory
        self.min_free = min_free
        self.ballast = directory / BALLAST
        self._free = 0
        self._total = 0
        self._read_at = -READING_TTL
        self._want_ballast = True
        self._evictions = _shared_counter(directory / EVICTIONS)

    def evictions(self) -> int:
        """A counter every worker's eviction bumps (kept descriptors of evicted files still
        hold their space: a worker that sees it change closes its own)."""
        value: int = _COUNTER.unpack_from(self._evictions)[0]
        return value

    def evicted(self) -> None:
        """Tell every worker that slice files were evicted."""
        _COUNTER.pack_into(self._evictions, 0, (self.evictions() + 1) % (1 << 64))

    def close(self) -> None:
        """Release the shared counter."""
        if isinstance(self._evictions, mmap.mmap):
            self._evictions.close()

    def _read(self) -> None:
        st = os.statvfs(self.directory)
        self._free = st.f_bavail * st.f_frsize
        self._total = st.f_blocks * st.f_frsize
        self._read_at = time.monotonic()
        if self._want_ballast:
            self._make_ballast()

    def free(self, *, fresh: bool = False) -> int:
        """Bytes free for the cache (as an unprivileged writer sees them)."""
        if fresh or time.monotonic() - self._read_at >= READING_TTL:
            self._read()
        return self._free

    def reserve(self) -> int:
        """Bytes the cache leaves free."""
        if not self._total:
            st = os.statvfs(self.directory)
            self._total = st.f_blocks * st.f_frsize
        return self.min_free.of(self._total)

    def spend(self, nbytes: int) -> None:
        """``nbytes`` are about to be written: count them until the next reading."""
        self._free -= nbytes

    def shortfall(self, nbytes: int, *, fresh: bool = False) -> int:
        """How many bytes must be freed before ``nbytes`` can be written (0: none)."""
        return max(0, self.reserve() + nbytes - self.free(fresh=fresh))

    def usable(self, cache_bytes: int) -> int:
        """The most the cache could hold: what it holds plus the free space above the
        reserve (everything else on the volume stays where it is)."""
        return max(0, cache_bytes + self.free() - self.reserve())

    def ballast_size(self) -> int:
        """How large the ballast is (none when the cache keeps no reserve)."""
        return min(BALLAST_MAX, self.reserve() // 2)

    def _make_ballast(self) -> None:
        """Make the ballast once the volume has room for it above the reserve; its blocks
        are really allocated, it is no sparse file."""
        size = self.ballast_size()
        if size <= 0:
            self._want_ballast = False
            return
        if self._free - size < self.reserve():
            return  # later: when there is room
        self._want_ballast = False
        try:
            fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return  # there already (another worker made it), or no room after all
        try:
            os.posix_fallocate(fd, 0, size)
            self._free -= size
        except OSError:
            with contextlib.suppress(OSError):
                self.ballast.unlink()
            self._want_ballast = True
        finally:
            os.close(fd)

    def release_ballast(self) -> bool:
        """Delete the ballast to give the index room; whether there was one."""
        try:
            self.ballast.unlink()
        except FileNotFoundError:
            return False
        log.warning("the cache volume of %s is full: released the %s to free space",
                    self.directory, BALLAST)
        self._read()
        self._want_ballast = True  # made again once there is room
        return True


def _shared_counter(path: Path) -> mmap.mmap | bytearray:
    """An 8-byte counter in a file every worker maps; the bytes are written, not left a
    hole, so that writing through the map never meets a full volume (SIGBUS). Without
    room for the file, a counter of this process alone."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return bytearray(_COUNTER.size)
    try:
        if os.fstat(fd).st_size < _COUNTER.size:
            os.pwrite(fd, bytes(_COUNTER.size), 0)
        return mmap.mmap(fd, _COUNTER.size)
    except OSError:
        return bytearray(_COUNTER.size)
    finally:
        os.close(fd)
