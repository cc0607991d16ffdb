"""Keep-alive and a client that reads a large answer slowly: the idle bound between requests
counts from when the client stops taking the answer's bytes, not from when the server handed
the last of them to the kernel (which holds megabytes of them): the next request on the
connection is answered. A client that takes nothing is still let go."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeproxy.cache import create_app
from edgeproxy.guard import uvicorn_http_options
from tests.origins import TestOrigin, pattern
from tests.servers import serve
from tests.test_cache_node import make_config

SIZE = 4 * 1024 * 1024
KEEP_ALIVE = 1.0


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[str]:
    origin = TestOrigin()
    origin.put("/g/big", pattern(SIZE), headers={"cache-control": "max-age=600"})
    config = make_config(tmp_path)
    with serve(origin) as osrv, \
            serve(create_app(config, "edge", upstream=osrv.url), timeout_keep_alive=KEEP_ALIVE,
                  **uvicorn_http_options(config.http_limits)) as srv:
        yield srv.url


def _get(sock: socket.socket) -> None:
    sock.sendall(b"GET /g/big HTTP/1.1\r\nHost: t\r\n\r\n")


def _read_answer(sock: socket.socket, pace: float) -> bytes:
    """One answer (its head and ``SIZE`` bytes of body), taken 64 KiB per ``pace`` seconds."""
    data = b""
    while b"\r\n\r\n" not in data:
        got = sock.recv(65536)
        assert got, "the connection closed without an answer"
        data += got
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    while len(body) < SIZE:
        chunk = sock.recv(min(65536, SIZE - len(body)))
        assert chunk, f"closed after {len(body)} bytes"
        body += chunk
        time.sleep(pace)
    return body


def test_a_slow_reader_s_next_request_is_answered(edge: str) -> None:
    host, port = edge.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as warm:
        _get(warm)
        assert _read_answer(warm, 0) == pattern(SIZE)  # stored: the next is a hit at once
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        started = time.monotonic()
        _get(sock)
        assert _read_answer(sock, 0.02) == pattern(SIZE)  # ~1.3 s of reading
        assert time.monotonic() - started > KEEP_ALIVE * 1.2  # (slower than the bound)
        _get(sock)  # closed by the idle bound before: no answer at all
        assert _read_answer(sock, 0) == pattern(SIZE)


def test_a_client_that_takes_nothing_is_let_go(edge: str) -> None:
    host, port = edge.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        _get(sock)
        time.sleep(KEEP_ALIVE * 4)  # the whole answer waits in buffers, nothing is taken
        assert _read_answer(sock, 0) == pattern(SIZE)
        sock.settimeout(2)
        assert sock.recv(1) == b""  # closed after the answer: not held open forever
