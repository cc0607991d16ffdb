"""The upstream client mends the heads a proxy may mend and refuses the rest (RFC 9112):
whitespace between a field name and its colon is removed (§5.1), wherever the head's reads
split; Content-Length fields that all say the same are one (§6.3); heads past 64 KiB, lengths
that differ, transfer codings other than chunked and answers broken otherwise are refused.
Over a real socket, from a raw server that writes what it is told, in the pieces it is told."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from edgeproxy.cache.headrepair import HEAD_MAX
from edgeproxy.cache.pool import Pool
from edgeproxy.errors import UpstreamProtocolError

Pieces = list[bytes]


async def _raw_server(pieces: Callable[[], Pieces]) -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
            if not head:
                break
            sent = pieces()
            for piece in sent:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.02)  # each piece in a read of its own
            if b"connection: close" in b"".join(sent).lower():
                break  # a close-delimited body ends here
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _get(port: int) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    pool = Pool("127.0.0.1", port, ssl_context=None, server_hostname=None,
                connect_timeout=5, timeout=5)
    try:
        resp = await pool.request("GET", b"/x", [(b"host", b"o")])
        body = b"".join([chunk async for chunk in resp.aiter_body()])
        await resp.aclose()
        return resp.status, resp.headers, body
    finally:
        await pool.aclose()


async def _run(pieces: Pieces) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    server, port = await _raw_server(lambda: pieces)
    async with server:
        return await _get(port)


@pytest.mark.parametrize("split", [None, 20, 30, 43])
async def test_whitespace_before_a_colon_is_removed_however_the_head_is_split(
        split: int | None) -> None:
    head = (b"HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Type\t \t: text/plain\r\n"
            b"Content-Length : 5\r\n\r\n")
    raw = head + b"hello"
    pieces = [raw] if split is None else [raw[:split], raw[split:]]
    status, headers, body = await _run(pieces)
    assert (status, body) == (200, b"hello")
    assert (b"x-a", b"1") in headers and (b"content-type", b"text/plain") in headers
    assert (b"content-length", b"5") in headers


async def test_a_repaired_head_after_an_interim_answer_and_a_chunked_body() -> None:
    raw = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 203 Odd\r\nX-B  : 2\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    status, headers, body = await _run([raw[:40], raw[40:]])
    assert (status, body) == (203, b"abcde") and (b"x-b", b"2") in headers


async def test_an_answer_broken_otherwise_is_still_refused() -> None:
    with pytest.raises(UpstreamProtocolError, match="invalid HTTP"):
        await _run([b"HTTP/1.1 200 OK\r\nX A: 1\r\nContent-Length: 0\r\n\r\n"])
    with pytest.raises(UpstreamProtocolError, match="invalid HTTP"):
        await _run([b"HTTP/1.1 200 OK\r\nX-A : 1\r\n" + b"X-Long: " + b"v" * HEAD_MAX])


async def test_a_connection_reused_after_a_repaired_answer_parses_the_next_one() -> None:
    answers = iter([
        [b"HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 2\r\n\r\nok"],
        [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes"],
    ])
    server, port = await _raw_server(lambda: next(answers))
    async with server:
        pool = Pool("127.0.0.1", port, ssl_context=None, server_hostname=None,
                    connect_timeout=5, timeout=5)
        try:
            bodies = []
            for _ in range(2):
                resp = await pool.request("GET", b"/x", [(b"host", b"o")])
                bodies.append(b"".join([c async for c in resp.aiter_body()]))
                await resp.aclose()
            assert bodies == [b"ok", b"yes"]
            assert len(pool._idle) == 1  # the same connection carried both
        finally:
            await pool.aclose()


@pytest.mark.parametrize("lengths", [
    [b"Content-Length: 5", b"Content-Length: 5"],
    [b"Content-Length: 5, 5"],
    [b"content-length:5", b"CONTENT-LENGTH : 5 , 5"],
])
async def test_content_lengths_that_all_say_the_same_are_one(lengths: list[bytes]) -> None:
    """RFC 9112 §6.3 item 5: the answer is read with that single value."""
    raw = b"HTTP/1.1 200 OK\r\n" + b"\r\n".join(lengths) + b"\r\nX-C: 3\r\n\r\nhelloEXTRA"
    status, headers, body = await _run([raw])
    assert (status, body) == (200, b"hello")
    assert [v for n, v in headers if n == b"content-length"] == [b"5"]
    assert (b"x-c", b"3") in headers


@pytest.mark.parametrize("head", [
    b"Content-Length: 5\r\nContent-Length: 6",  # values that differ
    b"Content-Length: 5, x",
    b"Content-Length: 5\r\nContent-Length: 5\r\nTransfer-Encoding: chunked",  # smuggling-shaped
])
async def test_content_lengths_that_disagree_are_refused(head: bytes) -> None:
    with pytest.raises(UpstreamProtocolError, match="invalid HTTP"):
        await _run([b"HTTP/1.1 200 OK\r\n" + head + b"\r\n\r\nhello"])


async def test_a_head_past_the_bound_is_refused_not_buffered() -> None:
    with pytest.raises(UpstreamProtocolError, match="exceeds 64 KiB"):
        await _run([b"HTTP/1.1 200 OK\r\nX-Huge: " + b"v" * 200_000 + b"\r\n\r\n"])
    endless = [b"HTTP/1.1 100 Continue\r\nX-Pad: " + b"p" * 1000 + b"\r\n\r\n"] * 100
    with pytest.raises(UpstreamProtocolError, match="exceeds 64 KiB"):
        await _run(endless)
    # a head just under the bound, with a large body in the same reads, is fine
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 60_000 + b"\r\nContent-Length: 300000\r\n\r\n"
    status, _headers, body = await _run([big + b"z" * 300_000])
    assert (status, len(body)) == (200, 300_000)


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"gzip", b"chunked, br", b"X-Compress"])
async def test_a_transfer_coding_other_than_chunked_is_refused(coding: bytes) -> None:
    """Read as it comes, a gzip transfer-coded body would be passed on as the content."""
    body = b"5\r\nhello\r\n0\r\n\r\n" if coding.endswith(b"chunked") else b"hello"
    with pytest.raises(UpstreamProtocolError, match="transfer coding"):
        await _run([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\n" + body])


async def test_chunked_and_identity_codings_are_read() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity, Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    status, _headers, body = await _run([raw])
    assert (status, body) == (200, b"hello")


async def test_a_coding_no_registry_knows_is_read_as_it_comes() -> None:
    """(cache-tests ``headers-store-Transfer-Encoding`` sends one over a plain body)"""
    status, _headers, body = await _run([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xyz-value\r\n"
                                         b"Connection: close\r\n\r\nhello"])
    assert (status, body) == (200, b"hello")


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 1000 Whatever\r\nContent-Length: 5\r\n\r\nhello",  # four digits: no status
    b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nhello",  # a body after an interim
])
async def test_an_answer_that_never_becomes_a_head_is_refused_at_once(answer: bytes) -> None:
    """Found from outside: both were taken for an interim answer and a final head still to
    come, on a connection the origin keeps open: the request waited for the whole upstream
    timeout (a 504 after 30 s) instead of a 502 now."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamProtocolError, match="invalid HTTP"):
        await _run([answer])
    assert loop.time() - started < 2  # (the pool's timeout is 5 s)
