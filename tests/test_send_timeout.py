"""A client that stops reading an answer is cut off after ``http_limits.send_timeout``.

Such a client used to hold its connection, its descriptors and the bytes buffered for it for
as long as it stayed connected: the kernel keeps a connection whose receiver has a zero
window alive indefinitely, and the edge waited for room in the socket without a bound (as
nginx would without its ``send_timeout``). Over real sockets: an edge in front of a
raw-socket origin; the stalled client has a small receive buffer and reads nothing. Both
ways an answer's bytes wait for room are covered: the zero-copy send (httptools, the
server protocol of a node) and the transport's own buffer (h11, which has no zero-copy).
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgeproxy.cache import create_app
from edgeproxy.guard import h11_http_options, uvicorn_http_options
from tests.chain import chain_config
from tests.foreign import ForeignOrigin
from tests.origins import pattern
from tests.servers import ServerThread

BODY = pattern(8 * 1024 * 1024, seed=7)
TARGET = "/stall/blob"
SEND_TIMEOUT = 1.0


@pytest.fixture(params=["httptools", "h11"])
def edge(request: pytest.FixtureRequest, foreign: ForeignOrigin,
         tmp_path: Path) -> Iterator[str]:
    foreign.route(TARGET, body=BODY, headers=[("Cache-Control", "public, max-age=3600")])
    config = chain_config(tmp_path, slice_size=1024 * 1024)
    limits = dataclasses.replace(config.http_limits, send_timeout=SEND_TIMEOUT)
    options = uvicorn_http_options(limits) if request.param == "httptools" \
        else h11_http_options(limits)
    thread = ServerThread(create_app(config.replace(http_limits=limits), "edge",
                                     upstream=foreign.url), **options).start()
    try:
        yield thread.url
    finally:
        thread.stop()


def _stalled_get(url: str, stall: float) -> tuple[int, float]:
    """GET without reading for ``stall`` seconds, then read to the end: the bytes received
    and the seconds the reading took."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect((host, int(port)))
    try:
        sock.sendall(f"GET {TARGET} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        time.sleep(stall)
        sock.settimeout(10)
        received, started = 0, time.monotonic()
        while True:
            try:
                data = sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not data:
                break
            received += len(data)
            if received > len(BODY):  # the whole answer, head included: it was not cut off
                break
        return received, time.monotonic() - started
    finally:
        sock.close()


@pytest.mark.parametrize("warm", [False, True], ids=["miss", "hit"])
def test_a_client_that_stops_reading_is_cut_off(edge: str, warm: bool) -> None:
    if warm:
        assert httpx.get(edge + TARGET, timeout=30).content == BODY
    received, reading = _stalled_get(edge, stall=SEND_TIMEOUT + 2)
    assert received < len(BODY), "the stalled client got the whole answer: not cut off"
    assert reading < 5
    # the edge still answers, whole, a client that reads
    answer = httpx.get(edge + TARGET, timeout=30)
    assert answer.status_code == 200 and answer.content == BODY


def test_a_client_that_reads_slowly_but_steadily_gets_everything(edge: str) -> None:
    """The bound is on a stall, not on the answer's duration."""
    host, port = edge.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(f"GET {TARGET} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                     .encode())
        sock.settimeout(10)
        chunks = []
        started = time.monotonic()
        while True:
            data = sock.recv(16 * 1024)
            if not data:
                break
            chunks.append(data)
            time.sleep(0.005)  # much slower than the edge, never stalled for long
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == BODY
    assert time.monotonic() - started > SEND_TIMEOUT  # it did take longer than the bound
