"""`DbCalls`: database calls in a pool of their own, bounded in time (a hung database is a
503, not a request that never ends), and a lock taken after its caller gave up is given
back rather than held by no one."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from edgeproxy.errors import HTTPError
from edgeproxy.origin.dbcalls import DbCalls


async def _eventually(done: Callable[[], bool]) -> None:
    """Until ``done()`` (a thread of the pool ends its call), for up to a second."""
    for _ in range(100):
        if done():
            return
        await asyncio.sleep(0.01)


async def test_a_call_answers_its_result_in_time() -> None:
    calls = DbCalls(timeout=5)
    assert await calls(lambda a, b: a + b, 2, b=3) == 5
    calls.close()


async def test_a_call_not_answered_in_time_is_a_503_and_ends_later() -> None:
    calls = DbCalls(timeout=0.1)
    release = threading.Event()
    ended: list[str] = []

    def hung() -> str:
        release.wait(10)
        ended.append("done")
        return "late"

    started = time.monotonic()
    with pytest.raises(HTTPError) as refused:
        await calls(hung)
    assert refused.value.status == 503 and refused.value.error == "database_unavailable"
    assert time.monotonic() - started < 2
    # the pool is its own: other calls go on while that one hangs
    assert await calls(lambda: "other") == "other"
    release.set()
    await _eventually(lambda: bool(ended))
    assert ended == ["done"]
    calls.close()


async def test_a_lock_taken_after_its_caller_gave_up_is_given_back() -> None:
    calls = DbCalls(timeout=0.1)
    release = threading.Event()
    given_back: list[str] = []

    def take() -> str:
        release.wait(10)
        return "lock"

    with pytest.raises(HTTPError):
        await calls.holding(take, given_back.append)
    assert given_back == []
    release.set()
    await _eventually(lambda: bool(given_back))
    assert given_back == ["lock"]
    # in time: the caller holds it, nothing is given back
    assert await calls.holding(lambda: "mine", given_back.append) == "mine"
    await asyncio.sleep(0.05)
    assert given_back == ["lock"]
    calls.close()


async def test_a_lock_taken_after_its_caller_was_cancelled_is_given_back() -> None:
    calls = DbCalls(timeout=5)
    release = threading.Event()
    given_back: list[str | None] = []

    def take() -> str | None:
        release.wait(10)
        return "lock"

    waiting = asyncio.ensure_future(calls.holding(take, given_back.append))
    await asyncio.sleep(0.05)
    waiting.cancel()  # (a client gone while its upload waited for the lock)
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    await _eventually(lambda: bool(given_back))
    assert given_back == ["lock"]
    calls.close()
