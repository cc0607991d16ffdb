"""Per-upload locks within one worker process (`OriginCore.hold_upload` adds the
cross-process one)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..errors import HTTPError

__all__ = ["IN_PROGRESS", "UploadLocks"]

IN_PROGRESS = HTTPError(409, "upload_in_progress", "another request is using this upload")


class UploadLocks:
    """Per-upload asyncio locks that disappear when nobody holds or awaits them."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: Counter[str] = Counter()

    @asynccontextmanager
    async def hold(self, key: str, *, wait: bool) -> AsyncIterator[None]:
        """Hold ``key``'s lock; with ``wait=False`` answer 409 at once if anyone has it."""
        # Counting users (not Lock.locked()) also sees a waiter the lock was just handed to.
        if not wait and self._users[key]:
            raise IN_PROGRESS
        self._users[key] += 1
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]
