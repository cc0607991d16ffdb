"""Freed heap pages go back to the system between bursts of requests, never during one."""

from __future__ import annotations

import asyncio

from edgeproxy.heaptrim import HeapTrim, malloc_trim


def test_glibc_trims() -> None:
    assert malloc_trim() is True  # CI runs on glibc: the trim must be available there


def test_trims_only_after_a_quiet_interval() -> None:
    async def scenario() -> tuple[int, int]:
        answered = 0
        trim = HeapTrim(0.02, lambda: answered)
        trim.start()
        for _ in range(40):  # a burst: activity moves several times between ticks
            answered += 1
            await asyncio.sleep(0.005)
        during = trim.trims
        await asyncio.sleep(0.15)  # quiet
        trim.stop()
        return during, trim.trims

    during, after = asyncio.run(scenario())
    assert during <= 1  # at most the tick that first saw the count
    assert after >= 2


def test_a_zero_interval_never_trims() -> None:
    async def scenario() -> int:
        trim = HeapTrim(0, lambda: 0)
        trim.start()
        await asyncio.sleep(0.05)
        trim.stop()
        return trim.trims

    assert asyncio.run(scenario()) == 0
