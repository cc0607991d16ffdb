"""Waits with deadlines (`edgeproxy.cache.waits`): results, timeouts, what a timeout leaves
alone, and how many turns of the event loop a waiter takes to run again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from edgeproxy.cache.waits import Broadcast, broadcast, shared, within


async def _turns_until_resumed(wait: Callable[[asyncio.Future[int]], Awaitable[Any]],
                               kind: str = "future") -> int:
    """Resolve a future and count the loop's turns until the waiter on it runs again."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = broadcast() if kind == "broadcast" else loop.create_future()
    turns = 0
    resumed = asyncio.Event()

    def tick() -> None:  # runs once per turn, after what the turn before made ready
        nonlocal turns
        turns += 1
        if not resumed.is_set():
            loop.call_soon(tick)

    async def waiter() -> None:
        assert await wait(future) == 7
        resumed.set()

    task = asyncio.ensure_future(waiter())
    await asyncio.sleep(0.01)  # the waiter is parked on the future
    future.set_result(7)
    loop.call_soon(tick)
    await task
    return turns


@pytest.mark.parametrize(("name", "wait", "kind", "turns_taken"), [
    ("wait_for(shield(f))", lambda f: asyncio.wait_for(asyncio.shield(f), 5), "future", 3),
    ("shared(f)", lambda f: shared(f, 5), "future", 2),
    # a flight's headers: the leader and its followers wait on them (`flight.Flight`)
    ("shared(broadcast)", lambda f: shared(f, 5), "broadcast", 1),
    ("within(f)", lambda f: within(f, 5), "future", 1),
])
def test_turns_to_resume(name: str, wait: Callable[[asyncio.Future[int]], Awaitable[Any]],
                         kind: str, turns_taken: int) -> None:
    """The cost being cut: each turn runs every other ready request once in a burst."""
    turns = asyncio.run(_turns_until_resumed(wait, kind))
    # the old way, for comparison, takes three: shield's future, wait_for's, the task
    assert turns == turns_taken, (name, turns)


def test_shared_gives_the_result_or_the_exception() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()
        done.set_result("now")
        assert await shared(done, 1) == "now"
        failing: asyncio.Future[str] = loop.create_future()
        loop.call_later(0.01, failing.set_exception, ValueError("upstream"))
        with pytest.raises(ValueError, match="upstream"):
            await shared(failing, 1)

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["future", "broadcast"])
def test_shared_timeout_and_cancellation_leave_the_future_to_the_others(kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = broadcast() if kind == "broadcast" else loop.create_future()
        other = asyncio.ensure_future(shared(future, 5))  # another request waiting on it
        with pytest.raises(TimeoutError):
            await shared(future, 0.01)
        leaving = asyncio.ensure_future(shared(future, 5))
        await asyncio.sleep(0.01)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert not future.done()
        if isinstance(future, Broadcast):
            assert len(future._waiters) == 1  # the other request's waiter only
        future.set_result(3)
        assert await other == 3
        if isinstance(future, Broadcast):
            assert future._waiters == {}

    asyncio.run(main())


def test_within_times_out_and_cancels_what_it_awaited() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        with pytest.raises(TimeoutError):
            await within(future, 0.01)
        assert future.cancelled()
        event = asyncio.Event()
        loop.call_later(0.01, event.set)
        assert await within(event.wait(), 1) is True

    asyncio.run(main())


def test_a_cancelled_task_stays_cancelled_when_its_deadline_passes_in_the_same_turn() -> None:
    """The timer of `within` cancels the future it waits on, as the task's own cancellation
    does: a task asked to stop must not see a TimeoutError it could swallow instead."""
    async def main() -> None:
        tasks: list[asyncio.Task[int]] = []

        class StopsItsWaiter(asyncio.Future[int]):
            """A future whose cancellation (by the deadline) also stops the task waiting."""

            def cancel(self, msg: Any = None) -> bool:
                cancelled = super().cancel(msg)
                tasks[0].cancel()  # in the same turn, before the task runs again
                return cancelled

        future = StopsItsWaiter()
        tasks.append(asyncio.ensure_future(within(future, 0.01)))
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
        assert future.cancelled()

    asyncio.run(main())


@pytest.mark.parametrize("wait", ["within", "shared"])
def test_a_wait_that_ends_in_time_leaves_no_deadline_behind(wait: str) -> None:
    """After the result, the deadline neither cancels the future nor fails a later wait."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        loop.call_soon(future.set_result, 5)
        waited = within(future, 0.02) if wait == "within" else shared(future, 0.02)
        assert await waited == 5
        await asyncio.sleep(0.05)  # past the deadline
        assert future.result() == 5
        again: asyncio.Future[int] = loop.create_future()
        loop.call_soon(again.set_result, 6)
        assert await (within(again, 1) if wait == "within" else shared(again, 1)) == 6

    asyncio.run(main())


def test_a_result_in_time_wins_over_a_deadline_that_fires_before_the_waiter_runs() -> None:
    """A shared future's result wakes its waiters by a callback, one turn later; a deadline
    due in that turn must not turn a result that came in time into a timeout."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        waiting = asyncio.ensure_future(shared(future, 0.01))
        await asyncio.sleep(0)  # parked on its waiter, the deadline armed
        loop.call_later(0.005, future.set_result, 8)  # in time
        time.sleep(0.02)  # a late loop: the result and the deadline are due in one turn,
        # and the result's wake-up callback is queued behind the deadline
        assert await waiting == 8

    asyncio.run(main())


def test_a_broadcast_wakes_every_waiter_with_the_result_exception_or_cancellation() -> None:
    """Many requests on one flight's headers: each gets what the flight got."""
    async def main() -> None:
        future: Broadcast[int] = broadcast()
        waiting = [asyncio.ensure_future(shared(future, 5)) for _ in range(3)]
        await asyncio.sleep(0)
        future.set_result(5)
        assert await asyncio.gather(*waiting) == [5, 5, 5]

        failing: Broadcast[int] = broadcast()
        waiter = asyncio.ensure_future(shared(failing, 5))
        await asyncio.sleep(0)
        failing.set_exception(ValueError("upstream"))
        with pytest.raises(ValueError, match="upstream"):
            await waiter

        cancelled: Broadcast[int] = broadcast()
        waiter = asyncio.ensure_future(shared(cancelled, 5))
        await asyncio.sleep(0)
        assert cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())
