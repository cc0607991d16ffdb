"""A client that pipelines requests and leaves mid-answer is a client gone, not a fault.

uvicorn marks only the last request it parsed as disconnected when the connection is lost;
with requests pipelined behind the one being answered, that one kept writing to the closed
transport, and each such client cost an ERROR "internal error" with a traceback in the
node's log (found from outside). Nothing wrong was served: the object is still stored.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.foreign import ForeignOrigin
from tests.nodes import NodeProcess, node_process
from tests.origins import pattern

BODY = pattern(300_000, seed=83)


@pytest.fixture
def edge(foreign: ForeignOrigin, tmp_path: Path) -> Iterator[NodeProcess]:
    with node_process(tmp_path / "edge", "edge", foreign.url) as node:  # (uvloop, as served)
        yield node


@pytest.mark.parametrize("half_close", [False, True], ids=["close", "shut-wr-then-close"])
def test_a_pipelining_client_that_leaves_mid_answer_is_no_internal_error(
        edge: NodeProcess, foreign: ForeignOrigin, half_close: bool) -> None:
    foreign.route("/drip", body=BODY, etag='"d1"', drip=0.15,
                  headers=[("Cache-Control", "public, max-age=600")])
    port = int(edge.url.rsplit(":", 1)[1])
    for attempt in range(3):
        target = f"/drip?v={attempt}"
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: test\r\n\r\n".encode() * 3)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1000)
        # the fill goes on without the client, and is stored whole
        deadline = time.monotonic() + 10
        while True:
            r = httpx.get(edge.url + target, timeout=10)
            assert r.content == BODY
            if r.headers["x-cache"].startswith("HIT"):
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
    log = edge.err.read_text()
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]
