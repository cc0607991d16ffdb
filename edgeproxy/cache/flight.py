"""A flight: one upstream request (`Flight`) and what it asks for (`FlightSpec`); the
slices it fills are `fills.SliceFill`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import UpstreamTimeout
from .beresp import BeResp
from .foreign import Proof
from .types import RawHeaders
from .waits import Signal, broadcast

if TYPE_CHECKING:
    from .fills import SliceFill


@dataclass
class FlightSpec:
    """What a flight asks for, and for whom (the leading request's view)."""

    key: str
    target: str
    headers: RawHeaders  # the leader's fill headers (client fields less the cache's own)
    first: int
    last: int | None
    slice_size: int
    validators: RawHeaders = field(default_factory=list)  # If-None-Match / If-Range ...
    whole: bool = False  # ask without Range: the plain GET of an unknown object


@dataclass(eq=False)
class Flight:
    """One upstream request (``bereq``) covering slices ``first..last`` (None: to the end)."""

    key: str
    first: int
    last: int | None
    # a `Broadcast`: the leader and every follower wake in the turn the headers come in
    headers: asyncio.Future[BeResp] = field(default_factory=broadcast)
    fills: dict[int, SliceFill] = field(default_factory=dict)
    context: Any = None  # the leading request's view (stale copy, Vary values...)
    meta: Any = None  # the ObjectMeta to deliver with, once the headers are in
    version: str | None = None  # slices are committed under it; None: not stored
    shareable: bool = True  # False: only the leading request may use this answer
    direct: Any = None  # an UpstreamResponse handed to the leader (answers not stored)
    store_meta: str = "now"  # when the facts are stored: now, with the body, or not at all
    # A body of unknown length (facts stored at its end): the claim of its slice 0 is held
    # until the flight ends, so another worker's request waits for those facts (and reads
    # the stored body) rather than fetch the object again beside it (`Coalescer.release`).
    first_held: bool = False
    digest: str | None = None  # expected SHA-256 (hex) of the whole representation
    content_digest: Any = None  # the answer's Content-Digest and its span (fields.MessageDigest)
    checks: tuple[str, ...] = ()  # SHA-256s (hex) the answer's body must have, all of them
    hasher: Any = None  # running SHA-256 of the answer's body while `checks` are pending
    whole: bool = False  # the body is the whole representation, checked against `digest`
    # Once the whole body matched every check: its readers' proof that their bytes are right,
    # which eviction cannot take (the stored facts' `verified` mark can go with their row
    # before an answer's last byte is out); its slice files carry it (`foreign.vouch_file`).
    proven: Proof | None = None
    length: int | None = None  # learnt at the end for a body without Content-Length
    ended: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    taken: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    _progress: Signal = field(default_factory=Signal)
    # (monotonic) when bytes last landed in any of its fills: a follower waits for the
    # flight's progress, not only its own slice's (`SliceFill.wait_beyond`)
    moved: float = 0.0
    followers: int = 0  # requests leading or following it now (`Tx.flight`)
    # called once it has ended and has no follower left (`Coalescer.keep`)
    on_idle: list[Callable[[], None]] = field(default_factory=list)

    def unfollow(self) -> None:
        """A request no longer leads or follows this flight."""
        self.followers -= 1
        self.idle_check()

    def idle_check(self) -> None:
        """Run the `on_idle` callbacks if the flight has ended and no request follows it."""
        if self.followers <= 0 and self.ended.done():
            callbacks, self.on_idle = self.on_idle, []
            for callback in callbacks:
                callback()

    def grew(self) -> None:
        """A fill was added, or the flight ended: wake those waiting for the next slice."""
        self._progress.fire()

    async def wait_growth(self, timeout: float) -> None:
        """Wait for the next `grew` (a body of unknown length being cut into slices)."""
        if self.ended.done():
            return
        try:
            await self._progress.wait(timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"no progress from upstream for {timeout:.0f}s") from None
