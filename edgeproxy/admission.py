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

Requests for what another request of this worker leads (the same target and Range, its
answer not begun) wait behind it, outside the turns' shares, and start together once its
answer begins or its task ends: they would join its fetch anyway, and their first steps no
longer run ahead of the leaders' (a stampede's last followers waited ~45 turns of the loop
for a share, 10-14x their leader's first byte). A request for what another worker process
is answering (`edgeproxy.leads`) starts at once, waiting or new, and the requests behind it
once its own answer begins: they follow that worker's fetch. Only hints for the order: each
request still goes through every step of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

from .leads import NAME, SharedLeads

__all__ = ["LEAD_MAX", "PER_TURN", "SCAN_MAX", "Admission", "admission_for", "lead_key"]

# New request tasks started per loop turn. At a few hundred microseconds of first step each,
# two keep a turn's new work under a millisecond. Measured on the stampede (two workers, side
# by side with nginx, 4 runs each, twice): the leaders' median first byte 54-60 ms with two,
# 73-96 ms with no bound; the followers start later, the Zipf mix was unchanged within noise.
PER_TURN = 2

# The longest a request waits behind the one it follows, whose answer may be stuck: then it
# starts anyway (and joins that request's fetch, as it would have; a safety net, not a
# schedule: leaders' answers begin well within it).
LEAD_MAX = 1.0

# Waiting requests looked up in the table of other workers' leads per turn, first come first.
SCAN_MAX = 32

Waiting = tuple[Callable[[], None], Hashable, object]  # how it starts, its lead key, owner

_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Admission] = \
    weakref.WeakKeyDictionary()


class _Lead:
    """The request leading a lead key, and those waiting behind it."""

    __slots__ = ("behind", "owner", "timer")

    def __init__(self, owner: object) -> None:
        self.owner = owner
        self.behind: list[Callable[[], None]] = []
        self.timer: asyncio.TimerHandle | None = None  # armed when the first one waits


class Admission:
    """Starts request tasks on one loop, at most ``per_turn`` per loop turn, in order; those
    following another request (`lead_key`) once its answer begins; those for what another
    worker is answering (``shared``: `edgeproxy.leads`) at once."""

    __slots__ = ("armed", "lead_max", "leading", "loop", "per_turn", "shared", "started",
                 "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, per_turn: int = PER_TURN,
                 lead_max: float = LEAD_MAX, shared: SharedLeads | None = None) -> None:
        self.loop = loop
        self.per_turn = per_turn
        self.lead_max = lead_max
        self.shared = shared  # the leads of the node's other workers, where there are any
        self.started = 0  # starts in the current turn
        self.waiting: deque[Waiting] = deque()
        self.armed = False  # a `_turn` is scheduled
        self.leading: dict[Hashable, _Lead] = {}  # by lead key, while its answer has not begun

    def start(self, begin: Callable[[], None], key: Hashable = None,
              owner: object = None) -> None:
        """Run ``begin`` (which starts a request's task) now, or in a later turn if this
        turn has started its share or earlier requests still wait. With a ``key``
        (`lead_key`): behind the request of ``key`` whose answer has not begun, if any (its
        ``owner`` then calls `led`); else that request is ``owner``'s, and starts now if
        another worker is answering ``key``."""
        if key is not None:
            lead = self.leading.get(key)
            if lead is not None:
                lead.behind.append(begin)
                if lead.timer is None:
                    lead.timer = self.loop.call_later(self.lead_max, self.led, key, lead.owner)
                return
            self.leading[key] = _Lead(owner)
            if self.shared is not None and self.shared.led_elsewhere(key, self.lead_max):
                begin()  # it follows another worker's fetch: now (those behind it, once its
                return  # answer begins)
        if self.started < self.per_turn and not self.waiting:
            self.started += 1
            begin()
        else:
            self.waiting.append((begin, key, owner))
        if not self.armed:
            self.armed = True
            self.loop.call_soon(self._turn)

    def _turn(self) -> None:
        """A new loop turn: start the waiting requests another worker's fetch will answer,
        then the next ones in order, up to the share."""
        self.armed = False
        self.started = 0
        waiting = self.waiting
        if waiting and self.shared is not None:
            self._start_followers()
        while waiting and self.started < self.per_turn:
            self.started += 1
            waiting.popleft()[0]()
        if self.started:  # the next turn starts its count afresh (and the waiting ones)
            self.armed = True
            self.loop.call_soon(self._turn)

    def _start_followers(self) -> None:
        """Start the waiting requests (of the first `SCAN_MAX`) whose lead key another worker
        began answering meanwhile: they follow its fetch (those behind each, once its answer
        begins)."""
        assert self.shared is not None
        found = [entry for entry in itertools.islice(self.waiting, SCAN_MAX)
                 if entry[1] is not None and self.shared.led_elsewhere(entry[1], self.lead_max)]
        if not found:
            return
        for entry in found:
            self.waiting.remove(entry)
        for begin, _key, _owner in found:
            begin()

    def led(self, key: Hashable, owner: object) -> None:
        """``owner``'s answer for ``key`` began, or its task ended: the requests behind it
        start now, together."""
        lead = self.leading.get(key)
        if lead is None or lead.owner is not owner:
            return
        del self.leading[key]
        if self.shared is not None:
            self.shared.mark(key)  # the other workers' requests for it may follow it now
        if lead.timer is not None:
            lead.timer.cancel()
        for begin in lead.behind:
            begin()


def lead_key(scope: Mapping[str, Any]) -> Hashable:
    """What makes requests followers of one leader (an ASGI HTTP scope's): GET or HEAD of the
    same target with the same Range; None for other methods, and for requests with
    credentials (they never share another's fetch, RFC 9111 §3.5, so never wait for one)."""
    if scope["method"] not in ("GET", "HEAD"):
        return None
    wanted = None
    for name, value in scope["headers"]:
        if name == b"range":
            wanted = value
        elif name == b"authorization":
            return None
    return (scope["raw_path"], scope["query_string"], wanted)


def admission_for(loop: asyncio.AbstractEventLoop, directory: Path | None = None) -> Admission:
    """The admission of ``loop`` (one per worker's loop, made on first use), with the table
    of the leads of the node whose files are in ``directory``, if one is given."""
    admission = _BY_LOOP.get(loop)
    if admission is None:
        shared = None
        if directory is not None:
            with contextlib.suppress(OSError):  # (a full volume: starts in order, as before)
                shared = SharedLeads(directory / NAME)
        admission = _BY_LOOP[loop] = Admission(loop, shared=shared)
    return admission
