"""`HeadDeadline`: one lazy timer per connection, firing only at the latest armed time."""

from __future__ import annotations

import asyncio

from edgeproxy.headtimeout import HeadDeadline


def _run(body: object) -> None:
    asyncio.run(body)  # type: ignore[arg-type]


def test_rearming_moves_the_deadline_without_a_new_timer() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        deadline = HeadDeadline(loop, 0.2, lambda: fired.append(loop.time()))
        start = loop.time()
        deadline.arm()
        first = deadline.timer
        await asyncio.sleep(0.1)
        deadline.cancel()  # a head arrived
        deadline.arm()  # its answer ended: the next head is due 0.2 s from now
        assert deadline.timer is first
        rearmed = loop.time()
        await asyncio.sleep(0.15)
        assert fired == []  # the first timer woke at start + 0.2 and slept on
        await asyncio.sleep(0.2)
        assert len(fired) == 1
        assert fired[0] >= rearmed + 0.2 > start + 0.2
        await asyncio.sleep(0.3)
        assert len(fired) == 1  # once

    _run(body())


def test_a_cancelled_deadline_never_fires_and_close_drops_the_timer() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        fired: list[str] = []
        deadline = HeadDeadline(loop, 0.05, lambda: fired.append("x"))
        deadline.arm()
        deadline.cancel()
        await asyncio.sleep(0.15)
        assert fired == [] and deadline.timer is None
        deadline.arm()
        deadline.close()
        assert deadline.timer is None
        await asyncio.sleep(0.15)
        assert fired == []
        deadline.arm()  # armed again after a firing-less wake: a timer of its own
        await asyncio.sleep(0.15)
        assert fired == ["x"]

    _run(body())
