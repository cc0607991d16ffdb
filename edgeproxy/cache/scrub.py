"""The scrub: hash every stored slice again, whatever the workers remember, and drop bad ones;
then hash whole the objects whose SHA-256 is known but whose slices came by ranges.

A worker trusts a slice file it has checked until the file's state changes (`checksum`);
decay the file system does not see leaves the state alone, so a scrub re-reads everything.
It runs on demand (``POST /_admin/scrub``, ``edgeproxy scrub``) or, with
``cache.scrub_interval`` set, in the background at most ``cache.scrub_rate`` bytes a second,
one worker of a node at a time. Reads and hashes run in a thread of their own (most of a cache
is cold: its reads must not stall the worker's requests), one slice at a time, so a scrub
holds no list of the whole cache; what it finds is acted on in the event loop.

Slices filled by ranges pass their own checksum and, where the origin sent one, their range's
Content-Digest; the object's SHA-256 (its content address, or Repr-Digest) is first checked
when a whole answer is assembled from them. The object pass checks it before any reader asks:
an object whose slices are all stored is hashed across them in order, then marked verified
(later passes and whole answers skip it) or, on a mismatch, dropped whole and fetched anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import policy
from .checksum import SliceCheck, feed
from .meta import ObjectMeta
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
    bytes: int = 0  # read by both passes
    objects_verified: int = 0  # hashed whole and found right (marked verified)
    objects_bad: int = 0  # hashed whole and found wrong (dropped)
    objects_incomplete: int = 0  # to verify, but a slice is missing (skipped)


@dataclass
class ObjectPass:
    """What the object pass needs of its node: the SHA-256 an object must have (None: none,
    or already verified), and what to do with one found right or wrong."""

    expected: Callable[[str, ObjectMeta], str | None]
    verified: Callable[[str, ObjectMeta], None]
    failed: Callable[[str, str], None]  # key, why


async def run(store: CacheStore, *, rate: int = 0,
              on_total: Callable[[ScrubState], Awaitable[None]] | None = None,
              on_bad: Callable[[str, int], Awaitable[None]] | None = None,
              on_progress: Callable[[ScrubState], Awaitable[None]] | None = None,
              objects: ObjectPass | None = None,
              on_bad_object: Callable[[str], Awaitable[None]] | None = None) -> ScrubState:
    """Check every stored slice, dropping those that fail, then (with ``objects``) every
    object to verify whole; ``rate``: bytes a second at most (0: as fast as the disk goes)."""
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
            await _pace(state, rate, started)
        if objects is not None:
            await _objects(store, thread, state, objects, rate, started, on_bad_object)
    return state


async def _pace(state: ScrubState, rate: int, started: float) -> None:
    if rate > 0:
        ahead = state.bytes / rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)


async def _objects(store: CacheStore, thread: ThreadPoolExecutor, state: ScrubState,
                   objects: ObjectPass, rate: int, started: float,
                   on_bad_object: Callable[[str], Awaitable[None]] | None) -> None:
    """The object pass: facts are read in the event loop (where this worker's pending
    writes are), keys listed and bytes hashed in the scrub's thread."""
    loop = asyncio.get_running_loop()
    keys = await loop.run_in_executor(thread, store.meta_keys)
    while (key := await loop.run_in_executor(thread, next, keys, None)) is not None:
        meta = store.get_meta(key)
        if meta is None or meta.length is None or meta.length == 0 or meta.vary:
            continue
        digest = objects.expected(key, meta)
        if digest is None:
            continue  # nothing to check it against, or verified already
        count = policy.slice_count(meta.length, meta.slice_size)
        if len(store.stored_slices(key, meta.version, range(count))) < count:
            state.objects_incomplete += 1  # checked when a whole answer assembles it
            continue
        got, size = await loop.run_in_executor(thread, _sha256, store, key, meta, count)
        state.bytes += size
        if got is None:
            state.objects_incomplete += 1  # a slice went, or went bad, meanwhile
        elif hmac.compare_digest(got, digest):
            state.objects_verified += 1
            objects.verified(key, meta)
        else:
            state.objects_bad += 1
            objects.failed(key, f"body SHA-256 {got[:16]}… across its stored slices does "
                                f"not match the expected {digest[:16]}… (scrub)")
            if on_bad_object is not None:
                await on_bad_object(key)
        await _pace(state, rate, started)


def _sha256(store: CacheStore, key: str, meta: ObjectMeta, count: int) -> tuple[str | None, int]:
    """The SHA-256 of an object across its stored slices, each checked against its own
    checksum on the way (None if one is gone or fails), and the bytes read."""
    hasher: Any = hashlib.sha256()
    total = 0
    for index in range(count):
        stored = store.raw_slice(key, meta.version, index)
        size = None if stored is None else feed(stored, hasher)
        if size is None:
            return None, total
        total += size
    return (hasher.hexdigest() if total == meta.length else None), total


class BackgroundScrub:
    """Scrub passes every ``interval`` seconds, by whichever worker of the node gets to it.

    A pass needs the node's scrub lock (a record lock the kernel drops with a dead worker)
    and starts only once ``interval`` has gone by since the last pass of any worker ended.
    A node restarted often may so never get to a pass: ``edgeproxy scrub`` runs one now.
    """

    def __init__(self, store: CacheStore, interval: float, rate: int,
                 objects: ObjectPass | None = None) -> None:
        self.store = store
        self.objects = objects
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
            state = await run(self.store, rate=self.rate, objects=self.objects)
            self.done_path.touch()
            self.passes += 1
            log.info("background scrub of %s: %d slices checked, %d bad (dropped); objects: "
                     "%d verified, %d bad (dropped), %d incomplete", self.store.directory,
                     state.checked, state.bad, state.objects_verified, state.objects_bad,
                     state.objects_incomplete)
        finally:
            os.close(fd)  # and with it the lock
