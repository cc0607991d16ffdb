"""Waiting with a deadline, in as few turns of the event loop as the wait allows.

``asyncio.wait_for(asyncio.shield(f), t)`` costs three turns of the loop between ``f``'s
result and the waiter running again (shield's outer future, wait_for's waiter, the task), and
``wait_for`` on a coroutine starts a task of its own. Under a burst each turn runs every other
ready request once, so a stampede's leader paid for every hop on its way to the upstream and
back (`benchmarks/README.md`, stampede). These waits take one turn: a future many requests
share is a `SharedFuture`, which wakes each one's own waiter as its result is set (a done
callback would run a turn later, and the waiter a turn after that).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout: float) -> T:
    """``await awaitable`` in this task, or `TimeoutError` after ``timeout`` seconds (the
    awaitable is then cancelled: only for what no one else waits on)."""
    async with asyncio.timeout(timeout):
        return await awaitable


class SharedFuture(asyncio.Future[T]):
    """A future that many requests wait on with deadlines of their own (`shared`).

    Settling it settles every waiter's future at once, in the same turn: under a burst each
    turn of the loop runs every other ready request once, so the turn a done callback
    would add is what a stampede's leader waits longest for.
    """

    def __init__(self) -> None:
        super().__init__(loop=asyncio.get_running_loop())
        self.waiters: set[asyncio.Future[None]] = set()

    def set_result(self, result: T, /) -> None:
        """Settle it, and wake every waiter now."""
        super().set_result(result)
        self._wake()

    def set_exception(self, exception: type | BaseException, /) -> None:
        """Fail it, and wake every waiter now."""
        super().set_exception(exception)
        self._wake()

    def cancel(self, msg: object = None) -> bool:
        """Cancel it, and wake every waiter now."""
        cancelled = super().cancel(msg)
        self._wake()
        return cancelled

    def _wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()


async def shared(future: asyncio.Future[T], timeout: float) -> T:
    """The result of a ``future`` other requests wait on too, or `TimeoutError` after
    ``timeout`` seconds; a timeout (or this task's cancellation) leaves ``future`` alone.
    One turn of the loop after a `SharedFuture` settles; two after another future does."""
    if future.done():
        return future.result()
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    if isinstance(future, SharedFuture):
        waiters: set[asyncio.Future[None]] = future.waiters
        waiters.add(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        finally:
            waiters.discard(waiter)
        result: T = future.result()
        return result

    def wake(_done: asyncio.Future[T]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    future.add_done_callback(wake)
    try:
        async with asyncio.timeout(timeout):
            await waiter
    finally:
        future.remove_done_callback(wake)
    return future.result()
