"""A busy server loop lets a burst of connections in at once (`edgeproxy.accept`): uvloop's
own server accepts one per turn of the loop, so a worker busy sending let a stampede's
clients wait in the listen queue for seconds."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import pytest

from edgeproxy import accept

CLIENTS = 40
TURN = 0.02  # seconds each turn of the loop is kept busy


async def _burst(loop: asyncio.AbstractEventLoop) -> list[float]:
    """When each of a burst of connections was made, on a loop busy ``TURN`` per turn."""
    made: list[float] = []

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append(time.perf_counter())

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = await loop.create_server(Protocol, sock=sock, backlog=256)
    port = sock.getsockname()[1]
    busy = True

    def burn() -> None:  # a turn of sending work
        end = time.perf_counter() + TURN
        while time.perf_counter() < end:
            pass
        if busy:
            loop.call_soon(burn)

    loop.call_soon(burn)
    # the clients come from another process: this one's GIL is held by the busy loop
    client = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys, time\n"
        f"s = [socket.create_connection(('127.0.0.1', {port})) for _ in range({CLIENTS})]\n"
        "sys.stdout.write('up\\n'); sys.stdout.flush(); time.sleep(5)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while len(made) < CLIENTS and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        busy = False
        client.kill()
        client.wait()
        server.close()
        await server.wait_closed()
    return made


def test_a_busy_loop_lets_a_burst_of_connections_in_within_a_few_turns() -> None:
    loop = accept.new_loop()
    try:
        made = loop.run_until_complete(_burst(loop))
    finally:
        loop.close()
    assert len(made) == CLIENTS
    turns = (max(made) - min(made)) / TURN
    # one turn per BATCH connections (and one to set them up): not one turn per connection
    assert turns <= CLIENTS / accept.BATCH + 3


def test_the_server_stops_accepting_when_closed() -> None:
    async def run(loop: asyncio.AbstractEventLoop) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = await loop.create_server(asyncio.Protocol, sock=sock, backlog=16)
        port = sock.getsockname()[1]
        assert server.is_serving() and server.sockets == (sock,)
        server.close()
        await server.wait_closed()
        assert not server.is_serving() and not server.sockets
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()

    loop = accept.new_loop()
    try:
        loop.run_until_complete(run(loop))
    finally:
        loop.close()
