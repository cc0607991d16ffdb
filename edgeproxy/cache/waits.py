"""Waiting with a deadline, in as few turns of the event loop as the wait allows.

``asyncio.wait_for(asyncio.shield(f), t)`` costs three turns of the loop between ``f``'s
result and the waiter running again (shield's outer future, wait_for's waiter, the task), and
``wait_for`` on a coroutine starts a task of its own. Under a burst each turn runs every other
ready request once, so a stampede's leader paid for every hop on its way to the upstream and
back (`benchmarks/README.md`, stampede). These waits take one turn, or two for a future that
other requests share.
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


async def shared(future: asyncio.Future[T], timeout: float) -> T:
    """The result of a ``future`` other requests wait on too, or `TimeoutError` after
    ``timeout`` seconds; a timeout (or this task's cancellation) leaves ``future`` alone."""
    if future.done():
        return future.result()
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

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
