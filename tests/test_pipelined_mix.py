"""Pipelined mixes of requests, checked against a model of the objects.

Each round opens one connection to an edge process (two workers, in front of a shield
process and an origin) and sends at once a random mix of GET and HEAD, whole and ranged
(past the end too), of objects of every size around the slice boundaries, and of a missing
one. The answers must come back in order, framed exactly (Content-Length), each with the
status and the bytes a model of the objects gives: hits from the fast lane, misses and
ranges from the steps, 404 and 416 from the tiers, all on one connection. Half the rounds
read through a small receive window filled before reading starts.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator

import pytest

from tests.nodes import node_process
from tests.origins import TestOrigin, pattern
from tests.rawhttp import read_to_close, split_answers
from tests.servers import serve

MiB = 1024**2
SIZES = [0, 1, 100, 5000, 70_000, MiB - 1, MiB, MiB + 1, 2_500_000]
ROUNDS = 30

@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, bytes]]]:
    objects = {f"/v/t1/mix{i}": pattern(size, seed=i) for i, size in enumerate(SIZES)}
    origin = TestOrigin()
    for path, body in objects.items():
        origin.put(path, body)
    directory = tmp_path_factory.mktemp("pipelined")
    with serve(origin) as osrv, \
            node_process(directory / "shield", "shield", osrv.url, workers=2) as shield, \
            node_process(directory / "edge", "edge", shield.url, workers=2) as edge:
        yield edge.url, objects


def _expected(objects: dict[str, bytes], method: str, path: str,
              span: tuple[int, int] | None) -> tuple[int, bytes | None]:
    """RFC 9110 §14 and §15.5.17: status and body (None: not compared) of one request."""
    body = objects.get(path)
    if body is None:
        return 404, None
    if span is None or method == "HEAD":  # (Range is defined for GET only: §14.2)
        return 200, b"" if method == "HEAD" else body
    first, last = span
    if first >= len(body):
        return 416, None
    return 206, b"" if method == "HEAD" else body[first:min(last, len(body) - 1) + 1]


def _exchange(port: int, raw: bytes, stalled: bool) -> bytes:
    """Send ``raw`` at once and read every answer to the close; ``stalled``: through a
    small receive window, read only once the edge has filled it (its answers then wait for
    room, a fast-lane one by sendfile as the socket drains)."""
    with socket.socket() as sock:
        if stalled:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        sock.sendall(raw)
        if stalled:
            time.sleep(0.1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MiB)
        return read_to_close(sock)


@pytest.mark.parametrize("stalled", [False, True], ids=["reading", "stalled"])
def test_pipelined_mixes_are_answered_in_order_and_exactly(
        tiers: tuple[str, dict[str, bytes]], stalled: bool) -> None:
    url, objects = tiers
    port = int(url.rsplit(":", 1)[1])
    rng = random.Random(8 + stalled)
    paths = [*objects, "/v/t1/missing"]
    large = [p for p, body in objects.items() if MiB - 1 <= len(body) <= MiB]
    for _round in range(ROUNDS):
        requests: list[tuple[str, str, tuple[int, int] | None]] = []
        if stalled:  # one-slice file hits first: the fast lane's sendfile fills the socket
            requests += [("GET", rng.choice(large), None) for _ in range(4)]
        for _ in range(rng.randint(1, 12)):
            span = None
            if rng.random() < 0.4:
                first = rng.randint(0, 2_600_000)
                span = (first, first + rng.randint(0, 200_000))
            requests.append((rng.choice(["GET", "GET", "GET", "HEAD"]), rng.choice(paths), span))
        raw = b"".join(
            f"{method} {path} HTTP/1.1\r\nhost: edge\r\n".encode()
            + (f"range: bytes={span[0]}-{span[1]}\r\n".encode() if span else b"")
            + (b"connection: close\r\n" if n == len(requests) - 1 else b"") + b"\r\n"
            for n, (method, path, span) in enumerate(requests))
        answers = split_answers(_exchange(port, raw, stalled),
                                [method for method, _p, _s in requests])
        for (method, path, span), answer in zip(requests, answers, strict=True):
            status, fields, body = answer.status, answer.headers, answer.body
            want_status, want_body = _expected(objects, method, path, span)
            assert status == want_status, (method, path, span, fields)
            if want_body is not None:
                assert body == want_body, (method, path, span, len(body), len(want_body))
            if status == 206 and span is not None:
                first, last = span
                size = len(objects[path])
                assert fields["content-range"] == f"bytes {first}-{min(last, size - 1)}/{size}"
            if status == 416:
                assert fields["content-range"] == f"bytes */{len(objects[path])}"
