"""`HeadHolder`: a response head leaves with the first body bytes, in order, never late."""

from __future__ import annotations

import asyncio
from typing import Any

from edgeproxy.headholder import JOIN_MAX, HeadHolder


class Recorder:
    """A transport that records each system-call-level write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, pieces: Any) -> None:
        self.writes.append(b"".join(pieces))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


async def test_head_and_small_body_leave_in_one_write() -> None:
    real = Recorder()
    holder = HeadHolder(real, asyncio.get_running_loop())
    holder.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert real.writes == []
    holder.write(b"hi")
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"]
    holder.write(b"")  # the closing empty body message
    holder.write(b"more")
    assert real.writes[1:] == [b"", b"more"] or real.writes[1:] == [b"more"]


async def test_a_large_body_goes_with_the_head_without_a_join_copy() -> None:
    real = Recorder()
    holder = HeadHolder(real, asyncio.get_running_loop())
    body = b"x" * (JOIN_MAX + 1)
    holder.write(b"HEAD")
    holder.write(body)
    assert real.writes == [b"HEAD" + body]


async def test_a_held_head_goes_out_after_one_loop_turn() -> None:
    real = Recorder()
    holder = HeadHolder(real, asyncio.get_running_loop())
    holder.write(b"HEAD")
    await asyncio.sleep(0)
    assert real.writes == [b"HEAD"]
    holder.write(b"body")
    assert real.writes == [b"HEAD", b"body"]


async def test_close_sends_what_is_held_first() -> None:
    real = Recorder()
    holder = HeadHolder(real, asyncio.get_running_loop())
    holder.write(b"HEAD")
    holder.close()
    assert real.writes == [b"HEAD"] and real.closed
    assert holder.is_closing()  # everything else is the real transport's
