"""`edgeproxy.admission`: new request tasks start a few per loop turn, in arrival order.

A burst of requests used to queue all its first steps ahead of the answers already under way
(a stampede's leaders waited ~100 ms behind them for their first bytes). The unit tests run
a real event loop and count its turns; the socket test sends a burst to an edge.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from edgeproxy.admission import PER_TURN, Admission, admission_for
from edgeproxy.cache import create_app
from edgeproxy.guard import uvicorn_http_options
from tests.chain import chain_config
from tests.foreign import ForeignOrigin
from tests.servers import ServerThread


def _turns_of(arrivals: list[int], per_turn: int) -> list[tuple[str, int]]:
    """Start requests arriving at the given turns; (name, turn it started in), in start order."""

    async def main() -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        admission = Admission(loop, per_turn)
        turn = 0
        started: list[tuple[str, int]] = []
        done = loop.create_future()

        def tick() -> None:
            nonlocal turn
            turn += 1
            if turn < 20:
                loop.call_soon(tick)
            else:
                done.set_result(None)

        def arrive(name: str) -> None:
            admission.start(lambda: started.append((name, turn)))

        loop.call_soon(tick)  # first in each turn's callbacks: it numbers the turn
        for i, at in enumerate(arrivals):
            if at == 0:
                arrive(f"r{i}")
            else:
                # arrive at turn ``at``: hop that many turns first
                def hop(left: int, name: str) -> None:
                    if left:
                        loop.call_soon(hop, left - 1, name)
                    else:
                        arrive(name)
                loop.call_soon(hop, at - 1, f"r{i}")
        await done
        return started

    return asyncio.run(main())


def test_under_the_share_a_request_starts_at_once() -> None:
    assert _turns_of([0, 0], per_turn=2) == [("r0", 0), ("r1", 0)]


def test_a_burst_is_spread_over_turns_in_arrival_order() -> None:
    started = _turns_of([0] * 7, per_turn=2)
    assert [name for name, _ in started] == [f"r{i}" for i in range(7)]
    turns = [turn for _, turn in started]
    assert turns == [0, 0, 1, 1, 2, 2, 3]  # the share of each turn, from the one they came in


def test_a_later_request_waits_behind_earlier_waiting_ones() -> None:
    started = _turns_of([0, 0, 0, 0, 0, 1], per_turn=2)
    assert started == [("r0", 0), ("r1", 0), ("r2", 1), ("r3", 1), ("r4", 2), ("r5", 2)]


def test_once_the_burst_is_through_requests_start_at_once_again() -> None:
    assert _turns_of([0, 0, 0, 5, 5], per_turn=2)[-2:] == [("r3", 5), ("r4", 5)]


def test_one_admission_per_loop() -> None:
    async def two() -> tuple[Admission, Admission]:
        loop = asyncio.get_running_loop()
        return admission_for(loop), admission_for(loop)

    first, second = asyncio.run(two())
    assert first is second and first.per_turn == PER_TURN
    assert asyncio.run(two())[0] is not first  # a new loop, a new admission


def test_a_burst_of_requests_is_answered_whole_and_in_order(foreign: ForeignOrigin,
                                                            tmp_path: Path) -> None:
    """64 connections, each with 3 pipelined requests, sent at once to an edge served by its
    own protocol: every answer comes, each connection's in order."""
    for i in range(16):
        foreign.route(f"/burst/{i}", body=f"object {i}".encode() * 100,
                      headers=[("Cache-Control", "public, max-age=60")])
    config = chain_config(tmp_path)
    thread = ServerThread(create_app(config, "edge", upstream=foreign.url),
                          **uvicorn_http_options(config.http_limits)).start()
    try:
        host, port = "127.0.0.1", thread.port
        socks = []
        for c in range(64):
            sock = socket.create_connection((host, port))
            wanted = [(c + k) % 16 for k in range(3)]
            sock.sendall(b"".join(f"GET /burst/{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
                                  for i in wanted))
            socks.append((sock, wanted))
        for sock, wanted in socks:
            sock.settimeout(30)
            raw = b""
            expect = b"".join(f"object {i}".encode() * 100 for i in wanted)
            while raw.count(b"HTTP/1.1 200") < 3 or not raw.endswith(
                    f"object {wanted[-1]}".encode()):
                data = sock.recv(65536)
                assert data, f"closed early: {raw[-200:]!r}"
                raw += data
            bodies = b"".join(part.split(b"\r\n\r\n", 1)[1]
                              for part in raw.split(b"HTTP/1.1 200")[1:])
            assert bodies == expect
            sock.close()
    finally:
        thread.stop()
