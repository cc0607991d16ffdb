"""Clients that stop reading do not make an edge hold their answers in memory.

Each client sends pipelined GETs of a large hit (one slice, answered by the fast lane from its
file by sendfile(2)) and reads nothing: the first answers fill its socket, the next ones must
wait without the edge reading them into memory for that connection. That holds for the
fast lane's answer that meets a full socket (its rest goes out by sendfile as the socket
drains), and for a request the fast lane leaves to the app (``Connection: close``). Measured from
outside: the edge's resident memory, in a process of its own, with many such clients at
once; then every client reads its answers, in order, each the object's exact bytes.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.nodes import NodeProcess, node_process
from tests.origins import TestOrigin, pattern
from tests.rawhttp import read_answers
from tests.servers import serve

OBJ = "/v/t1/slow-readers"
BODY = pattern(1024**2 - 4096, seed=7)  # one slice, too large for the memory tier
READERS = 24
PIPELINED = 4  # requests each reader sends at once: the first ones fill its socket
# What the readers may add to the edge's memory, with room for the sockets' own costs: one
# answer kept whole per reader would be ~24 MiB.
MAX_GROWTH = 8 * 1024**2


@contextlib.contextmanager
def _edge(tmp_path: Path) -> Iterator[NodeProcess]:
    origin = TestOrigin()
    origin.put(OBJ, BODY)
    with serve(origin) as osrv, node_process(tmp_path, "edge", osrv.url) as edge:
        yield edge


def _rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return int(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]))


def _stalled_reader(port: int, last: str) -> socket.socket:
    """A connection that asks for the object and reads nothing yet (a small receive
    window, so the edge's socket fills at once); ``last``: more fields of its last request."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    request = f"GET {OBJ} HTTP/1.1\r\nhost: edge\r\n"
    sock.sendall((f"{request}\r\n" * (PIPELINED - 1) + f"{request}{last}\r\n").encode())
    return sock


@pytest.mark.parametrize("last", ["", "connection: close\r\n"], ids=["keep-alive", "close"])
def test_stalled_readers_of_a_large_hit_cost_the_edge_no_copy_of_it(
        tmp_path: Path, last: str) -> None:
    with _edge(tmp_path) as edge:
        port = int(edge.url.rsplit(":", 1)[1])
        for _ in range(3):  # stored, then hits (the fast lane answers those)
            r = httpx.get(edge.url + OBJ, timeout=30)
            assert r.status_code == 200 and r.content == BODY
        assert r.headers["x-cache"].startswith("HIT")
        time.sleep(0.5)
        before = _rss(edge.pid)
        readers = [_stalled_reader(port, last) for _ in range(READERS)]
        try:
            time.sleep(1.5)  # every request read and answered as far as its socket lets
            growth = _rss(edge.pid) - before
            assert growth < MAX_GROWTH, (
                f"{READERS} stalled readers grew the edge by {growth / 1024**2:.1f} MiB")
            for sock in readers:
                sock.settimeout(30)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024**2)  # read at speed
                for answer in read_answers(sock, ["GET"] * PIPELINED):
                    assert answer.status == 200, answer.headers
                    assert answer.headers["x-cache"].startswith("HIT"), answer.headers
                    assert answer.body == BODY
                if last:
                    assert sock.recv(1) == b"", "the edge closes after the answer to close"
        finally:
            for sock in readers:
                sock.close()
