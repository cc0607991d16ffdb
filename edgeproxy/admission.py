"""Admission of new requests to a worker's event loop: a few per loop turn, the rest in order.

Each request the app answers is a task whose first step (routing, the cache lookup, joining or
leading a flight, the head) costs a few hundred microseconds. When many requests arrive at
once, their first steps were all queued ahead of everything else the loop had to do, and ran
back to back: traced under a stampede (200 clients on 20 cold objects, one worker), the
flights' first bytes landed 54 ms in, but the leaders' wake-ups waited behind ~150 queued
first steps and their first body bytes left 100 ms later, at 154 ms. An answer already
under way now waits for at most one turn's worth of new requests (`PER_TURN`) between its
steps, as in an event-driven server where reading a new request is one event among others.

Requests wait in arrival order, and only when a turn has started its share already: under
ordinary load they start at once, as before. Hits answered by the fast lane never come here.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable

__all__ = ["PER_TURN", "Admission", "admission_for"]

# New request tasks started per loop turn. At a few hundred microseconds of first step each,
# two keep a turn's new work under a millisecond. Measured on the stampede (two workers, side
# by side with nginx, 4 runs each, twice): the leaders' median first byte 54-60 ms with two,
# 73-96 ms with no bound; the followers start later, the Zipf mix was unchanged within noise.
PER_TURN = 2

_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Admission] = \
    weakref.WeakKeyDictionary()


class Admission:
    """Starts request tasks on one loop, at most ``per_turn`` per loop turn, in order."""

    __slots__ = ("armed", "loop", "per_turn", "started", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, per_turn: int = PER_TURN) -> None:
        self.loop = loop
        self.per_turn = per_turn
        self.started = 0  # starts in the current turn
        self.waiting: deque[Callable[[], None]] = deque()
        self.armed = False  # a `_turn` is scheduled

    def start(self, begin: Callable[[], None]) -> None:
        """Run ``begin`` (which starts a request's task) now, or in a later turn if this
        turn has started its share or earlier requests still wait."""
        if self.started < self.per_turn and not self.waiting:
            self.started += 1
            begin()
        else:
            self.waiting.append(begin)
        if not self.armed:
            self.armed = True
            self.loop.call_soon(self._turn)

    def _turn(self) -> None:
        """A new loop turn: start the next waiting requests, up to the share."""
        self.armed = False
        self.started = 0
        waiting = self.waiting
        while waiting and self.started < self.per_turn:
            self.started += 1
            waiting.popleft()()
        if self.started:  # the next turn starts its count afresh (and the waiting ones)
            self.armed = True
            self.loop.call_soon(self._turn)


def admission_for(loop: asyncio.AbstractEventLoop) -> Admission:
    """The admission of ``loop`` (one per worker's loop, made on first use)."""
    admission = _BY_LOOP.get(loop)
    if admission is None:
        admission = _BY_LOOP[loop] = Admission(loop)
    return admission
