"""The transaction (``tx``): one client request's way through the steps of `steps`, and what
the steps learn on the way (the object, the flight, the verdict)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .flight import Flight
from .meta import ObjectMeta
from .req import Req
from .sources import DirectSource, Source
from .types import RawHeaders, Receive, Scope, Send
from .verdict import Verdict

__all__ = ["Tx"]


@dataclass(slots=True)
class Tx:
    """One client request's way through the steps."""

    req: Req
    scope: Scope
    receive: Receive
    send: Send
    meta: ObjectMeta | None = None  # the object being answered with
    stale: ObjectMeta | None = None  # a stored copy that needs revalidation
    # a fresh copy missing slices that cannot be fetched alone (no validator): replaced
    known: ObjectMeta | None = None
    absent: bool = False  # the lookup found nothing stored under the key, no variant either
    _flight: Flight | None = field(default=None, init=False, repr=False)
    led: bool = False
    ready: dict[int, Source] = field(default_factory=dict)  # joined before the headers
    direct: DirectSource | None = None  # an unstored body handed to this request
    verdict: Verdict = Verdict.MISS
    upstream_cache: str | None = None
    responded: bool = False
    sent: int = 0
    upstream_time: float = 0.0
    tries: int = 0  # lookups repeated after losing a race for a claim
    restarted: bool = False  # looked up again after a fill broke off before the head
    interims: tuple[tuple[int, RawHeaders], ...] = ()  # 1xx answers to pass on first
    whole: bool = False  # fetch the object whole: its length is learnt from that answer

    @property
    def flight(self) -> Flight | None:
        """The flight this request leads or follows (counted among its `followers`)."""
        return self._flight

    @flight.setter
    def flight(self, flight: Flight | None) -> None:
        # Counted so that what a flight keeps for its own requests alone (`Coalescer.keep`)
        # goes once the flight has ended and no request of it is left, not a while after.
        if flight is self._flight:
            return
        if flight is not None:
            flight.followers += 1
        if self._flight is not None:
            self._flight.unfollow()
        self._flight = flight

    def take_direct(self, flight: Flight, body_start: int) -> None:
        """Relay the unstored answer of ``flight``, which this request led, as its own body
        (the flight stops waiting for a taker)."""
        assert flight.direct is not None
        self.direct = DirectSource(flight.direct, body_start)
        if not flight.taken.done():
            flight.taken.set_result(None)
