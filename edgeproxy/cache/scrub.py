"""The scrub: hash every stored slice again, whatever the workers remember, and drop bad ones.

A worker trusts a slice file it has checked until the file's state changes (`checksum`);
decay the file system does not see leaves the state alone, so a scrub re-reads everything.
It runs on demand (``POST /_admin/scrub``, ``edgeproxy scrub``) or, with
``cache.scrub_interval`` set, in the background at most ``cache.scrub_rate`` bytes a second,
one worker of a node at a time. Reads and hashes run in a thread of their own (most of a cache
is cold: its reads must not stall the worker's requests), one slice at a time, so a scrub
holds no list of the whole cache; what it finds is acted on in the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .checksum import SliceCheck
from .store import CacheStore

log = logging.getLogger("edgeproxy.cache")

# How often a scrub reports its progress (seconds).
PROGRESS_EVERY = 0.5


@dataclass
class ScrubState:
    """How far a scrub has got."""

    total: int = 0  # slices stored when it started
    checked: int = 0
    bad: int = 0
    bytes: int = 0


async def run(store: CacheStore, *, rate: int = 0,
              on_total: Callable[[ScrubState], Awaitable[None]] | None = None,
              on_bad: Callable[[str, int], Awaitable[None]] | None = None,
              on_progress: Callable[[ScrubState], Awaitable[None]] | None = None) -> ScrubState:
    """Check every stored slice, dropping those that fail; ``rate``: bytes a second at most
    (0: as fast as the disk goes)."""
    loop = asyncio.get_running_loop()
    state = ScrubState()
    # One thread throughout: the index's key iterator is bound to its thread's connection.
    with ThreadPoolExecutor(1, thread_name_prefix="scrub") as thread:
        state.total = await loop.run_in_executor(
            thread, lambda: sum(1 for _ in store.slice_keys()))
        if on_total is not None:
            await on_total(state)
        keys = store.slice_keys()

        def next_check() -> tuple[bool, SliceCheck | None]:
            skey = next(keys, None)
            return (False, None) if skey is None else (True, store.inspect(skey))

        started = reported = time.monotonic()
        while True:
            more, check = await loop.run_in_executor(thread, next_check)
            if not more:
                break
            if check is None:
                continue  # dropped or evicted meanwhile
            state.checked += 1
            state.bytes += check.size
            store.settle(check)
            if not check.ok:
                state.bad += 1
                if on_bad is not None:
                    _kind, index, _version, key = check.skey.split("\0", 3)
                    await on_bad(key, int(index))
            if on_progress is not None and time.monotonic() - reported >= PROGRESS_EVERY:
                reported = time.monotonic()
                await on_progress(state)
            if rate > 0:
                ahead = state.bytes / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    return state


class BackgroundScrub:
    """Scrub passes every ``interval`` seconds, by whichever worker of the node gets to it.

    A pass needs the node's scrub lock (a record lock the kernel drops with a dead worker)
    and starts only once ``interval`` has gone by since the last pass of any worker ended.
    A node restarted often may so never get to a pass: ``edgeproxy scrub`` runs one now.
    """

    def __init__(self, store: CacheStore, interval: float, rate: int) -> None:
        self.store = store
        self.interval = interval
        self.rate = rate
        self.lock_path = store.directory / "scrub.lock"
        self.done_path = store.directory / "scrub.done"  # its mtime: when the last pass ended
        self.passes = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin (needs the running loop)."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop at once, mid-pass if need be (a pass holds no state worth finishing)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._pass()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failing pass is logged; the next one may go better
                log.exception("background scrub of %s failed", self.store.directory)

    async def _pass(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # another worker is scrubbing
            with contextlib.suppress(FileNotFoundError):
                if time.time() - self.done_path.stat().st_mtime < self.interval:
                    return  # another worker has just scrubbed
            state = await run(self.store, rate=self.rate)
            self.done_path.touch()
            self.passes += 1
            log.info("background scrub of %s: %d slices checked, %d bad (dropped)",
                     self.store.directory, state.checked, state.bad)
        finally:
            os.close(fd)  # and with it the lock
