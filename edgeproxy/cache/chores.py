"""A cache node's background chores, started and stopped with it: freed heap pages given back
(`heaptrim`), the key filter kept useful (`filterkeeper`), descriptors of files other workers
removed let go of, and, where configured, scrub passes over what is stored (`scrub`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..heaptrim import HeapTrim
from .filterkeeper import FilterKeeper
from .scrub import BackgroundScrub, ObjectPass

if TYPE_CHECKING:
    from .store import CacheStore

__all__ = ["HEAP_TRIM_INTERVAL", "LET_GO_EVERY", "Chores"]

HEAP_TRIM_INTERVAL = 2.0  # quiet seconds before freed heap pages go back (`heaptrim`)
# Seconds within which a worker closes its descriptors of slice files another worker evicted
# or purged. A lookup of a slice does it too, but a worker that gets no request, or answers
# only from memory, held the removed files' space on the volume for as long as that lasted.
LET_GO_EVERY = 1.0


class Chores:
    """The background work of one node's worker."""

    def __init__(self, store: CacheStore, answered: Callable[[], int]) -> None:
        self.store = store
        self.heap_trim = HeapTrim(HEAP_TRIM_INTERVAL, answered)
        self.filter_keeper = FilterKeeper(store)
        self.scrub: BackgroundScrub | None = None
        self._let_go: asyncio.Task[None] | None = None

    def start(self, scrub_interval: float, scrub_rate: int, objects: ObjectPass) -> None:
        """Begin (needs the running loop); scrub passes only with an interval."""
        self.heap_trim.start()
        self.filter_keeper.start()
        self._let_go = asyncio.get_running_loop().create_task(self._let_go_loop())
        if scrub_interval > 0:
            self.scrub = BackgroundScrub(self.store, scrub_interval, scrub_rate, objects)
            self.scrub.start()

    async def stop(self) -> None:
        """Stop them all, mid-pass if need be."""
        self.heap_trim.stop()
        await self.filter_keeper.stop()
        if self._let_go is not None:
            self._let_go.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._let_go
        if self.scrub is not None:
            await self.scrub.stop()

    async def _let_go_loop(self) -> None:
        while True:
            await asyncio.sleep(LET_GO_EVERY)
            self.store.let_go_if_evicted()
