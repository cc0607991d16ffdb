"""A client that shuts its sending side after its request still gets the answer.

`nc -N`, HTTP/1.0-era tools and some health checkers send a request and then half-close
(RFC 9112 §9.6 lets a client close once its last request is sent). nginx and Varnish answer
them; uvicorn closed the connection on the EOF, so a miss still waiting for its upstream was
dropped unanswered. Over real sockets, at an edge process in front of a slow origin: a miss,
a hit, a range, two pipelined requests, each followed by a half-close, get their exact
answers and then the close; a request whose body never came whole is closed at once. The
pure-Python h11 protocol behaves the same.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from functools import partial

import pytest

from edgeproxy.config import HTTPLimitsConfig
from edgeproxy.headtimeout import GuardedH11Protocol
from tests.nodes import NodeProcess, node_process
from tests.origins import TestOrigin, pattern
from tests.rawhttp import read_to_close, split_answers
from tests.servers import serve

SMALL = pattern(5000, seed=1)
LARGE = pattern(3 * 1024**2 + 11, seed=2)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, TestOrigin]]:
    origin = TestOrigin()
    origin.delay_headers = 0.3  # the EOF arrives while the miss waits for its upstream
    with serve(origin) as osrv, \
            node_process(tmp_path_factory.mktemp("half-close"), "edge", osrv.url) as node:
        yield node, origin


def _half_closed(url: str, request: bytes) -> bytes:
    """Send ``request``, shut the sending side, read until the server closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        return read_to_close(sock)


def _get(path: str, more: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: edge\r\n".encode() + more + b"\r\n"


def test_a_miss_still_waiting_for_its_upstream_is_answered(
        edge: tuple[NodeProcess, TestOrigin]) -> None:
    node, origin = edge
    origin.put("/v/t1/hc-miss", SMALL)
    [r] = split_answers(_half_closed(node.url, _get("/v/t1/hc-miss")), ["GET"])
    assert r.status == 200 and r.body == SMALL
    assert r.headers["x-cache"].startswith("MISS")
    assert r.headers["connection"] == "close"


def test_a_hit_and_a_range_are_answered(edge: tuple[NodeProcess, TestOrigin]) -> None:
    node, origin = edge
    origin.put("/v/t1/hc-large", LARGE)
    [r] = split_answers(_half_closed(node.url, _get("/v/t1/hc-large")), ["GET"])
    assert r.status == 200 and r.body == LARGE
    [r] = split_answers(_half_closed(node.url, _get("/v/t1/hc-large")), ["GET"])
    assert r.status == 200 and r.body == LARGE
    assert r.headers["x-cache"].startswith("HIT")
    first, last = 1024**2 - 5, 2 * 1024**2 + 5  # across two slice seams
    [r] = split_answers(_half_closed(
        node.url, _get("/v/t1/hc-large", f"range: bytes={first}-{last}\r\n".encode())), ["GET"])
    assert r.status == 206 and r.body == LARGE[first:last + 1]
    assert r.headers["content-range"] == f"bytes {first}-{last}/{len(LARGE)}"


def test_pipelined_requests_are_all_answered_in_order(
        edge: tuple[NodeProcess, TestOrigin]) -> None:
    node, origin = edge
    origin.put("/v/t1/hc-p1", SMALL)
    origin.put("/v/t1/hc-p2", SMALL[::-1])
    answers = split_answers(_half_closed(node.url, _get("/v/t1/hc-p1") + _get("/v/t1/hc-p2")),
                            ["GET", "GET"])
    assert [(r.status, r.body) for r in answers] == [(200, SMALL), (200, SMALL[::-1])]


@pytest.mark.parametrize("requests", [3, 5])
def test_a_fast_lane_answer_that_meets_a_full_socket_goes_out_whole_then_closes(
        edge: tuple[NodeProcess, TestOrigin], requests: int) -> None:
    """The fast lane sends a one-slice file hit by sendfile; what the socket does not take
    at once goes as it drains, and a half-close meanwhile still gets every answer."""
    node, origin = edge
    path, body = f"/v/t1/hc-full-{requests}", pattern(1024**2 - 4096, seed=requests)
    origin.put(path, body)
    for _ in range(3):  # stored, then hits the fast lane answers from the file
        [r] = split_answers(_half_closed(node.url, _get(path)), ["GET"])
        assert r.body == body
    assert r.headers["x-cache"].startswith("HIT")
    host, port = node.url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # its socket fills at once
        sock.settimeout(20)
        sock.connect((host, int(port)))
        sock.sendall(_get(path) * requests)
        sock.shutdown(socket.SHUT_WR)
        time.sleep(0.5)  # the edge has sent what the socket takes and waits for room
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024**2)
        answers = split_answers(read_to_close(sock), ["GET"] * requests)
    assert [(r.status, r.body) for r in answers] == [(200, body)] * requests
    assert all(r.headers["x-cache"].startswith("HIT") for r in answers)


def test_a_request_whose_body_never_came_whole_is_closed_at_once(
        edge: tuple[NodeProcess, TestOrigin]) -> None:
    node, _origin = edge
    started = time.monotonic()
    data = _half_closed(node.url, b"POST /hc/post HTTP/1.1\r\nhost: edge\r\n"
                                  b"content-length: 10\r\n\r\nabc")
    assert data == b""  # nothing can be answered: the body ended three bytes in
    assert time.monotonic() - started < 3


def test_the_h11_protocol_answers_a_half_closed_request_too() -> None:
    origin = TestOrigin()
    origin.delay_headers = 0.3
    origin.put("/v/t1/hc-h11", SMALL)
    with serve(origin, http=partial(GuardedH11Protocol, limits=HTTPLimitsConfig())) as srv:
        [r] = split_answers(_half_closed(srv.url, _get("/v/t1/hc-h11")), ["GET"])
    assert r.status == 200 and r.body == SMALL
