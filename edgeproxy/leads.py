"""Which requests the other worker processes of a node are answering: a table of lead keys
(`edgeproxy.admission.lead_key`) that every worker maps, so that a worker starts at once the
requests that will follow another worker's fetch.

Within a worker, a stampede's requests for one object wait behind the first one, and start
together as its answer begins (`edgeproxy.admission`). Across workers there was no such
order: traced under a stampede (two workers, 200 clients, 20 cold 16 MiB objects), the
second worker's first request for an object the first worker was fetching waited ~100 ms
for its share of the loop's turns, behind that worker's own leaders, then a turn more for its
first step, and its followers behind it: the slowest client's first byte came 2.3-7x after
the leader's. Now a worker marks the lead key of each answer it begins (a leader's, as its
followers here start), and another worker starts at once its new or waiting request whose
key was marked by another process less than `LEAD_MAX` ago: it follows that fetch (the
coalescer's join across processes). Marked as answers begin, not as leaders start: requests
started as soon as a lead began took the loop from the leaders of other objects (their first
bytes ~15-30 % later, measured).

Slots are chosen by a hash of the key; a key shares its slot with others rarely, and then a
request starts ahead of its turn, never in another's place: the table only orders starts.
A slot is the marking process's id and the (system-wide) monotonic time of the mark; a torn
read (two workers writing one slot) misorders one start at worst.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Hashable
from pathlib import Path

import xxhash

__all__ = ["NAME", "SLOTS", "SharedLeads"]

NAME = "leads"
SLOTS = 1 << 16
_SLOT = struct.Struct("=qd")  # the marking process, and when


class SharedLeads:
    """The lead keys whose answers a node's workers began, in a file each of them maps."""

    def __init__(self, path: Path, slots: int = SLOTS) -> None:
        self.slots = slots
        self.pid = os.getpid()
        size = slots * _SLOT.size
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                # written, not a hole: a write through the map can then never meet a full
                # volume (SIGBUS)
                os.pwrite(fd, bytes(size), 0)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    def _offset(self, key: Hashable) -> int:
        # (repr: a key's bytes are the same in every process; hash() of bytes is not)
        return xxhash.xxh64_intdigest(repr(key).encode()) % self.slots * _SLOT.size

    def mark(self, key: Hashable) -> None:
        """This process began an answer for ``key`` (that requests for it may follow)."""
        _SLOT.pack_into(self._map, self._offset(key), self.pid, time.monotonic())

    def led_elsewhere(self, key: Hashable, within: float) -> bool:
        """Whether another process marked ``key`` less than ``within`` seconds ago."""
        pid, began = _SLOT.unpack_from(self._map, self._offset(key))
        return pid not in (0, self.pid) and 0.0 <= time.monotonic() - began < within

    def close(self) -> None:
        """Unmap."""
        self._map.close()
