"""A request's ``Upgrade`` is ignored (RFC 9110 §7.8), so what is pipelined behind it is
answered; a CONNECT's bytes are never parsed as HTTP, and its connection closes after its
answer.

uvicorn's httptools protocol dropped every byte that followed a request carrying
``Connection: Upgrade`` (llhttp stops there): a request pipelined behind it was never
answered, and the connection hung until the keep-alive timeout (found from outside, on edge,
shield and origin alike).
"""

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
from tests.nodes import process_stack
from tests.origins import TestOrigin, pattern
from tests.rawhttp import read_answers, read_to_close
from tests.servers import ServerThread, serve

BODY = pattern(5000, seed=71)
UPGRADE = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    origin = TestOrigin()
    origin.put("/v/t1/up", BODY)
    with serve(origin) as osrv:
        config = chain_config(tmp_path_factory.mktemp("upgrade") / "edge")
        node = ServerThread(create_app(config, "edge", upstream=osrv.url),
                            **uvicorn_http_options(HTTPLimitsConfig())).start()
        try:
            yield node.port
        finally:
            node.stop()


def _request(path: bytes, extra: bytes = b"", method: bytes = b"GET") -> bytes:
    return method + b" " + path + b" HTTP/1.1\r\nHost: test\r\n" + extra + b"\r\n"


@pytest.mark.parametrize("cold", [True, False], ids=["miss", "hit"])
def test_a_request_pipelined_behind_an_upgrade_is_answered(edge: int, cold: bool) -> None:
    path = b"/v/t1/up"
    if not cold:  # (the second run finds it stored: the fast lane answers)
        with socket.create_connection(("127.0.0.1", edge), timeout=10) as sock:
            sock.sendall(_request(path))
            assert read_answers(sock, ["GET"])[0].status == 200
    with socket.create_connection(("127.0.0.1", edge), timeout=10) as sock:
        sock.sendall(_request(path, UPGRADE + b"Range: bytes=0-1\r\n")
                     + _request(path, b"Range: bytes=2-5\r\n")
                     + _request(path, UPGRADE))
        answers = read_answers(sock, ["GET", "GET", "GET"])
        assert [a.status for a in answers] == [206, 206, 200]
        assert [a.body for a in answers] == [BODY[:2], BODY[2:6], BODY]
        # and the connection goes on: a request sent later is answered too
        sock.sendall(_request(path, b"Range: bytes=-3\r\n"))
        later = read_answers(sock, ["GET"])[0]
        assert (later.status, later.body) == (206, BODY[-3:])


@pytest.mark.parametrize(("target", "status"), [(b"example.com:443", 400), (b"/v/t1/up", 405)],
                         ids=["authority-form", "origin-form"])
def test_a_connect_is_refused_and_its_tunnel_bytes_never_parsed(
        edge: int, target: bytes, status: int) -> None:
    """An authority-form target cannot be parsed (400, as before); one in origin form is a
    method a cache does not relay (405). Either way one answer, then the close."""
    with socket.create_connection(("127.0.0.1", edge), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"CONNECT " + target + b" HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
                     + _request(b"/v/t1/up"))  # (tunnel bytes: not a request to answer)
        data = read_to_close(sock)
    assert time.monotonic() - started < 3, "the connection was left open after the answer"
    assert data.startswith(b"HTTP/1.1 %d " % status), data[:200]
    assert data.count(b"HTTP/1.1 ") == 1, data[:400]
    assert b'"error"' in data


def test_every_role_answers_what_follows_an_upgrade(tmp_path: Path) -> None:
    """The same on `edgeproxy serve` processes of every role (the origin too), where it was
    found: two requests asking for an upgrade, each with one pipelined behind it."""
    with process_stack(tmp_path) as nodes:
        for role, node in nodes.items():
            port = int(node.url.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall((_request(b"/healthz", UPGRADE) + _request(b"/healthz")) * 2)
                answers = read_answers(sock, ["GET"] * 4)
            assert [a.status for a in answers] == [200] * 4, role
            assert all(json.loads(a.body)["role"] == role for a in answers), role
