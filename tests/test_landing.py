"""Where a flight's body bytes land (`edgeproxy.cache.landing`): large writes are hashed and
written to the slice files in a thread, small ones on the event loop; either way the fills
hold exactly the body's bytes, in order, and their state changes only on the loop."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.cache import checksum
from edgeproxy.cache.fills import SliceFill
from edgeproxy.cache.flight import Flight
from edgeproxy.cache.landing import INLINE_FIRST, OFFLOAD_MIN, THREAD_NICE, Landing

SIZE = 1024 * 1024  # slice size
INLINE = 32 * 1024
BODY = hashlib.shake_256(b"landing").digest(2 * SIZE)
LATE = INLINE_FIRST  # bytes of the answer before: past its first ones, which stay on the loop


def _flight(tmp_path: Path, slices: int) -> Flight:
    flight = Flight("/k", 0, slices - 1)
    for i in range(slices):
        fill = SliceFill("/k", i, tmp_path / f"slice{i}", flight, INLINE)
        fill.expected = SIZE
        flight.fills[i] = fill
    flight.hasher = hashlib.sha256()
    return flight


def _landing(completed: list[int]) -> Landing:
    return Landing(lambda flight, index, size: None,
                   lambda flight, fill: completed.append(fill.index))


async def test_large_writes_go_to_a_thread_small_ones_stay_on_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real = SliceFill.land

    def land(self: SliceFill, data: Any, position: int) -> Any:
        threads.append(threading.get_ident())
        return real(self, data, position)

    monkeypatch.setattr(SliceFill, "land", land)
    flight, completed = _flight(tmp_path, 1), list[int]()
    landing = _landing(completed)
    small = OFFLOAD_MIN - 1
    assert await landing.write(flight, 0, BODY[:small], SIZE, 2 * SIZE, LATE) is False
    assert await landing.write(flight, small, BODY[small:SIZE], SIZE, 2 * SIZE, LATE) is True
    loop_thread = threading.get_ident()
    assert threads[0] == loop_thread and threads[1] != loop_thread
    fill = flight.fills[0]
    assert (fill.written, fill.visible) == (SIZE, SIZE)
    assert Path(fill.path).read_bytes() == BODY[:SIZE]
    assert fill.sum.value() == checksum.of(BODY[:SIZE])
    assert completed == [0]
    landing.close()


async def test_the_fill_threads_run_below_the_event_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nice: list[tuple[int, int]] = []  # (thread, its nice value) as it lands bytes
    real = SliceFill.land

    def land(self: SliceFill, data: Any, position: int) -> Any:
        tid = threading.get_native_id()
        nice.append((tid, os.getpriority(os.PRIO_PROCESS, tid)))
        return real(self, data, position)

    monkeypatch.setattr(SliceFill, "land", land)
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    flight, landing = _flight(tmp_path, 2), _landing([])
    assert await landing.write(flight, 0, BODY[:SIZE], SIZE, 2 * SIZE, LATE) is True
    assert await landing.write(flight, SIZE, BODY[SIZE:], SIZE, 2 * SIZE, LATE + SIZE) is True
    assert len(nice) == 2
    assert all(tid != threading.get_native_id() and value == min(19, own + THREAD_NICE)
               for tid, value in nice)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # the loop's
    assert b"".join(Path(f.path).read_bytes() for f in flight.fills.values()) == BODY
    landing.close()


async def test_an_answers_first_bytes_land_on_the_loop_however_large(tmp_path: Path) -> None:
    flight = _flight(tmp_path, 1)
    landing = _landing([])
    first = BODY[:INLINE_FIRST]
    assert await landing.write(flight, 0, first, SIZE, 2 * SIZE, 0) is False
    assert flight.fills[0].visible == len(first)  # readers may send them at once
    assert await landing.write(flight, len(first), BODY[len(first):SIZE], SIZE, 2 * SIZE,
                               len(first)) is True
    assert Path(flight.fills[0].path).read_bytes() == BODY[:SIZE]
    landing.close()


async def test_a_body_across_slices_lands_in_order(tmp_path: Path) -> None:
    flight, completed = _flight(tmp_path, 2), list[int]()
    landing = _landing(completed)
    pieces = [BODY[at:at + 300_000] for at in range(0, len(BODY), 300_000)]  # across the seam
    offset = 0
    for piece in pieces:
        await landing.write(flight, offset, piece, SIZE, 2 * SIZE, offset)  # first: loop
        offset += len(piece)
    assert completed == [0, 1]
    assert flight.hasher.hexdigest() == hashlib.sha256(BODY).hexdigest()
    for i in (0, 1):
        assert Path(flight.fills[i].path).read_bytes() == BODY[i * SIZE:(i + 1) * SIZE]
    landing.close()


async def test_bytes_out_of_order_are_refused(tmp_path: Path) -> None:
    from edgeproxy.errors import UpstreamProtocolError

    flight = _flight(tmp_path, 1)
    landing = _landing([])
    with pytest.raises(UpstreamProtocolError, match="out of order"):
        await landing.write(flight, 1000, BODY[1000:2000], SIZE, 2 * SIZE, LATE)
    landing.close()


async def test_a_disk_error_in_the_thread_keeps_every_byte_in_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if offset >= 200_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data[:50_000], offset)  # short writes too

    flight = _flight(tmp_path, 1)
    fill = flight.fills[0]
    faults: list[BaseException] = []
    fill.on_fault = faults.append
    landing = _landing([])
    monkeypatch.setattr(os, "pwrite", pwrite)
    await landing.write(flight, 0, BODY[:SIZE // 2], SIZE, 2 * SIZE, LATE)
    await landing.write(flight, SIZE // 2, BODY[SIZE // 2:SIZE], SIZE, 2 * SIZE, LATE)
    monkeypatch.setattr(os, "pwrite", real)
    assert fill.unstorable and not fill.on_disk
    assert fill.data() == BODY[:SIZE] and fill.written == SIZE
    assert [getattr(exc, "errno", None) for exc in faults] == [errno.ENOSPC]
    assert not fill.path.exists()
    landing.close()


async def test_a_cancelled_write_returns_only_once_its_thread_is_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finished: list[float] = []
    real = SliceFill.land

    def slow(self: SliceFill, data: Any, position: int) -> Any:
        time.sleep(0.3)
        result = real(self, data, position)
        finished.append(time.monotonic())
        return result

    monkeypatch.setattr(SliceFill, "land", slow)
    flight = _flight(tmp_path, 1)
    landing = _landing([])
    task = asyncio.ensure_future(landing.write(flight, 0, BODY[:SIZE], SIZE, 2 * SIZE, LATE))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.01)
    task.cancel()  # cancelled again while it waits: it still waits
    with pytest.raises(asyncio.CancelledError):
        await task
    # the fill's file may be closed from here on: the thread no longer writes into it
    assert finished
    assert Path(flight.fills[0].path).read_bytes() == BODY[:SIZE]
    landing.close()


def _loop_and_file_threads(monkeypatch: pytest.MonkeyPatch, fills: str) -> list[int]:
    """The threads that create files under ``fills`` (recorded as they do)."""
    makers: list[int] = []
    real = os.open

    def open_(path: Any, flags: int, *args: Any) -> int:
        if str(path).startswith(fills) and flags & os.O_CREAT:
            makers.append(threading.get_ident())
        return real(path, flags, *args)

    monkeypatch.setattr(os, "open", open_)
    return makers


async def test_a_slice_s_file_is_made_in_the_thread_that_writes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Creating a file waits on the file system's journal under heavy writes: not on the loop.
    makers = _loop_and_file_threads(monkeypatch, str(tmp_path))
    flight = _flight(tmp_path, 1)
    fill = flight.fills[0]
    landing = _landing([])
    small = INLINE // 2
    assert await landing.write(flight, 0, BODY[:small], SIZE, 2 * SIZE, LATE) is False
    assert not fill.path.exists() and not fill.on_disk  # still in memory
    pieces = landing.place(flight, small, BODY[small:SIZE], SIZE, 2 * SIZE)
    assert fill.spilling and not fill.path.exists()  # room made; no file yet
    assert fill.read(0, small) == BODY[:small]
    landed = await landing._offload(flight, BODY[small:SIZE], pieces)
    assert makers and makers[0] != threading.get_ident()
    assert fill.read(0, small) == BODY[:small] and not fill.on_disk  # until `landed`
    for (each, piece, _), (done, error) in zip(pieces, landed, strict=True):
        each.landed(piece, done, error)
    assert fill.on_disk and fill.written == SIZE and not fill.spilling
    assert fill.path.read_bytes() == BODY[:SIZE] and fill.read(0, SIZE) == BODY[:SIZE]
    landing.close()


def _slow_landing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  ) -> tuple[SliceFill, Landing, asyncio.Future[bool]]:  # fmt: skip
    """A fill, and a write of its slice whose thread takes 0.2 s, under way."""
    real = SliceFill.land

    def slow(self: SliceFill, data: Any, position: int) -> Any:
        time.sleep(0.2)
        return real(self, data, position)

    monkeypatch.setattr(SliceFill, "land", slow)
    flight = _flight(tmp_path, 1)
    landing = _landing([])
    task = asyncio.ensure_future(landing.write(flight, 0, BODY[:SIZE], SIZE, 2 * SIZE, LATE))
    return flight.fills[0], landing, task


async def test_a_file_made_for_a_flight_that_ended_before_its_bytes_landed_is_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[int] = []
    real_create = SliceFill._create

    def create(self: SliceFill) -> int:
        made.append(real_create(self))
        return made[-1]

    monkeypatch.setattr(SliceFill, "_create", create)
    fill, landing, task = _slow_landing(tmp_path, monkeypatch)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert made and fill.path.exists() and not fill.on_disk
    fill.release()  # the flight's end
    assert not fill.path.exists()
    with pytest.raises(OSError) as closed:
        os.fstat(made[0])
    assert closed.value.errno == errno.EBADF
    landing.close()


async def test_a_fill_dropped_from_the_store_while_its_file_is_made_stays_in_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fill, landing, task = _slow_landing(tmp_path, monkeypatch)
    await asyncio.sleep(0.05)
    fill.keep_in_memory()  # e.g. a purge, on the loop, while the thread makes the file
    await task
    assert fill.unstorable and not fill.on_disk and not fill.path.exists()
    assert fill.data() == BODY[:SIZE] and fill.written == SIZE
    landing.close()


async def test_a_file_that_cannot_be_made_keeps_the_slice_in_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.open

    def full(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_CREAT and str(path).startswith(str(tmp_path)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, flags, *args)

    flight = _flight(tmp_path, 1)
    fill = flight.fills[0]
    faults: list[BaseException] = []
    fill.on_fault = faults.append
    landing = _landing([])
    monkeypatch.setattr(os, "open", full)
    await landing.write(flight, 0, BODY[:SIZE], SIZE, 2 * SIZE, LATE)
    assert fill.unstorable and not fill.on_disk and not fill.path.exists()
    assert fill.data() == BODY[:SIZE] and fill.written == SIZE
    assert [getattr(exc, "errno", None) for exc in faults] == [errno.ENOSPC]
    landing.close()


async def test_a_write_error_making_the_file_leaves_the_buffer_free_to_grow(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed write's traceback keeps its arguments alive: none of them may be a view of
    the fill's buffer, which grows with the next bytes (BufferError cut the answer short)."""
    kept: list[BaseException] = []
    real = os.pwrite

    def full(fd: int, data: Any, offset: int) -> int:
        exc = OSError(errno.ENOSPC, "No space left on device")
        kept.append(exc)  # (with its traceback, as a caller's log record may keep it)
        raise exc

    flight = _flight(tmp_path, 1)
    fill = flight.fills[0]
    landing = _landing([])
    small = INLINE // 2
    await landing.write(flight, 0, BODY[:small], SIZE, 2 * SIZE, 0)
    monkeypatch.setattr(os, "pwrite", full)
    for at in range(small, SIZE, 100_000):  # on the loop and in the thread, across the spill
        end = min(SIZE, at + 100_000)
        await landing.write(flight, at, BODY[at:end], SIZE, 2 * SIZE, at)
    monkeypatch.setattr(os, "pwrite", real)
    assert kept and fill.unstorable and not fill.on_disk and not fill.path.exists()
    assert fill.data() == BODY[:SIZE]
    landing.close()
