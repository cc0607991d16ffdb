"""Slice checksums: an xxh3-64 of every stored slice, written at fill time, checked on read.

The checksum travels with the slice's index entry, never in the slice's bytes: a small slice
stored inline is the checksum (8 bytes, big-endian) followed by its bytes; a slice file's
checksum is part of the file name the index records. A stored slice whose bytes no longer
hash to its checksum (a flipped bit on the disk, a stray write) is never served.

Hashing a large slice file on every hit would cost a pass over its bytes each time, so a
file is hashed the first time a worker reads it, and the worker then remembers the file's
state (`FileState`: device, inode, size, mtime and ctime). Any later write to the file changes
its ctime, which only the kernel sets, so a changed file is hashed again before its next use.
Where file times come from a coarse clock, a file changed within the last clock ticks is not
remembered (`settled`); where the volume gives a new ctime to every change after a ``stat``
(Linux 6.13's multigrain timestamps: `fine_ctime` finds out), every state found good is.
What the memo cannot see is a change that bypasses the file system (media decay under the page
cache): the scrub re-reads every slice regardless of the memo.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from dataclasses import dataclass
from typing import IO, Any

import xxhash

# The width of a checksum as stored in front of an inline slice.
_INLINE = struct.Struct(">Q")
INLINE_HEADER = _INLINE.size
# How much of a slice file is read per call while hashing it.
HASH_CHUNK = 1024 * 1024
# How many verified file states a worker remembers (about 250 bytes each); past that the
# oldest is forgotten and that file is hashed again when next opened.
MEMO_SIZE = 16384

# A file changed less than this long ago may change again without a new ctime (`settled`).
RACY_NS = 50_000_000

FileState = tuple[int, int, int, int, int]


class SliceHasher:
    """The running checksum of a slice as a fill writes it (no second pass over the bytes)."""

    __slots__ = ("_hasher",)

    def __init__(self) -> None:
        self._hasher = xxhash.xxh3_64()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Account the next bytes of the slice."""
        self._hasher.update(data)

    def value(self) -> int:
        """The checksum of every byte so far."""
        return int(self._hasher.intdigest())


def of(data: bytes | bytearray | memoryview) -> int:
    """The checksum of ``data`` in one call."""
    return int(xxhash.xxh3_64_intdigest(data))


def seal(data: bytes, checksum: int) -> bytes:
    """An inline slice as the index stores it: checksum, then bytes."""
    return _INLINE.pack(checksum) + data


def carried(name: str | None, sealed: bytes | None) -> int | None:
    """The checksum a stored slice's index row carries (unchecked): in its file's name, or
    before its inline bytes (`seal`; the first `INLINE_HEADER` bytes suffice)."""
    if name:
        return from_file_name(name)
    if sealed is None or len(sealed) < INLINE_HEADER:
        return None
    return int(_INLINE.unpack_from(sealed)[0])


def unseal(stored: bytes) -> bytes | None:
    """The bytes of an inline slice as stored by `seal`, or None if they fail their check."""
    if len(stored) < INLINE_HEADER:
        return None
    view = memoryview(stored)
    if of(view[INLINE_HEADER:]) != _INLINE.unpack_from(stored)[0]:
        return None
    return stored[INLINE_HEADER:]


def file_name(random_name: str, checksum: int) -> str:
    """A slice file's name, ``random_name`` carrying its checksum (``<random>-<16 hex>.val``)."""
    stem = random_name[:-4] if random_name.endswith(".val") else random_name
    return f"{stem}-{checksum:016x}.val"


def from_file_name(path: str) -> int | None:
    """The checksum a slice file's name carries, or None (not a name `file_name` made)."""
    stem = os.path.basename(path)
    if not stem.endswith(".val"):
        return None
    digits = stem[:-4].rpartition("-")[2]
    if len(digits) != 16:
        return None
    try:
        return int(digits, 16)
    except ValueError:
        return None


def file_state(st: os.stat_result) -> FileState:
    """What identifies a file's content as of ``st``: any write to it changes the ctime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def same_bytes(state: FileState, st: os.stat_result) -> bool:
    """Whether a file found in ``state`` holds the same bytes as of ``st``: its state is
    unchanged, or it has only lost its last name since.

    Removing a file's last name (an eviction; the index moving on to a newer copy of the
    slice) moves its ctime as a write does, and a worker still sending the file took that
    for a write and cut its answer (seen when a refetch in another worker replaced a slice
    a lane answer was about to send). A write moves the mtime too, unlinked file or not.
    """
    now = file_state(st)
    return now == state or (st.st_nlink == 0 and now[:4] == state[:4])


def settled(state: FileState, racy_ns: int = RACY_NS) -> bool:
    """Whether a later write is sure to give the file another ctime.

    File times may come from a coarse clock (a timer tick, up to 10 ms on Linux): a write
    within the tick of the last change may then keep the ctime. So a file changed less than
    ``racy_ns`` ago is not remembered as checked, as git treats "racily clean" files: it is
    hashed again when next read. (Under a stampede every reader of a slice committed a moment
    ago hashed it anew: 3.4 bytes hashed per byte stored, traced.) ``racy_ns`` 0: the
    volume's ctimes are fine-grained (`fine_ctime`), and any state is settled.
    """
    return racy_ns <= 0 or time.time_ns() - state[4] >= racy_ns


PROBES = 32  # back-to-back changes `fine_ctime` makes


def fine_ctime(directory: str | os.PathLike[str]) -> bool:
    """Whether files in ``directory`` get a new ctime for every change made after their
    ctime was read (``fstat``), however soon: Linux's multigrain timestamps (6.13 on) do
    that for the volumes that support them. Found out by `PROBES` changes in a row, each
    after an ``fstat``; one that keeps the ctime, or any error, says no."""
    try:
        fd, path = _probe_file(directory)
    except OSError:
        return False
    try:
        seen = os.fstat(fd).st_ctime_ns
        for i in range(PROBES):
            os.pwrite(fd, bytes([i]), 0)
            ctime = os.fstat(fd).st_ctime_ns
            if ctime == seen:
                return False
            seen = ctime
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)


def _probe_file(directory: str | os.PathLike[str]) -> tuple[int, str]:
    path = os.path.join(directory, f".ctime-probe-{os.getpid()}-{time.monotonic_ns()}")
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), path


def file_matches(fd: int, size: int, checksum: int, also: Any = None) -> bool:
    """Whether the ``size`` bytes of the open file ``fd`` hash to ``checksum``; ``also``:
    another hasher (``update``) fed the same bytes."""
    hasher = xxhash.xxh3_64()
    pos = 0
    while pos < size:
        chunk = os.pread(fd, min(HASH_CHUNK, size - pos), pos)
        if not chunk:
            return False  # shorter than it was a moment ago: not the bytes that were stored
        hasher.update(chunk)
        if also is not None:
            also.update(chunk)
        pos += len(chunk)
    return bool(hasher.intdigest() == checksum)


def feed(stored: bytes | IO[bytes], hasher: Any) -> int | None:
    """Feed a stored slice (a sealed record, or an opened file: closed here) to ``hasher``
    as its own checksum is checked: its size, or None if it fails that check (``hasher``
    has then seen bytes that are not the slice's)."""
    if isinstance(stored, bytes):
        data = unseal(stored)
        if data is None:
            return None
        hasher.update(data)
        return len(data)
    with stored:
        expected = from_file_name(stored.name)
        size = os.fstat(stored.fileno()).st_size
        if expected is None or not file_matches(stored.fileno(), size, expected, hasher):
            return None
        return size


class VerifiedFiles:
    """The file states this worker has hashed and found matching (a bounded memo)."""

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self.size = size
        self._states: dict[FileState, int] = {}

    def knows(self, state: FileState, checksum: int) -> bool:
        """Whether a file in ``state`` was found to hash to ``checksum``."""
        return self._states.get(state) == checksum

    def remember(self, state: FileState, checksum: int) -> None:
        """A file in ``state`` hashed to ``checksum`` (the oldest state goes past the bound)."""
        self._states[state] = checksum
        if len(self._states) > self.size:
            del self._states[next(iter(self._states))]

    def forget(self, state: FileState) -> None:
        """Drop one state (its file failed a check)."""
        self._states.pop(state, None)

    def __len__(self) -> int:
        return len(self._states)


@dataclass(frozen=True)
class SliceCheck:
    """One stored slice hashed whatever a worker remembers of it (a scrub)."""

    skey: str  # its index key
    stored: str | bytes  # its file's name, or its inline record
    ok: bool
    size: int
    state: FileState | None  # a file's state as hashed
    checksum: int | None


def check_inline(skey: str, stored: bytes) -> SliceCheck:
    """Check an inline slice's record."""
    data = unseal(stored)
    return SliceCheck(skey, stored, data is not None, len(data or b""), None, None)


def check_file(skey: str, opened: IO[bytes]) -> SliceCheck:
    """Hash a slice file the index opened (closing it)."""
    with opened:
        name, expected = opened.name, from_file_name(opened.name)
        state = file_state(os.fstat(opened.fileno()))
        ok = expected is not None and file_matches(opened.fileno(), state[2], expected)
    return SliceCheck(skey, name, ok, state[2], state, expected)
