"""Following a slice another worker fills: one look at that worker per poll interval and
process, however many requests follow (a stampede's followers must not poll it N times)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from edgeproxy.cache.fills import POLL_INTERVAL, ForeignFill


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
