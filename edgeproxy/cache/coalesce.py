"""Collapsed forwarding: one upstream request per key (facts) and per slice (bytes).

groupcache's ``Group.Do`` and Varnish's busy objects, in one place. ``join(key, index, ...)``
answers where the bytes of slice ``index`` come from: the store, a fill in this process, a
fill in another worker process, or a new flight that this call leads. ``flight_for(key)``
does the same for an object's facts (a miss or a revalidation).

Across worker processes a fill is claimed with a record lock (`Claims`); a large fill writes
into a file whose name derives from the key and slice, which other workers open and follow
as it grows. The kernel drops the locks of a dead process, so a crashed leader never blocks
anyone, and no index write is needed to announce a fill: claiming costs one system call.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import FillAborted, FillLost, UpstreamError
from .fills import SliceFill
from .flight import Flight
from .foreign import ForeignFill, poll
from .meta import ObjectMeta
from .sources import FillSource, ForeignSource, Source, StoredSource
from .store import INLINE_MAX, CacheStore
from .waits import broadcast, shared, within

# A slice can be claimed by another worker between our look and our claim; look again this
# many times before giving up.
JOIN_ATTEMPTS = 3
STRIPES = 1 << 22  # enough that two live fills rarely share a stripe
_LOOK_AGAIN = object()  # what waiters on another's look get when it left before the end
KEPT_FOR = 30.0  # seconds at most a flight's unclaimed slices outlive it (`keep`)


class Claims:
    """Cross-process claims on slice fills: POSIX record locks on one byte of a shared file.

    A stripe is chosen by hashing the key and slice. Record locks belong to the process, so
    this process counts its own stripes (its registry knows which key holds which). The kernel
    drops a dead process's locks. A large fill writes into a file whose name carries its
    stripe, so a restarted worker can tell a dead fill's leftovers from a live one's.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd = os.open(directory.parent / "claims.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._held: dict[int, int] = {}

    @staticmethod
    @functools.lru_cache(maxsize=4096)  # a miss asks for its slice's stripe three times
    def _stripe_and_name(key: str, index: int) -> tuple[int, str]:
        digest = hashlib.blake2b(f"{index}\0{key}".encode(), digest_size=16).digest()
        stripe = int.from_bytes(digest[:8], "big") % STRIPES
        return stripe, f"{stripe}-{digest[8:].hex()}"

    def path(self, key: str, index: int) -> Path:
        """The file a large fill of this slice writes into, whichever worker runs it."""
        return self.directory / self._stripe_and_name(key, index)[1]

    def take(self, key: str, index: int) -> bool:
        """Claim the slice; False if another worker process holds its stripe.

        Rarely that is another key on the same stripe: the caller then waits for that fill,
        which costs time but never a duplicate fetch or a wrong body.
        """
        stripe = self._stripe_and_name(key, index)[0]
        if stripe not in self._held:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, stripe)
            except OSError:
                return False
        self._held[stripe] = self._held.get(stripe, 0) + 1
        return True

    def drop(self, key: str, index: int) -> None:
        """Release a claim this process holds."""
        stripe = self._stripe_and_name(key, index)[0]
        count = self._held.get(stripe, 0)
        if count > 1:
            self._held[stripe] = count - 1
        elif count == 1:
            del self._held[stripe]
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, stripe)

    def stripe_free(self, stripe: int) -> bool:
        """Whether no process at all holds ``stripe``."""
        if stripe in self._held:
            return False
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, stripe)
        except OSError:
            return False
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, stripe)
        return True

    def held_elsewhere(self, key: str, index: int) -> bool:
        """Whether another worker process is filling this slice right now."""
        stripe = self._stripe_and_name(key, index)[0]
        return stripe not in self._held and not self.stripe_free(stripe)

    def sweep(self) -> None:
        """Remove fill files no live process owns (left by a crash: never served)."""
        for leftover in self.directory.iterdir():
            stripe, _, rest = leftover.name.partition("-")
            if rest and stripe.isdigit() and self.stripe_free(int(stripe)):
                leftover.unlink(missing_ok=True)

    def close(self) -> None:
        """Release every claim (shutdown)."""
        os.close(self._fd)


class Coalescer:
    """The registry of flights and fills of one node process."""

    def __init__(self, store: CacheStore, wait_timeout: float) -> None:
        self.store = store
        self.claims = Claims(store.temp_dir)
        self.claims.sweep()
        self.wait_timeout = wait_timeout
        self.flights: dict[str, Flight] = {}  # key → the flight whose facts are awaited
        self.fills: dict[tuple[str, int], SliceFill] = {}
        # slices other workers fill, followed here: key, index, version → one follower
        self.foreign: dict[tuple[str, int, str], ForeignFill] = {}
        self._facts_waits: dict[tuple[str, int, float], asyncio.Future[object]] = {}
        self._kept = 0  # unclaimed fills made (`keep`): their files' names

    # --- the filler's side ---

    def claim(self, flight: Flight, index: int) -> SliceFill | None:
        """Register ``flight`` as the filler of a slice; None if someone fills it already."""
        if (flight.key, index) in self.fills or not self.claims.take(flight.key, index):
            return None
        fill = SliceFill(flight.key, index, self.claims.path(flight.key, index), flight,
                         INLINE_MAX)
        fill.on_fault = self.store.fault
        fill.make_room = self.store.room.make_room
        self.fills[(flight.key, index)] = fill
        flight.fills[index] = fill
        return fill

    def keep(self, flight: Flight, index: int) -> SliceFill:
        """A fill of ``flight`` for a slice it could not claim: another worker fills it for
        an answer of its own, which no validator ties to this one. Its bytes pass anyway;
        they go to this flight's own readers (`joins`), never to the store or another
        request. Kept readable (the file is unlinked once complete) until the flight has
        ended and no request of it is left (`Flight.on_idle`), `KEPT_FOR` seconds at most:
        its readers may come to the slice after its last byte."""
        self._kept += 1
        path = self.claims.path(flight.key, index)
        fill = SliceFill(flight.key, index,
                         path.with_name(f"{path.name}-k{os.getpid()}-{self._kept}"),
                         flight, INLINE_MAX)
        fill.on_fault = self.store.fault
        fill.make_room = self.store.room.make_room
        fill.discard = fill.private = True
        flight.fills[index] = fill
        self.hold(flight, fill)
        return fill

    @staticmethod
    def hold(flight: Flight, fill: SliceFill) -> None:
        """Keep ``fill``'s bytes readable by ``flight``'s own requests (`joins`) until the
        flight has ended and no request of it is left (`Flight.on_idle`), `KEPT_FOR` seconds
        at most, whatever becomes of the slice in the store: a kept fill is stored nowhere,
        and a stored slice of an answer without a validator is replaced by any other
        answer's (then nothing could fetch its bytes again)."""
        fill.attach()  # the flight's own hold: let go once no request of it is left
        held = [True]

        def let_go() -> None:
            if held[0]:  # (once: whichever of the two comes first)
                held[0] = False
                fill.detach()

        loop = asyncio.get_running_loop()
        flight.on_idle.append(let_go)
        # Unlinked once complete, its blocks stay allocated while held; held for every flight
        # of a changing object, that was several times the cache's size under load.
        # `KEPT_FOR` bounds it when a request's end goes uncounted.

        def ended(_: object) -> None:
            flight.idle_check()
            loop.call_later(KEPT_FOR, let_go)

        flight.ended.add_done_callback(ended)

    def release(self, fill: SliceFill) -> None:
        """Unregister a fill (committed, failed or discarded) and drop its claim."""
        if self.fills.get((fill.key, fill.index)) is fill:
            del self.fills[(fill.key, fill.index)]
            key, index = fill.key, fill.index
            flight = fill.flight
            if index == 0 and flight.store_meta == "end" and not flight.ended.done():
                # Two workers fetched a growing body side by side once its slice 0 was in:
                # their answers lost the slices the other one claimed, and were cut there.
                flight.first_held = True  # dropped as the flight ends (`drop_first`)
            else:
                # Other workers read the index once the claim is gone: after the commit.
                self.store.after_commit(lambda: self.claims.drop(key, index))
        fill.release()

    def drop_first(self, flight: Flight) -> None:
        """``flight`` ended: drop the claim of slice 0 it kept (`release`), once what it
        wrote is committed."""
        if flight.first_held:
            flight.first_held = False
            key = flight.key
            self.store.after_commit(lambda: self.claims.drop(key, 0))

    def forget(self, predicate: Callable[[str], bool]) -> None:
        """Purge: fills in flight for matching keys finish for their followers, unstored."""
        for (key, _index), fill in self.fills.items():
            if predicate(key):
                fill.discard = True
        for key in [k for k in self.flights if predicate(k)]:
            del self.flights[key]

    # --- the reader's side ---

    def filling(self, key: str, version: str) -> bool:
        """Whether a flight, here or in another worker, is filling the first slice of
        ``version`` of ``key`` now (a flight that stated facts and died states nothing).
        Here, only one that hashes the whole body counts: a range refill of the slice
        vouches for nothing, and an answer that waited for its vouch was cut short."""
        fill = self.fills.get((key, 0))
        if fill is not None:
            flight = fill.flight
            return fill.error is None and flight.version == version and flight.whole \
                and flight.hasher is not None
        return self.claims.held_elsewhere(key, 0)

    def flight_for(self, key: str) -> Flight | None:
        """The flight in progress whose facts a miss on ``key`` can wait for."""
        flight = self.flights.get(key)
        if flight is not None and flight.ended.done():
            del self.flights[key]
            return None
        return flight

    def cold(self, key: str) -> bool:
        """Whether a flight here fetches ``key``, under which its leader found nothing stored
        (no variant either), with no answer yet: then there is nothing to look up, and a
        request for it (a stampede's follower) joins the flight without asking the index."""
        flight = self.flights.get(key)
        return flight is not None and not flight.headers.done() \
            and getattr(flight.context, "absent", False)

    async def join(self, key: str, index: int, version: str | None,
                   lead: Callable[[int], Flight | None]) -> Source:
        """Where slice ``index`` of ``key`` (at ``version``) is read from.

        Readers on a fill are taken synchronously, before any await, so a fill cannot finish
        and leave between our look and our read. ``lead(index)`` starts a flight for it.
        """
        for _attempt in range(JOIN_ATTEMPTS):
            fill = self.fills.get((key, index))
            if fill is not None and fill.error is None and \
                    (version is None or fill.flight.version == version):
                return FillSource(fill)
            if version is not None:
                body = self.store.get_slice(key, version, index)
                if body is not None:
                    return StoredSource(body)
                foreign = self.foreign.get((key, index, version))
                if foreign is not None and foreign.error is None:
                    return ForeignSource(foreign)
                if self.claims.held_elsewhere(key, index):
                    return ForeignSource(self._follow(key, index, version))
            if fill is not None and fill.error is None and not fill.flight.headers.done():
                # a fill whose version is known once its answer's headers are: wait for them,
                # then look again (a flight of our own would find the slice claimed); if it
                # failed meanwhile, so does this answer, as its followers' do
                with contextlib.suppress(UpstreamError, TimeoutError):
                    await shared(fill.flight.headers, self.wait_timeout)
                if fill.error is not None and not _answered(fill.flight):
                    raise FillAborted(f"fill failed: {fill.error}")
                continue  # (answered without this slice, a 304 of another variant's copy:
                #            the slice is stored, or ours to fetch)
            if fill is not None and fill.error is None and not fill.done:
                # the slice of another version (the object changed) is still being filled:
                # its claim is free once that fill ends, and a flight of our own waits till then
                with contextlib.suppress(TimeoutError):
                    await within(fill.settled(), self.wait_timeout)
                continue
            flight = lead(index)
            if flight is not None and index in flight.fills:
                # its answer is not in yet: the reader checks it is of ``version`` on delivery
                return FillSource(flight.fills[index], version)
            if flight is not None:
                await flight.headers  # the flight answered without this slice (304, direct)
        raise FillLost(f"slice {index} of {key} could not be joined")

    def _follow(self, key: str, index: int, version: str) -> ForeignFill:
        """The one `ForeignFill` of this process for a slice another worker fills."""
        def forget(fill: ForeignFill) -> None:
            if self.foreign.get((key, index, version)) is fill:
                del self.foreign[(key, index, version)]

        fill = ForeignFill(self.claims.path(key, index),
                           is_running=lambda: self.claims.held_elsewhere(key, index),
                           stored=lambda: self.store.get_slice(key, version, index),
                           on_last=forget, version=version)
        self.foreign[(key, index, version)] = fill
        return fill

    async def foreign_facts(self, key: str, index: int, since: float) -> ObjectMeta | None:
        """Wait for the facts another worker's fill of ``key`` stores (newer than ``since``).

        None when that worker stopped without storing any (uncacheable, failed): then the
        caller fetches itself.
        """
        while (waiting := self._facts_waits.get((key, index, since))) is not None:
            # one poll per object and process, however many wait (and wake as it ends)
            result = await shared(waiting, None)
            if result is not _LOOK_AGAIN:
                return result  # type: ignore[return-value]
        waiting = broadcast()
        self._facts_waits[(key, index, since)] = waiting
        found: list[ObjectMeta] = []

        def ready() -> bool:
            meta = self.store.get_meta(key)
            if meta is not None and meta.freshness.response_time > since:
                found.append(meta)
                return True
            return not self.claims.held_elsewhere(key, index)

        try:
            await poll(ready, self.wait_timeout, "the worker filling this object")
        except BaseException as exc:
            if isinstance(exc, Exception):
                waiting.set_exception(exc)
            else:
                waiting.set_result(_LOOK_AGAIN)  # this waiter left: another one looks
            raise
        else:
            waiting.set_result(found[0] if found else None)
        finally:
            del self._facts_waits[(key, index, since)]
            if waiting.done():
                waiting.exception()  # retrieved: nobody else may be waiting
        return found[0] if found else None

    def close(self) -> None:
        """Drop every claim (shutdown)."""
        for fill in list(self.fills.values()):
            with contextlib.suppress(OSError):
                fill.release()
        self.fills.clear()
        self.claims.close()


def _answered(flight: Flight) -> bool:
    """Whether ``flight``'s answer came in: its fills then ended only because the answer
    brought no body to store (a 304, an unstored answer), not because the upstream failed."""
    headers = flight.headers
    return headers.done() and not headers.cancelled() and headers.exception() is None
