"""Waiting with a deadline, in as few turns of the event loop as the wait allows.

``asyncio.wait_for(asyncio.shield(f), t)`` costs three turns of the loop between ``f``'s
result and the waiter running again (shield's outer future, wait_for's waiter, the task), and
``wait_for`` on a coroutine starts a task of its own. Under a burst each turn runs every other
ready request once, so a stampede's leader paid for every hop on its way to the upstream and
back (`benchmarks/README.md`, stampede). These waits take one turn: a `Broadcast` wakes the
requests waiting on it as its result is set, and any other shared future in two.

Their deadlines are one timer each. ``asyncio.timeout`` costs a `Timeout` object, a lookup of
the task, a timer made and then moved (``reschedule``) and the bookkeeping of the task's
cancellations on the way out: 95 us per miss of a tier under cProfile, for the ~3 waits of
each miss (and one per chunk a fill reads). A wait on a future needs none of it: the timer
ends the wait itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout: float) -> T:
    """``await awaitable`` in this task, or `TimeoutError` after ``timeout`` seconds (the
    awaitable is then cancelled: only for what no one else waits on)."""
    if not isinstance(awaitable, asyncio.Future):
        async with asyncio.timeout(timeout):  # a coroutine: its task step is cancelled
            return await awaitable
    future = cast("asyncio.Future[T]", awaitable)
    if future.done():
        return future.result()
    deadline = _Deadline()
    timer = future.get_loop().call_later(timeout, deadline.expire, future)
    try:
        return await future
    except asyncio.CancelledError:
        task = asyncio.current_task()
        # the timer's cancellation, unless the task was asked to stop too (that one wins)
        if deadline.expired and (task is None or not task.cancelling()):
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()


class _Deadline:
    """Whether a `within` timer fired (and cancelled the future waited on)."""

    __slots__ = ("expired",)

    def __init__(self) -> None:
        self.expired = False

    def expire(self, future: asyncio.Future[Any]) -> None:
        if not future.done():
            self.expired = True
            future.cancel()


def _time_out(waiter: asyncio.Future[None], future: asyncio.Future[Any]) -> None:
    # a result set in time wins, though its wake-up may still be on its way to the waiter
    if not waiter.done() and not future.done():
        waiter.set_exception(TimeoutError())


class Broadcast(asyncio.Future[T]):
    """A future many requests wait on (`shared`), each through a future of its own.

    Its result wakes every waiter in the same call: a done callback would run one turn of
    the loop later, and only then wake the waiter, whose task runs a turn after that. In a
    stampede a turn lasts as long as every fill's and every answer's share of it (10-40 ms
    measured; 25-150 ms in a worker sending to a hundred readers), so the callback cost the
    waiters a turn's worth of their first byte.
    """

    def __init__(self, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(loop=loop)
        self._waiters: dict[asyncio.Future[None], None] = {}

    def join(self, waiter: asyncio.Future[None]) -> None:
        """Wake ``waiter`` when this future is done."""
        self._waiters[waiter] = None

    def leave(self, waiter: asyncio.Future[None]) -> None:
        """Stop waking ``waiter`` (its request gave up)."""
        self._waiters.pop(waiter, None)

    def set_result(self, result: T) -> None:
        super().set_result(result)
        self._wake()

    def set_exception(self, exception: Any) -> None:
        super().set_exception(exception)
        self._wake()

    def cancel(self, msg: Any = None) -> bool:
        cancelled = super().cancel(msg)
        if cancelled:
            self._wake()
        return cancelled

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class Signal:
    """Something many tasks wait to happen again (a fill's next bytes, a flight's next slice):
    `fire` wakes every task waiting then; a later `wait` waits for the next `fire`.

    A fill fires once per chunk it lands, mostly with no one waiting: the future the waiters
    share is made only when one comes (an ``asyncio.Event`` replaced at each firing cost a new
    event per chunk, and its waits a deadline of ``asyncio.timeout`` each)."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next: Broadcast[None] | None = None

    def fire(self) -> None:
        """Wake the tasks waiting now."""
        next_, self._next = self._next, None
        if next_ is not None and not next_.done():
            next_.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Until the next `fire`; `TimeoutError` after ``timeout`` seconds (None: no limit)."""
        if self._next is None:
            self._next = broadcast()
        await shared(self._next, timeout)


def broadcast() -> Broadcast[Any]:
    """A new `Broadcast` of the running loop."""
    return Broadcast(loop=asyncio.get_running_loop())


async def shared(future: asyncio.Future[T], timeout: float | None) -> T:
    """The result of a ``future`` other requests wait on too, or `TimeoutError` after
    ``timeout`` seconds (None: no limit; whoever sets ``future`` has one); a timeout (or this
    task's cancellation) leaves ``future`` alone."""
    if future.done():
        return future.result()
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake(_done: asyncio.Future[T]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    broadcast = future if isinstance(future, Broadcast) else None
    if broadcast is not None:
        broadcast.join(waiter)
    else:
        future.add_done_callback(wake)
    # the waiter is this request's own: the timer ends the wait by failing it
    timer = None if timeout is None else \
        waiter.get_loop().call_later(timeout, _time_out, waiter, future)
    try:
        await waiter
    finally:
        if timer is not None:
            timer.cancel()
        if broadcast is not None:
            broadcast.leave(waiter)
        else:
            future.remove_done_callback(wake)
    return future.result()
