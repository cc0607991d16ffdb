"""A deadline for each request head, so a slow client cannot hold a connection forever.

uvicorn bounds only the idle time between requests (``timeout_keep_alive``): once one byte of a
head has arrived, or on a connection that never sent one, it waits forever, so a client
trickling its head a byte at a time (slowloris) holds the connection as long as it likes. With
the protocols of edgeproxy (`edgeproxy.protocol` for httptools, `GuardedH11Protocol` for the
pure-Python fallback) each head must arrive whole within ``http_limits.header_timeout`` of the
connection opening or of the previous answer ending; past that the client gets 408 (RFC 9110
§15.5.9) with a JSON body, or a bare close when nothing of a request arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .config import HTTPLimitsConfig
from .errors import HTTPError
from .guard import error_bytes


class DeadlineHooks:
    """For a uvicorn protocol class (listed before it): a new connection arms ``deadline``
    for its first head, a lost one cancels it; a client that half-closes still gets its
    answers (`eof_received`); one that stops taking the bytes of an answer is cut off after
    ``send_timeout`` (`pause_writing`)."""

    deadline: HeadDeadline
    limits: HTTPLimitsConfig
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    _stalled: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A new connection: its first head must arrive within ``header_timeout``."""
        super().connection_made(transport)  # type: ignore[misc]
        self.deadline.arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone: no head to wait for, no bytes to push."""
        self.deadline.close()
        self._unstall()
        super().connection_lost(exc)  # type: ignore[misc]

    def pause_writing(self) -> None:
        """The transport's buffer is full: the client must take some of it within
        ``send_timeout``, or the connection is aborted (a timer only while paused, which a
        client as fast as the server never is)."""
        super().pause_writing()  # type: ignore[misc]
        self._unstall()
        self._stalled = self.loop.call_later(self.limits.send_timeout, self.transport.abort)

    def resume_writing(self) -> None:
        """The client took bytes again."""
        self._unstall()
        super().resume_writing()  # type: ignore[misc]

    def _unstall(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def send_400_response(self, msg: str) -> None:
        """A request that cannot be parsed: 400 with a JSON body saying why, like every other
        refusal (uvicorn's own is plain text), and close."""
        send_refusal(self.transport, HTTPError(
            400, "bad_request", f"the request cannot be parsed as HTTP/1.1: {msg}"))

    def eof_received(self) -> bool | None:
        """The client shut its sending side after its requests (``nc -N``, HTTP/1.0-era
        tools; RFC 9112 §9.6 lets a client close once it has sent its last request). Its
        answers still go out, then the connection closes: uvicorn closed at once, and a miss
        in progress was dropped unanswered. A request whose body is incomplete can never
        be answered, and nothing pending means nothing to wait for: close now."""
        pipeline = getattr(self, "pipeline", None)  # (httptools' queued requests, newest first)
        last = pipeline[0][0] if pipeline else getattr(self, "cycle", None)
        if last is None or last.response_complete or last.more_body:
            return None
        last.keep_alive = False  # this one's answer ends the connection
        return True


# (uvicorn types `eof_received` as returning None; asyncio's protocol may return True)
class GuardedH11Protocol(DeadlineHooks, H11Protocol):  # type: ignore[misc]
    """`H11Protocol` with the head deadline (the pure-Python fallback's head size is bounded by
    ``h11_max_incomplete_event_size`` instead: see `edgeproxy.guard.uvicorn_http_options`)."""

    def __init__(self, *args: Any, limits: HTTPLimitsConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.deadline = HeadDeadline(self.loop, limits.header_timeout, self._head_timed_out)

    def handle_events(self) -> None:
        """Parse what arrived; once a request's head is in, its deadline is off."""
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self.deadline.cancel()

    def on_response_complete(self) -> None:
        """An answer ended: the next head, if any, must arrive within ``header_timeout``
        (armed first: a pipelined request already received cancels it again)."""
        if not self.transport.is_closing():
            self.deadline.arm()
        super().on_response_complete()

    def _head_timed_out(self) -> None:
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return
        received, _closed = self.conn.trailing_data
        if received:
            send_refusal(self.transport, timeout_error(self.limits))
        else:
            self.transport.close()


class HeadDeadline:
    """The time by which a connection's next request head must have arrived, and, between
    requests, the idle time by which its first byte must have (uvicorn's keep-alive timeout).

    Armed at every answer's end and cancelled at every head's, so it is lazy, like the
    idle timers of nginx and Netty: arming and cancelling set a time, and the one timer of
    the connection, when it fires early, sleeps again until that time. A keep-alive request
    then costs no timer of its own (creating and cancelling one was ~2 % of a hit's CPU, and
    uvicorn's keep-alive timer as much again).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float,
                 on_expiry: Callable[[], None],
                 on_idle: Callable[[], bool] | None = None) -> None:  # fmt: skip
        self.loop, self.seconds, self.on_expiry, self.on_idle = loop, seconds, on_expiry, on_idle
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # when `timer` fires
        self.due: float | None = None  # loop time; None: no head is awaited
        self.idle_due: float | None = None  # loop time; None: no idle bound

    def arm(self, idle: float | None = None) -> None:
        """Start the clock again, from now; with ``idle``, ``on_idle`` is asked at that
        many seconds from now whether it closed the connection (nothing of a head came)."""
        now = self.loop.time()
        due = self.due = now + self.seconds
        if idle is not None and idle < self.seconds:
            due = self.idle_due = now + idle
        else:
            self.idle_due = None
        if self.timer is not None and self.timer_at > due:
            self.timer.cancel()  # (only when a shorter bound follows a longer one)
            self.timer = None
        if self.timer is None:
            self.timer, self.timer_at = self.loop.call_at(due, self._fired), due

    def postpone(self, idle: float) -> None:
        """From ``on_idle``: count both bounds from now (the last answer is still going out
        to a client reading it slowly; no timer of its own, `_fired` sleeps on)."""
        now = self.loop.time()
        self.due = now + self.seconds
        self.idle_due = now + idle if idle < self.seconds else None

    def cancel(self) -> None:
        """No head is awaited (one arrived)."""
        self.due = self.idle_due = None

    def close(self) -> None:
        """The connection is gone: drop the timer too."""
        self.due = self.idle_due = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fired(self) -> None:
        self.timer = None
        now = self.loop.time()
        idle_due = self.idle_due
        if idle_due is not None and now >= idle_due:
            self.idle_due = None
            if self.on_idle is not None and self.on_idle():
                self.due = None
                return
        due = self.due
        if due is None:
            return
        if now < due:  # re-armed since: sleep on
            wake = due if self.idle_due is None else min(due, self.idle_due)
            self.timer, self.timer_at = self.loop.call_at(wake, self._fired), wake
            return
        self.due = None
        self.on_expiry()


def timeout_error(limits: HTTPLimitsConfig) -> HTTPError:
    """The 408 of a head that did not arrive within ``header_timeout``."""
    return HTTPError(408, "request_timeout", f"the request head did not arrive within "
                     f"{limits.header_timeout:g} seconds")


def send_refusal(transport: asyncio.Transport, error: HTTPError) -> None:
    """Answer ``error`` as JSON outside any request cycle, and close the connection."""
    body = error_bytes(error)
    transport.write(b"".join([
        b"HTTP/1.1 %d %s\r\n" % (error.status, HTTPStatus(error.status).phrase.encode()),
        b"content-type: application/json\r\ncache-control: no-store\r\n",
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body), body,
    ]))  # fmt: skip
    transport.close()
