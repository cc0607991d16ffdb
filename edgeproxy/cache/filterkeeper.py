"""The key filter kept useful: built anew from the index once it fills up, and every worker
moved to the new one.

Nothing ever leaves the filter (`presence`): the keys of evicted and purged objects keep their
slots. On a node whose cache turns over, the share of slots set grows until nearly every miss
is a false "may hold" that asks SQLite, the query the filter is there to save (15-90 us of
each miss). Once more than `RENEW_AT` of the slots are set, one worker builds a new filter from
the keys the index holds now (in a thread, under the index's lock, as the first filter is
built) and renames it into place; every worker maps the new file within `SWITCH_EVERY`.

A key a worker adds while the new filter is being built, or to the old one before it
switches, is not in the new file. Its object would be a miss once (fetched and stored again,
never a wrong byte); so, once no worker can still be using the old file, the builder adds
every key stored in the index since just before the build began.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

from . import index, queries
from .batch import COMMIT_DELAY
from .keys import META_PREFIX
from .presence import NAME, Presence, build, presence_of, slots_for

if TYPE_CHECKING:
    from .store import CacheStore

log = logging.getLogger("edgeproxy.cache")

__all__ = ["CHECK_EVERY", "RENEW_AT", "SWITCH_EVERY", "FilterKeeper"]

RENEW_AT = 0.5  # share of slots set beyond which the filter is built anew (false hits ~12 %)
CHECK_EVERY = 300.0  # seconds between two measurements of the share (each reads the file)
SWITCH_EVERY = 1.0  # seconds within which a worker maps a filter another worker built
# Keys stored this long before a build began are in its scan for certain (a row is written
# within a group commit of its key's slots being set)
LEAD_TIME = 1.0


class FilterKeeper:
    """Renewal of one store's key filter, and the switch to a filter another worker built."""

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self.path = store.directory / NAME
        self.renewals = 0  # filters this worker built anew
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin (needs the running loop)."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop, mid-build if need be (a build not renamed into place leaves a temp file
        the next build replaces)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        checked = time.monotonic()
        while True:
            await asyncio.sleep(SWITCH_EVERY)
            try:
                await self._switch()
                if time.monotonic() - checked >= CHECK_EVERY:
                    checked = time.monotonic()
                    presence = self.store.presence
                    if presence is not None and presence.fill() >= RENEW_AT:
                        await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception:  # the filter as it is still answers rightly; try again later
                log.exception("keeping the key filter of %s failed", self.store.directory)

    def switch(self) -> bool:
        """Map the filter file anew if it is not the one this worker has (another worker
        built it, or it was removed: then it is made again from the index, as at start);
        whether it did."""
        if not self._replaced():
            return False
        fresh = self._open()
        if fresh is None:
            return False
        self._adopt(fresh)
        return True

    async def _switch(self) -> None:
        """`switch`, with the mapping (or a build from the index, which can take seconds)
        done in a thread: the event loop only swaps the filter in."""
        if self._replaced():
            fresh = await asyncio.to_thread(self._open)
            if fresh is not None:
                self._adopt(fresh)

    def _replaced(self) -> bool:
        presence = self.store.presence
        if presence is None:
            return False
        try:
            return os.stat(self.path).st_ino != presence.ino
        except FileNotFoundError:
            return True

    def _open(self) -> Presence | None:
        store = self.store  # (the index's connection is the calling thread's)
        return presence_of(store.directory, store.sql(), slots_for(store.size_limit))

    async def renew(self) -> bool:
        """Build the filter anew from the index's keys, use it, and once every worker has
        switched add the keys stored meanwhile; whether this worker built it."""
        old = self.store.presence
        if old is None:
            return False
        began = time.time()
        fresh = await asyncio.to_thread(self._build, old.ino)
        if fresh is None:
            return False
        share = fresh.fill()
        self._adopt(fresh)
        self.renewals += 1
        # then no worker adds to the old file any more, and what it added is committed
        await asyncio.sleep(SWITCH_EVERY + 2 * COMMIT_DELAY + 0.1)
        # (the index's connection is per thread: it is asked for in the thread)
        recent = await asyncio.to_thread(
            lambda: queries.keys_since(self.store.sql(), META_PREFIX, began - LEAD_TIME))
        for key in recent:
            fresh.add(key)
        log.info("key filter %s built anew: %.0f %% of its slots set (%d keys since)",
                 self.path, 100 * share, len(recent))
        return True

    def _build(self, ino: int) -> Presence | None:
        """The new filter, built here (a thread) under the index's lock; None if another
        worker built one since this worker's was mapped (the switch takes that one)."""
        store = self.store
        with index.locked(store.directory):
            try:
                if os.stat(self.path).st_ino != ino:
                    return None
            except FileNotFoundError:
                return None
            execute = store.sql()
            return build(self.path, slots_for(store.size_limit),
                         lambda: queries.keys_with(execute, META_PREFIX))

    def _adopt(self, fresh: Presence) -> None:
        old, self.store.presence = self.store.presence, fresh
        if old is not None:
            old.close()
