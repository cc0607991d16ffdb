"""A request head refused by the server protocol (not HTTP, a target or fields too large)
while answers to requests before it on the connection are under way is answered after
them, in order (RFC 9112 §9.3.2), then the connection closes.

llhttp's 400 was written at once: into the middle of the body of the answer going out, or as
the answer to a valid request before it (a HEAD, a conditional GET), which then had none; a
431 or 414 closed the connection at once, cutting the answer under way (found from
outside)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeproxy.cache import create_app
from edgeproxy.config import HTTPLimitsConfig
from edgeproxy.guard import uvicorn_http_options
from tests.chain import chain_config
from tests.foreign import ForeignOrigin
from tests.origins import pattern
from tests.rawhttp import read_answers, split_answers
from tests.servers import ServerThread

SLOW = pattern(5 * 65536, seed=91)
SMALL = pattern(1000, seed=92)
CACHEABLE = ("Cache-Control", "public, max-age=600")
# (a version the node does not speak is the guard's 505, an answer in order as any other)
REFUSED = {
    "not_http": (b"GET /x HTTP/1.1\r\nHost: t\r\nBad Header Line\r\n\r\n", 400, "bad_request"),
    "fields": (b"GET /x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431,
               "headers_too_large"),
    "target": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, "uri_too_long"),
}


@pytest.fixture
def edge(foreign: ForeignOrigin, tmp_path: Path) -> Iterator[int]:
    foreign.route("/v/t1/slow", body=SLOW, etag='"s"', drip=0.2, headers=[CACHEABLE])
    foreign.route("/v/t1/small", body=SMALL, etag='"m"', headers=[CACHEABLE])
    node = ServerThread(create_app(chain_config(tmp_path / "edge"), "edge", upstream=foreign.url),
                        **uvicorn_http_options(HTTPLimitsConfig())).start()
    try:
        yield node.port
    finally:
        node.stop()


def _request(method: bytes, path: bytes, extra: bytes = b"") -> bytes:
    return method + b" " + path + b" HTTP/1.1\r\nHost: test\r\n" + extra + b"\r\n"


def _read_to_close(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(1 << 20):
        data += chunk
    return data


def _check_refusal(answer: object, status: int, error: str) -> None:
    assert answer.status == status, answer  # type: ignore[attr-defined]
    assert json.loads(answer.body)["error"] == error  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", REFUSED)
def test_a_refused_head_behind_an_answer_under_way_waits_for_it(edge: int, kind: str) -> None:
    bad, status, error = REFUSED[kind]
    with socket.create_connection(("127.0.0.1", edge), timeout=20) as sock:
        sock.sendall(_request(b"GET", b"/v/t1/slow"))  # a miss, its body ~1 s long
        time.sleep(0.3)
        sock.sendall(bad)
        answers = split_answers(_read_to_close(sock), ["GET", "GET"])
    assert answers[0].status == 200 and answers[0].body == SLOW
    _check_refusal(answers[1], status, error)


@pytest.mark.parametrize("kind", REFUSED)
@pytest.mark.parametrize("first", [b"HEAD", b"GET"])
def test_a_refused_head_in_the_chunk_of_a_valid_request_goes_after_its_answer(
        edge: int, kind: str, first: bytes) -> None:
    bad, status, error = REFUSED[kind]
    with socket.create_connection(("127.0.0.1", edge), timeout=20) as sock:
        sock.sendall(_request(b"GET", b"/v/t1/small"))
        assert read_answers(sock, ["GET"])[0].body == SMALL  # (stored now)
    # a HEAD, and a conditional GET, are answered by the app, not the fast lane
    extra = b'If-None-Match: "other"\r\n' if first == b"GET" else b""
    with socket.create_connection(("127.0.0.1", edge), timeout=20) as sock:
        sock.sendall(_request(first, b"/v/t1/small", extra) + bad)
        answers = split_answers(_read_to_close(sock), [first.decode(), "GET"])
    assert answers[0].status == 200
    assert answers[0].body == (SMALL if first == b"GET" else b"")
    _check_refusal(answers[1], status, error)
