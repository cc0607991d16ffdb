"""Following a slice another worker fills: one look at that worker per poll interval and
process, however many requests follow (a stampede's followers must not poll it N times)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from edgeproxy.cache.foreign import POLL_INTERVAL, ForeignFill


async def test_many_followers_share_one_look_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "fill"
    path.write_bytes(b"")
    looks = 0
    running = True

    def is_running() -> bool:
        nonlocal looks
        looks += 1
        return running

    forgotten: list[ForeignFill] = []
    fill = ForeignFill(path, is_running, stored=lambda: path.read_bytes(),
                       on_last=forgotten.append)
    followers = 50
    for _ in range(followers):
        fill.attach()

    async def grow() -> None:
        nonlocal running
        with path.open("ab") as f:
            for _ in range(10):
                await asyncio.sleep(POLL_INTERVAL)
                f.write(b"x" * 100)
                f.flush()
        running = False

    grower = asyncio.create_task(grow())
    await asyncio.gather(*(fill.wait_done(5) for _ in range(followers)))
    await grower
    assert fill.done and fill.visible == 1000 and fill.read(0, 1000) == b"x" * 1000
    # about one look per interval in all (the growth took ~10 intervals), not one per follower
    assert looks < 40, looks
    for _ in range(followers):
        fill.detach()
    assert forgotten == [fill] and fill.fd == -1


async def test_a_follower_that_leaves_does_not_stop_the_others(tmp_path: Path) -> None:
    path = tmp_path / "fill"
    path.write_bytes(b"abc")
    state = {"running": True}
    fill = ForeignFill(path, lambda: state["running"], stored=lambda: b"abcd")
    fill.attach()
    fill.attach()
    leaving = asyncio.create_task(fill.wait_done(5))
    staying = asyncio.create_task(fill.wait_done(5))
    await asyncio.sleep(POLL_INTERVAL / 2)
    leaving.cancel()  # it may be the one looking
    fill.detach()
    await asyncio.sleep(POLL_INTERVAL * 2)
    state["running"] = False
    await asyncio.wait_for(staying, 2)
    assert fill.done and fill.read(0, 10) == b"abcd"
    assert os.path.exists(path)
    fill.detach()


async def test_followers_wake_in_the_turn_the_look_ends(tmp_path: Path) -> None:
    """The requests waiting on another's look at the other worker run in the turn after it
    ends (a `Broadcast`), not two turns later: under a stampede a turn lasted 25 ms."""
    loop = asyncio.get_running_loop()
    path = tmp_path / "fill"
    path.write_bytes(b"")
    fill = ForeignFill(path, lambda: True, stored=lambda: None)
    fill.attach()
    fill.attach()
    turns = 0
    stop = False

    def tick() -> None:  # once per turn
        nonlocal turns
        turns += 1
        if not stop:
            loop.call_soon(tick)

    looked_at: list[int] = []
    refresh = fill._refresh

    def look() -> None:
        refresh()
        looked_at.append(turns)

    fill._refresh = look  # type: ignore[method-assign]
    looker = asyncio.create_task(fill.wait_beyond(0, 5))
    await asyncio.sleep(0)  # the looker's look is under way: the other follower waits on it
    resumed: list[int] = []

    async def follower() -> None:
        await fill.wait_beyond(0, 5)
        resumed.append(turns)

    other = asyncio.create_task(follower())
    await asyncio.sleep(0)
    path.write_bytes(b"abc")  # grown: the next look sees it
    loop.call_soon(tick)
    await asyncio.gather(looker, other)
    stop = True
    assert fill.visible == 2  # (the last byte waits for the commit)
    assert resumed[0] - looked_at[-1] == 1, (looked_at, resumed)
    fill.detach()
    fill.detach()


async def test_requests_waiting_for_another_workers_facts_wake_in_one_turn(
        tmp_path: Path) -> None:
    """Many misses on an object another worker fills share one poll of the index for its
    facts (`Coalescer.foreign_facts`); the others run in the turn after it finds them."""
    from edgeproxy.cache.coalesce import Coalescer
    from edgeproxy.cache.meta import ObjectMeta
    from edgeproxy.cache.policy import Freshness
    from edgeproxy.cache.store import CacheStore

    loop = asyncio.get_running_loop()
    store = CacheStore(tmp_path / "cache", 1 << 30)
    coalescer = Coalescer(store, 5.0)
    coalescer.claims.held_elsewhere = lambda key, index: True  # type: ignore[method-assign]
    meta = ObjectMeta(200, 10, None, None, None, (), Freshness(1.0, 1.0, 60.0), "x", "v1", 10)
    polls = 0
    turns = 0
    found_at: list[int] = []

    def get_meta(key: str) -> ObjectMeta | None:  # the other worker commits at the 3rd look
        nonlocal polls
        polls += 1
        if polls < 3:
            return None
        found_at.append(turns)
        return meta

    def tick() -> None:
        nonlocal turns
        turns += 1
        if len(resumed) < 4:
            loop.call_soon(tick)

    store.get_meta = get_meta  # type: ignore[method-assign]
    resumed: list[int] = []

    async def miss() -> None:
        assert await coalescer.foreign_facts("/k", 0, 0.0) == meta
        resumed.append(turns)

    tasks = [asyncio.create_task(miss()) for _ in range(4)]
    loop.call_soon(tick)
    await asyncio.gather(*tasks)
    try:
        assert polls == 3  # one poll for the four
        # the poller goes on in the turn of its look; the others in the next (not 2 later)
        assert sorted(r - found_at[0] for r in resumed) == [0, 1, 1, 1], (found_at, resumed)
    finally:
        store.close()
        coalescer.claims.close()
