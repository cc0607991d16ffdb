"""The fill threads (`edgeproxy.cache.landing.FillThreads`): a write handed over from the
event loop runs in a thread below the loop's priority and is answered on the loop's future,
its error too; the loop goes on meanwhile; closing lets the threads go."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest

from edgeproxy.cache import landing


def test_a_write_runs_in_a_thread_and_is_answered_on_the_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int]] = []

    def slow(hasher: Any, chunk: bytes, pieces: list[landing.Piece]) -> landing.Landed:
        seen.append((threading.current_thread().name,
                     os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        time.sleep(0.05)
        if chunk == b"bad":
            raise ValueError("no such write")
        return [(len(chunk), None)]

    monkeypatch.setattr(landing, "land", slow)

    async def main() -> tuple[landing.Landed, int, BaseException | None]:
        threads = landing.FillThreads(2)
        try:
            ticks = 0
            job = threads.land(None, b"abcd", [])
            while not job.done():  # the loop is free while the thread writes
                ticks += 1
                await asyncio.sleep(0.005)
            failed = threads.land(None, b"bad", [])
            error = None
            try:
                await failed
            except ValueError as exc:
                error = exc
            return job.result(), ticks, error
        finally:
            threads.close()

    result, ticks, error = asyncio.run(main())
    assert result == [(4, None)]
    assert ticks >= 3
    assert isinstance(error, ValueError)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert [name.startswith("edgeproxy-fill") for name, _ in seen] == [True, True]
    assert all(nice >= min(base + landing.THREAD_NICE, 19) for _, nice in seen)


def test_closing_lets_the_threads_go() -> None:
    threads = landing.FillThreads(3)
    names = {t.name for t in threading.enumerate()}
    assert sum(n.startswith("edgeproxy-fill") for n in names) >= 3
    threads.close()
    deadline = time.monotonic() + 5
    while any(t.is_alive() for t in threads._threads) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.is_alive() for t in threads._threads)
