"""When a fill wakes the requests following it (`edgeproxy.cache.fills`): at a slice's first
bytes at once, then every `WAKE_BYTES`, or `WAKE_AFTER` after bytes that did not make that
many, and at its end or failure; never holding bytes back longer than that."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgeproxy.cache.fills import WAKE_AFTER, WAKE_BYTES, SliceFill
from edgeproxy.cache.flight import Flight

CHUNK = 256 * 1024  # what a read from the upstream brings, about


def _land(fill: SliceFill, size: int) -> None:
    data = bytes(size)
    done, error = fill.land(data, fill.written)
    fill.landed(data, done, error)


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_readers_wake_at_first_bytes_then_per_wake_bytes_or_after_a_pause(
        tmp_path: Path) -> None:
    fill = SliceFill("/k", 0, tmp_path / "slice", Flight("/k", 0, 0), inline_max=1024)
    fill.expected = 4 * WAKE_BYTES
    wakes: list[int] = []

    async def follow() -> None:
        position = 0
        while not fill.done:
            await fill.wait_beyond(position, 5)
            wakes.append(fill.visible)
            position = fill.visible

    reader = asyncio.create_task(follow())
    await _turns()
    _land(fill, CHUNK)
    await _turns()
    assert wakes == [CHUNK]  # the first bytes go at once
    for _ in range(3):
        _land(fill, CHUNK)
        await _turns()
    assert wakes == [CHUNK]  # 768 KiB more: held for company
    _land(fill, CHUNK)
    await _turns()
    assert wakes == [CHUNK, CHUNK + WAKE_BYTES]  # a whole WAKE_BYTES more: at once
    _land(fill, CHUNK)
    await _turns()
    assert wakes == [CHUNK, CHUNK + WAKE_BYTES]
    await asyncio.sleep(WAKE_AFTER * 2)  # the upstream pauses: the bytes go anyway
    assert wakes == [CHUNK, CHUNK + WAKE_BYTES, 2 * CHUNK + WAKE_BYTES]
    _land(fill, CHUNK)
    fill.finish()  # the end wakes at once, with every byte
    await asyncio.wait_for(reader, 1)
    assert wakes[-1] == fill.written == 3 * CHUNK + WAKE_BYTES
    await asyncio.sleep(WAKE_AFTER * 2)  # no timer left to fire after the end
    assert wakes[-1] == fill.written


@pytest.mark.parametrize("ending", ["finish", "fail"])
async def test_an_end_or_a_failure_wakes_readers_at_once(tmp_path: Path, ending: str) -> None:
    fill = SliceFill("/k", 0, tmp_path / "slice", Flight("/k", 0, 0), inline_max=1024)
    fill.expected = 4 * WAKE_BYTES
    _land(fill, CHUNK)
    waiting = asyncio.create_task(fill.wait_beyond(CHUNK, 5))
    await _turns()
    _land(fill, CHUNK)  # held: not a whole WAKE_BYTES
    await _turns()
    assert not waiting.done()
    if ending == "finish":
        fill.finish()
    else:
        fill.fail(OSError("upstream went away"))
    await _turns()
    assert waiting.done()
