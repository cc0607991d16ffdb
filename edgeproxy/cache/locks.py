"""Claims on slice fills shared by the worker processes of one node.

Inside a process, the `Fetcher`'s registry collapses concurrent misses. Across worker
processes, a fill is claimed with a POSIX record lock on one byte of ``fills.lock`` (a stripe
chosen by hashing the key and slice), and a record in the index names the claimant's temp file,
so other workers follow that file instead of fetching the slice again. The kernel drops the
lock when a process dies, so a crashed leader never blocks anyone.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

from .store import CacheStore

STRIPES = 1 << 22  # enough that two live fills rarely share a stripe


def _stripe(key: str, index: int) -> int:
    digest = hashlib.blake2b(f"{index}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % STRIPES


class FillLocks:
    """Cross-process slice claims for one cache directory."""

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self._fd = os.open(store.directory / "fills.lock", os.O_RDWR | os.O_CREAT, 0o600)
        # POSIX locks belong to the process: one we hold cannot be seen by ourselves, and an
        # unlock would drop it for every holder in this process, so count our own stripes.
        self._held: dict[int, int] = {}

    def claim(self, key: str, index: int, temp: Path) -> bool:
        """Try to become the one process filling this slice; record our temp file if so.

        False when another process holds the slice's stripe: usually it fills this very
        slice; rarely it is a different key on the same stripe, and then the caller waits for
        that fill to end, which costs time but never a duplicate fetch or a wrong body.
        """
        stripe = _stripe(key, index)
        if stripe not in self._held:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, stripe)
            except OSError:
                return False
        self._held[stripe] = self._held.get(stripe, 0) + 1
        self.store.set_fill_record(key, index, str(temp))
        return True

    def release(self, key: str, index: int) -> None:
        """Drop our claim (after the slice was committed or discarded)."""
        stripe = _stripe(key, index)
        count = self._held.get(stripe, 0)
        if count:
            self.store.drop_fill_record(key, index)
        if count > 1:
            self._held[stripe] = count - 1
        elif count == 1:
            del self._held[stripe]
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, stripe)

    def held_elsewhere(self, key: str, index: int) -> bool:
        """Whether another process holds this slice's stripe right now."""
        stripe = _stripe(key, index)
        if stripe in self._held:
            return False  # ours (the in-process registry knows which key)
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, stripe)
        except OSError:
            return True
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, stripe)
        return False

    def foreign(self, key: str, index: int) -> Path | None:
        """The temp file another process is filling this slice into, if it has said so."""
        if not self.held_elsewhere(key, index):
            return None
        record = self.store.fill_record(key, index)
        return Path(record) if record else None

    def close(self) -> None:
        """Release every claim (shutdown)."""
        os.close(self._fd)
