"""A fill that meets a full volume after room was made for it makes room once more, with a
fresh reading, and goes on storing; only a second failure moves it to memory, unstored."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from edgeproxy.cache.fills import SliceFill
from edgeproxy.cache.flight import Flight

FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fill(tmp_path: Path, room: list[bool], asked: list[tuple[int, bool]]) -> SliceFill:
    fill = SliceFill("/k", 0, tmp_path / "slice", Flight("/k", 0, 0), inline_max=1024)
    fill.expected = 10_000

    def make_room(nbytes: int, anew: bool) -> bool:
        asked.append((nbytes, anew))
        return room.pop(0)
    fill.make_room = make_room
    return fill


async def test_room_made_again_and_the_rest_written(tmp_path: Path) -> None:
    asked: list[tuple[int, bool]] = []
    fill = _fill(tmp_path, [True, True], asked)
    data = bytes(range(256)) * 8  # 2048 bytes: past inline_max, to the file
    fill.prepare(len(data))
    done, _ = fill.land(data, 0)
    fill.landed(data, done - 100, FULL)  # the last 100 bytes met ENOSPC
    assert asked == [(10_000, False), (10_000 - 1948, True)]  # the rest of the slice, anew
    assert fill.on_disk and not fill.unstorable and fill.written == len(data)
    assert os.pread(fill.fd, 4096, 0) == data
    fill.fail(RuntimeError("done with the test"))
    fill.keep_in_memory()


async def test_no_room_the_second_time_moves_the_slice_to_memory(tmp_path: Path) -> None:
    asked: list[tuple[int, bool]] = []
    fill = _fill(tmp_path, [True, False], asked)
    faults: list[BaseException] = []
    fill.on_fault = faults.append
    data = bytes(2048)
    fill.prepare(len(data))
    done, _ = fill.land(data, 0)
    fill.landed(data, done - 100, FULL)
    assert fill.unstorable and not fill.on_disk and faults == [FULL]
    assert fill.read(0, 4096) == data  # its readers still get every byte
    assert not (tmp_path / "slice").exists()
