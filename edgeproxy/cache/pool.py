"""Keep-alive connections to one upstream host, and the responses read on them.

`Pool.request` sends one request on the most recently used idle connection (or a new one;
once more on a new one when a kept connection turns out closed before it answered) and
returns when the response's head is in; `Response` then reads its body and hands the
connection back only when the body was read to its end.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator

from ..errors import (
    UpstreamProtocolError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from .headrepair import transforming_coding
from .http11 import RawHeaders, UpstreamConnection
from .waits import within


class Response:
    """An upstream response whose headers are in (the `UpstreamResponse` of the cache)."""

    __slots__ = ("_conn", "_done", "_pool", "_timeout", "headers", "interims", "status")

    def __init__(self, conn: UpstreamConnection, pool: Pool, timeout: float) -> None:
        self._conn = conn
        self._pool = pool
        self._timeout = timeout
        self._done = False
        self.status = conn.status
        self.headers = conn.headers
        self.interims = conn.interims

    async def aiter_body(self) -> AsyncIterator[bytes]:
        """The de-chunked body, as it arrives."""
        while True:
            chunk = await self._conn.next_chunk(self._timeout)
            if chunk is None:
                return
            yield chunk

    async def aclose(self) -> None:
        """Hand the connection back if the body was read to its end, else close it."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        if conn.reusable() and not conn.chunks:
            self._pool.release(conn)
        elif conn.transport is not None:
            conn.transport.close()


class Pool:
    """Keep-alive connections to one host, most recently used first."""

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None,
                 server_hostname: str | None, connect_timeout: float, timeout: float,
                 keepalive: int = 128, expiry: float = 60.0) -> None:
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.keepalive = keepalive
        self.expiry = expiry
        self._idle: list[UpstreamConnection] = []

    def release(self, conn: UpstreamConnection) -> None:
        """Keep a connection for the next request."""
        if len(self._idle) >= self.keepalive:
            if conn.transport is not None:
                conn.transport.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def _take_idle(self) -> UpstreamConnection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable() and now - conn.idle_since < self.expiry:
                return conn
            if conn.transport is not None:
                conn.transport.close()
        return None

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            _transport, conn = await within(loop.create_connection(
                UpstreamConnection, self.host, self.port, ssl=self.ssl_context,
                server_hostname=self.server_hostname if self.ssl_context else None),
                self.connect_timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to upstream timed out after "
                                  f"{self.connect_timeout:.0f}s") from None
        except ssl.SSLError as exc:
            raise UpstreamRefused(f"upstream TLS failure: {exc.reason or exc}") from None
        except OSError as exc:
            raise UpstreamRefused(f"upstream unreachable: {exc.strerror or exc}") from None
        return conn

    async def request(self, method: str, target: bytes, headers: RawHeaders,
                      body: AsyncIterable[bytes] | None = None) -> Response:
        """Send one request; return when its response headers are in.

        A reused connection the upstream closed meanwhile is retried once on a new one, for
        requests without a body (those could not be replayed).
        """
        for attempt in (0, 1):
            conn = self._take_idle() if attempt == 0 else None
            fresh = conn is None
            if conn is None:
                conn = await self._connect()
            conn._reset()
            conn.head = method == "HEAD"
            try:
                await self._send(conn, method, target, headers, body)
                await within(conn.headers_done, self.timeout)
            except TimeoutError:
                if conn.transport is not None:
                    conn.transport.close()
                raise UpstreamTimeout(f"no answer from upstream in {self.timeout:.0f}s") \
                    from None
            except UpstreamUnreachable:
                if fresh or body is not None:
                    raise
                continue  # a stale keep-alive connection: once more, on a new one
            except BaseException:
                # the request went out in part (its body failed, the task was cancelled):
                # closed, never kept, so the upstream takes nothing after it as its rest
                if conn.transport is not None:
                    conn.transport.close()
                raise
            if conn.error is not None:
                # the answer broke in the reads that brought its head (a chunk size past
                # 64 bits, a close mid-body): nothing of it has gone on, so it is refused
                # whole, not begun as a 200 and cut
                if conn.transport is not None:
                    conn.transport.close()
                raise conn.error
            coding = transforming_coding(conn.headers)  # (never passed on as the content)
            if coding is not None:
                if conn.transport is not None:
                    conn.transport.close()
                raise UpstreamProtocolError(f"upstream used the transfer coding {coding!r}")
            return Response(conn, self, self.timeout)
        raise AssertionError("unreachable")

    async def _send(self, conn: UpstreamConnection, method: str, target: bytes, headers: RawHeaders,
                    body: AsyncIterable[bytes] | None) -> None:
        transport = conn.transport
        if transport is None or conn.lost:
            raise UpstreamUnreachable("upstream connection is closed")
        chunked = body is not None and not any(n == b"content-length" for n, _ in headers)
        lines = [method.encode(), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in headers:
            lines += [name, b": ", value, b"\r\n"]
        if chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        transport.write(b"".join(lines))
        if body is None:
            return
        async for piece in body:
            if conn.lost:
                raise UpstreamUnreachable("upstream closed the connection during the request")
            if chunked and piece:
                transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            elif piece:
                transport.write(piece)
        if chunked:
            transport.write(b"0\r\n\r\n")

    async def aclose(self) -> None:
        """Close every idle connection."""
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
