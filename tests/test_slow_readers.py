"""Clients that stop reading do not make an edge hold their answers in memory.

Each client sends three pipelined GETs of a large hit (one slice, answered by the fast lane
from its file by sendfile(2)) and reads nothing: the first answer fills its socket, the next
ones must wait without the edge reading them into memory for that connection. Measured from
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

from tests.nodes import NodeProcess, node_process
from tests.origins import TestOrigin, pattern
from tests.rawhttp import read_answers
from tests.servers import serve

OBJ = "/v/t1/slow-readers"
BODY = pattern(1024**2 - 4096, seed=7)  # one slice, too large for the memory tier
READERS = 48
PIPELINED = 3  # requests each reader sends at once: the first fills its socket
# What the readers may add to the edge's memory, with room for the sockets' own costs: 48
# answers kept whole would be ~48 MiB.
MAX_GROWTH = 16 * 1024**2


@contextlib.contextmanager
def _edge(tmp_path: Path) -> Iterator[NodeProcess]:
    origin = TestOrigin()
    origin.put(OBJ, BODY)
    with serve(origin) as osrv, node_process(tmp_path, "edge", osrv.url) as edge:
        yield edge


def _rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return int(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]))


def _stalled_reader(port: int) -> socket.socket:
    """A connection that asks for the object and reads nothing yet (a small receive
    window, so the edge's socket fills at once)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {OBJ} HTTP/1.1\r\nhost: edge\r\n\r\n".encode() * PIPELINED)
    return sock


def test_stalled_readers_of_a_large_hit_cost_the_edge_no_copy_of_it(tmp_path: Path) -> None:
    with _edge(tmp_path) as edge:
        port = int(edge.url.rsplit(":", 1)[1])
        for _ in range(3):  # stored, then hits (the fast lane answers those)
            r = httpx.get(edge.url + OBJ, timeout=30)
            assert r.status_code == 200 and r.content == BODY
        assert r.headers["x-cache"].startswith("HIT")
        time.sleep(0.5)
        before = _rss(edge.pid)
        readers = [_stalled_reader(port) for _ in range(READERS)]
        try:
            time.sleep(1.5)  # every request read and answered as far as its socket lets
            growth = _rss(edge.pid) - before
            assert growth < MAX_GROWTH, (
                f"{READERS} stalled readers grew the edge by {growth / 1024**2:.1f} MiB")
            for sock in readers:
                sock.settimeout(30)
                for answer in read_answers(sock, ["GET"] * PIPELINED):
                    assert answer.status == 200, answer.headers
                    assert answer.headers["x-cache"].startswith("HIT"), answer.headers
                    assert answer.body == BODY
        finally:
            for sock in readers:
                sock.close()
