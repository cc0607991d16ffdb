"""Stored slice files as one worker reads them: descriptors kept open, and checked.

A hit on a large object reads its slices from files the store keeps open (a bounded LRU of
descriptors): one ``fstat`` and one ``pread`` each, and no ``open``. The ``fstat`` tells
whether the file changed since its bytes were found to match their checksum; a file this
worker has not checked in its present state is hashed first (`checksum`). A descriptor the
store lets go of (LRU, purge, failed check) closes only after its last reader: its number is
never reused under a request still sending from it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import IO

from .checksum import (
    RACY_NS,
    FileState,
    VerifiedFiles,
    file_matches,
    file_state,
    fine_ctime,
    from_file_name,
    same_bytes,
    settled,
)

FD_CACHE_SIZE = 256


class KeptFile:
    """A slice file's descriptor kept open, and what was checked of it."""

    __slots__ = ("checksum", "fd", "name", "retired", "state", "users")

    def __init__(self, fd: int, name: str, expected: int | None) -> None:
        self.fd = fd
        self.name = name  # the file the index named when it was opened
        self.checksum = expected
        self.state: FileState | None = None  # as last found to match its checksum
        self.users = 0
        self.retired = False

    @classmethod
    def adopt(cls, opened: IO[bytes]) -> KeptFile:
        """Keep a descriptor on a slice file the index opened (closing ``opened``)."""
        with opened:
            return cls(os.dup(opened.fileno()), opened.name, from_file_name(opened.name))

    def retire(self) -> None:
        """No new readers; the descriptor closes once the last one is done."""
        self.retired = True
        if self.users <= 0:
            os.close(self.fd)

    def release(self) -> None:
        """One reader is done."""
        self.users -= 1
        if self.retired and self.users <= 0:
            os.close(self.fd)


class SliceFile:
    """A stored slice's file, as one reader uses it; closing it ends that use."""

    __slots__ = ("_kept", "_open", "_state")

    def __init__(self, kept: KeptFile, state: FileState) -> None:
        self._kept = kept
        self._state = state  # as found to match, just before this reader got the file
        self._open = True
        kept.users += 1

    def fileno(self) -> int:
        """The descriptor (read it with ``os.pread``)."""
        return self._kept.fd

    @property
    def checksum(self) -> int | None:
        """The xxh3 the file's bytes were found to match (its name states it)."""
        return self._kept.checksum

    @property
    def size(self) -> int:
        """The file's size when its checksum was found to match (no system call)."""
        return self._state[2]

    def unchanged(self) -> bool:
        """Whether the file is as it was when its checksum was found to match (one
        ``fstat``): a sender asks before its last byte, so a file written to while it was
        being sent aborts the answer rather than complete it."""
        return same_bytes(self._state, os.fstat(self._kept.fd))

    def close(self) -> None:
        """This reader is done (once; later calls do nothing)."""
        if self._open:
            self._open = False
            self._kept.release()

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> SliceFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FilePiece:
    """Bytes of an open slice file for a server to send itself (``sendfile``), not read
    into memory: the file, where they start, how many, and what follows them in the same
    answer (the other slices of a whole object: pieces of files, or a small slice's bytes);
    all are closed once sent."""

    __slots__ = ("_total", "file", "length", "offset", "then")

    def __init__(self, file: SliceFile, offset: int, length: int,
                 then: tuple[FilePiece | bytes, ...] = ()) -> None:
        self.file = file
        self.offset = offset
        self.length = length  # this piece's own bytes
        self.then = then
        self._total = length + sum(len(part) for part in then)

    def __len__(self) -> int:
        """The bytes of this piece and of those that follow it."""
        return self._total

    def fileno(self) -> int:
        """The descriptor (the file's, shared with other readers: use ``os.pread``)."""
        return self.file.fileno()

    def unchanged(self) -> bool:
        """Whether the file is still as it was checked (`SliceFile.unchanged`)."""
        return self.file.unchanged()

    def close(self) -> None:
        """This piece, and those that follow it, are done with."""
        self.file.close()
        for part in self.then:
            if isinstance(part, FilePiece):
                part.file.close()


class SliceFiles:
    """The slice files one worker keeps open, by index key, and the states it has checked."""

    def __init__(self, size: int = FD_CACHE_SIZE, racy_ns: int = RACY_NS) -> None:
        self.size = size
        self.racy_ns = racy_ns  # (see `checksum.settled`)
        self.verified = VerifiedFiles()
        self._kept: OrderedDict[str, KeptFile] = OrderedDict()

    @classmethod
    def on_volume(cls, directory: str | os.PathLike[str]) -> SliceFiles:
        """For the slice files of ``directory``: where its volume gives every change a new
        ctime (`checksum.fine_ctime`), a file found good is remembered at once."""
        return cls(racy_ns=0 if fine_ctime(directory) else RACY_NS)

    def settled(self, state: FileState) -> bool:
        """Whether a file in ``state`` may be remembered as checked (`checksum.settled`)."""
        return settled(state, self.racy_ns)

    def get(self, skey: str) -> KeptFile | None:
        """The kept file of ``skey`` (most recently used now), or None."""
        kept = self._kept.get(skey)
        if kept is not None:
            self._kept.move_to_end(skey)
        return kept

    def check(self, kept: KeptFile) -> FileState | None:
        """The file's state if it holds the bytes its checksum names now, else None. A state
        this worker found matching before is not hashed again."""
        st = os.fstat(kept.fd)
        state = file_state(st)
        if kept.state is not None and same_bytes(kept.state, st):
            return state
        expected = kept.checksum
        if expected is None:
            return None  # a file without a checksum is not one the store wrote
        if not self.verified.knows(state, expected):
            if not file_matches(kept.fd, state[2], expected):
                return None
            if self.settled(state):
                self.verified.remember(state, expected)
        if self.settled(state):
            kept.state = state
        return state

    def keep(self, skey: str, kept: KeptFile) -> None:
        """Keep ``kept`` open for later reads of ``skey`` (the least recent goes past the
        bound)."""
        old = self._kept.pop(skey, None)
        if old is not None:
            old.retire()
        self._kept[skey] = kept
        if len(self._kept) > self.size:
            self._kept.popitem(last=False)[1].retire()

    def let_go(self, skey: str) -> None:
        """Stop keeping ``skey``'s file (it failed its check, or was dropped)."""
        kept = self._kept.pop(skey, None)
        if kept is not None:
            kept.retire()

    def forget(self) -> None:
        """Let go of every kept file (after a purge here or in another worker)."""
        for kept in self._kept.values():
            kept.retire()
        self._kept.clear()
