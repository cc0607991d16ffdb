"""`zerocopy.send_files` on a real socket: the bytes of several files' segments in order, a
short ``sendfile`` followed by a wait for room (not by another call at once, as nginx's event
loop does it), each file checked before its first byte and after every wait, and a changed
file or a file that ends short stopping the run."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgeproxy import zerocopy
from edgeproxy.errors import FillAborted

DATA = [hashlib.shake_256(b"seg%d" % i).digest(700_000 + i) for i in range(3)]


def _files(tmp_path: Path) -> list[int]:
    fds = []
    for i, data in enumerate(DATA):
        path = tmp_path / f"slice{i}"
        path.write_bytes(data)
        fds.append(os.open(path, os.O_RDONLY))
    return fds


def _slow_reader(sock: socket.socket, into: bytearray) -> threading.Thread:
    def run() -> None:
        time.sleep(0.05)  # the socket fills first
        while chunk := sock.recv(32 * 1024):
            into.extend(chunk)
            time.sleep(0.001)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _run(tmp_path: Path, checks: list[Any], events: list[tuple[Any, ...]],
         monkeypatch: pytest.MonkeyPatch, *, unchanged: Any = None,
         short_file: bool = False) -> tuple[bool | BaseException, bytes]:
    real_sendfile = os.sendfile
    real_step = zerocopy._FileRun.step

    def sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        try:
            sent = real_sendfile(out_fd, in_fd, offset, count)
        except BlockingIOError:
            events.append(("sendfile", count, -1))
            raise
        events.append(("sendfile", count, sent))
        return sent

    def step(self: Any) -> None:
        events.append(("step",))
        real_step(self)

    monkeypatch.setattr(os, "sendfile", sendfile)
    monkeypatch.setattr(zerocopy._FileRun, "step", step)
    fds = _files(tmp_path)
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    received = bytearray()

    def check(i: int) -> Any:
        def unchanged_file() -> bool:
            checks.append(i)
            return True if unchanged is None else bool(unchanged(i, len(checks)))
        return unchanged_file

    async def main() -> bool | BaseException:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
        count = [len(d) for d in DATA]
        if short_file:
            count[1] += 10  # more than the file holds
        segments = [(fd, 0, n, check(i)) for i, (fd, n) in enumerate(zip(fds, count, strict=True))]
        reader = _slow_reader(theirs, received)
        try:
            outcome: bool | BaseException = await zerocopy.send_files(transport, segments, 5)
        except Exception as exc:  # (the outcome under test)
            outcome = exc
        transport.close()
        await asyncio.sleep(0.05)
        theirs.shutdown(socket.SHUT_WR)
        await asyncio.to_thread(reader.join, 10)
        return outcome

    try:
        outcome = asyncio.run(main())
    finally:
        for fd in fds:
            os.close(fd)
        theirs.close()
    return outcome, bytes(received)


def test_the_segments_arrive_whole_and_a_short_send_waits_for_room(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checks: list[int] = []
    events: list[tuple[Any, ...]] = []
    outcome, received = _run(tmp_path, checks, events, monkeypatch)
    assert outcome is True
    assert received == b"".join(DATA)
    sends = [e for e in events if e[0] == "sendfile"]
    assert len(sends) > len(DATA)  # the socket filled: some sends were short
    for before, after in itertools.pairwise(events):
        if before[0] == "sendfile" and before[2] < before[1]:
            assert after == ("step",)  # never asked again before a wake
    # one check per file's first byte, and one per wake that sent
    wakes = sum(1 for a, b in itertools.pairwise(events) if a == ("step",) and b[0] == "sendfile")
    assert wakes <= len(checks) <= wakes + len(DATA) - 1  # (the first wake: file 0's first)
    assert sorted(set(checks)) == [0, 1, 2]


def test_a_file_found_changed_after_a_wait_sends_nothing_more(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checks: list[int] = []
    events: list[tuple[Any, ...]] = []
    outcome, received = _run(tmp_path, checks, events, monkeypatch,
                             unchanged=lambda i, n: n < 3)  # the third check finds a write
    assert isinstance(outcome, FillAborted)
    whole = b"".join(DATA)
    assert len(received) < len(whole) and received == whole[:len(received)]
    sent = sum(e[2] for e in events if e[0] == "sendfile" and e[2] > 0)
    assert len(received) == sent  # no byte after the failed check


def test_a_file_shorter_than_its_segment_ends_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, received = _run(tmp_path, [], [], monkeypatch, short_file=True)
    assert isinstance(outcome, EOFError)
    assert received == (DATA[0] + DATA[1])[:len(received)]
    assert len(received) == len(DATA[0]) + len(DATA[1])
