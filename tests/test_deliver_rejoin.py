"""`deliver.send_body` when another worker's fill of a slice ends unstored (given up, passed
through, or stored and evicted at once): before a byte of it went out, the slice is joined
again and the answer stays whole; after, the answer is cut short (its bytes are not vouched
for)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.cache.deliver import REJOINS, Reply, send_body
from edgeproxy.cache.foreign import ForeignFill
from edgeproxy.cache.meta import ObjectMeta
from edgeproxy.cache.policy import Freshness
from edgeproxy.cache.sources import ForeignSource, Source, StoredSource
from edgeproxy.errors import FillAborted, FillLost
from edgeproxy.http import ByteRange
from tests.origins import pattern

SIZE = 1000
BODY = pattern(3 * SIZE, seed=3)
META = ObjectMeta(200, len(BODY), None, None, None, (), Freshness(0.0, 0.0, 60.0), "x", "v1",
                  SIZE)


def _lost(tmp_path: Path, visible: bytes = b"") -> ForeignSource:
    """A foreign fill whose worker stopped with ``visible`` of its bytes in its file, and
    nothing stored."""
    path = tmp_path / f"fill-{len(visible)}"
    path.write_bytes(visible)
    fill = ForeignFill(path, is_running=lambda: False, stored=lambda: None)
    return ForeignSource(fill)


async def _deliver(sources: dict[int, list[Source]], reply: Reply) -> bytes:
    out: list[bytes] = []

    async def send(message: Any) -> None:
        out.append(message["body"])

    async def join(index: int) -> Source:
        return sources[index].pop(0)

    await send_body(reply, META, send, join, direct=None, read_size=4096, timeout=5)
    return b"".join(out)


def _stored(index: int) -> StoredSource:
    return StoredSource(BODY[index * SIZE:(index + 1) * SIZE])


async def test_a_fill_lost_before_its_first_byte_is_joined_again(tmp_path: Path) -> None:
    sources: dict[int, list[Source]] = {0: [_stored(0)], 1: [_lost(tmp_path), _stored(1)],
                                        2: [_stored(2)]}
    assert await _deliver(sources, Reply(200, [], None)) == BODY
    assert sources == {0: [], 1: [], 2: []}


async def test_a_range_ending_in_a_lost_fill_is_whole(tmp_path: Path) -> None:
    sources: dict[int, list[Source]] = {1: [_lost(tmp_path), _stored(1)]}
    got = await _deliver(sources, Reply(206, [], [ByteRange(SIZE + 10, 2 * SIZE - 1)]))
    assert got == BODY[SIZE + 10:2 * SIZE]


async def test_a_slice_lost_every_time_fails_the_answer(tmp_path: Path) -> None:
    sources: dict[int, list[Source]] = {0: [_stored(0)],
                                        1: [_lost(tmp_path) for _ in range(REJOINS + 1)]}
    with pytest.raises(FillLost):
        await _deliver(sources, Reply(200, [], None))


async def test_a_fill_lost_after_bytes_went_out_cuts_the_answer(tmp_path: Path) -> None:
    """Bytes of a fill that ended unstored may be ones its worker found wrong: the answer is
    not completed from another source."""
    half = BODY[SIZE:SIZE + SIZE // 2]
    running = [True]  # the other worker, until it stops midway
    fill = ForeignFill(tmp_path / "fill", is_running=lambda: running[0], stored=lambda: None)
    (tmp_path / "fill").write_bytes(half)
    source = ForeignSource(fill)
    sources: dict[int, list[Source]] = {0: [_stored(0)], 1: [source, _stored(1)]}
    out: list[bytes] = []

    async def send(message: Any) -> None:
        out.append(message["body"])
        if sum(map(len, out)) >= SIZE + len(half) - 1:
            running[0] = False

    async def join(index: int) -> Source:
        return sources[index].pop(0)

    with pytest.raises(FillAborted) as caught:
        await send_body(Reply(200, [], None), META, send, join, direct=None, read_size=4096,
                        timeout=5)
    assert not isinstance(caught.value, FillLost)
    assert b"".join(out) == BODY[:SIZE] + half[:len(b"".join(out)) - SIZE]


async def test_a_body_of_unknown_length_rejoins_a_lost_slice(tmp_path: Path) -> None:
    """Slice after slice until one is short (the body's length is learnt at its end)."""
    growing = dataclasses.replace(META, length=None)
    sources: dict[int, list[Source]] = {0: [_stored(0)], 1: [_lost(tmp_path), _stored(1)],
                                        2: [_stored(2)], 3: [StoredSource(b"")]}
    out: list[bytes] = []

    async def send(message: Any) -> None:
        out.append(message["body"])

    async def join(index: int) -> Source:
        return sources[index].pop(0)

    assert await send_body(Reply(200, [], None), growing, send, join, direct=None,
                           read_size=4096, timeout=5) == len(BODY)
    assert b"".join(out) == BODY
