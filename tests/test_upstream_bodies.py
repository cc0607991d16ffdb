"""The upstream client's bodies framed by Content-Length, read past the parser, over real
sockets against a raw origin that writes each answer in the pieces a test gives: every byte
in order however the answer is cut, the connection kept for the next request only when the
answer ended exactly where its length said, and a body cut short an error, never a short
answer taken for whole."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from edgeproxy.cache.pool import Pool
from edgeproxy.errors import UpstreamUnreachable

BODY = bytes(range(256)) * 40  # 10,240 bytes


class RawOrigin:
    """Answers each request on a connection with the next script: a list of byte strings,
    each written on its own (with a pause, so each is its own read), then the connection is
    kept, or closed when the script ends with None."""

    def __init__(self, scripts: list[list[bytes | None]]) -> None:
        self.scripts = scripts
        self.accepted = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.scripts:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            while self.scripts:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                script = self.scripts.pop(0)
                for piece in script:
                    if piece is None:
                        return
                    conn.sendall(piece)
                    time.sleep(0.01)

    def close(self) -> None:
        self.scripts.clear()
        self.sock.close()


@pytest.fixture
def origin() -> Iterator[list[RawOrigin]]:
    made: list[RawOrigin] = []
    yield made
    for o in made:
        o.close()


def _head(length: int | str, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %s\r\n%s\r\n" % (str(length).encode(), extra)


async def _get(pool: Pool) -> bytes:
    resp = await pool.request("GET", b"/x", [(b"host", b"origin")])
    body = b"".join([chunk async for chunk in resp.aiter_body()])
    await resp.aclose()
    return body


def _run(origin: list[RawOrigin], scripts: list[list[bytes | None]], asks: int,
         ) -> tuple[list[bytes | BaseException], int]:
    raw = RawOrigin(scripts)
    origin.append(raw)

    async def main() -> list[bytes | BaseException]:
        pool = Pool("127.0.0.1", raw.port, ssl_context=None, server_hostname=None,
                    connect_timeout=5, timeout=5)
        out: list[bytes | BaseException] = []
        for _ in range(asks):
            try:
                out.append(await _get(pool))
            except Exception as exc:  # (what the caller would see)
                out.append(exc)
        return out

    return asyncio.run(main()), raw.accepted


@pytest.mark.parametrize("cut", [
    [_head(len(BODY)) + BODY],  # all in one read: the parser frames it
    [_head(len(BODY)), BODY],  # the head, then the body
    [_head(len(BODY)) + BODY[:10], BODY[10:11], BODY[11:5000], BODY[5000:]],
    [_head(len(BODY))[:7], _head(len(BODY))[7:] + BODY[:1], *[BODY[i:i + 999]
                                                             for i in range(1, len(BODY), 999)]],
], ids=["one-read", "head-then-body", "pieces", "head-in-pieces"])
def test_every_byte_in_order_and_the_connection_kept(origin: list[RawOrigin],
                                                     cut: list[bytes | None]) -> None:
    answers, accepted = _run(origin, [cut, [_head(len(BODY)), BODY]], asks=2)
    assert answers == [BODY, BODY]
    assert accepted == 1  # the second request went on the same connection


def test_an_empty_body_keeps_the_connection(origin: list[RawOrigin]) -> None:
    answers, accepted = _run(origin, [[_head(0)], [_head(3), b"abc"]], asks=2)
    assert answers == [b"", b"abc"] and accepted == 1


@pytest.mark.parametrize("cut", [
    [_head(len(BODY)), BODY + b"surplus"],  # past the end, read past the parser
    [_head(len(BODY)) + BODY + b"HTTP/1.1 200 OK\r\n"],  # past the end, in the parser's read
], ids=["own-read", "parser-read"])
def test_bytes_past_the_declared_length_end_the_connection(origin: list[RawOrigin],
                                                           cut: list[bytes | None]) -> None:
    answers, accepted = _run(origin, [cut, [_head(3), b"abc"]], asks=2)
    assert answers == [BODY, b"abc"]  # the answer stands, as its length says
    assert accepted == 2  # but its connection is not used again


@pytest.mark.parametrize("cut", [
    [_head(len(BODY)), BODY[:4000], None],
    [_head(len(BODY)) + BODY[:10], None],
], ids=["own-read", "parser-read"])
def test_a_body_cut_short_is_an_error(origin: list[RawOrigin], cut: list[bytes | None]) -> None:
    answers, _ = _run(origin, [cut], asks=1)
    assert isinstance(answers[0], UpstreamUnreachable), answers


def test_keep_alive_follows_the_answers_fields(origin: list[RawOrigin]) -> None:
    answers, accepted = _run(origin, [[_head(3, b"Connection: close\r\n"), b"abc"],
                                      [_head(3), b"xyz"]], asks=2)
    assert answers == [b"abc", b"xyz"] and accepted == 2
