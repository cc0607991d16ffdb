"""The upstream seam of a cache node: a `BeReq` goes in, an `UpstreamResponse` comes out.

Everything a cache node sends upstream crosses `Transport.send` exactly once, so tests can
inject an upstream (any object with ``send``/``aclose``), and other backends (an S3 bucket, a
director over several parents) fit in without the pipeline knowing. Transports raise only the
`UpstreamError` kinds of `edgeproxy.errors`; the node maps them to statuses in one table.

`HTTPTransport` speaks HTTP/1.1 through httpcore's connection pool directly: httpx's request
and response models cost more than the rest of a miss, and a cache needs none of them.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httpcore

from ..errors import (
    ConfigError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)

RawHeaders = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class BeReq:
    """One request to the upstream (``bereq``).

    ``target`` is origin-form (path and query, as the upstream should see them); ``key`` is
    the cache key, which a director hashes to pick a parent. ``headers`` never carry ``Host``:
    the transport knows its upstream's authority.
    """

    method: str
    target: str
    headers: RawHeaders
    key: str
    body: AsyncIterable[bytes] | None = None


class UpstreamResponse(Protocol):
    """An upstream answer whose headers are in; the body is read once, then closed."""

    status: int
    headers: RawHeaders  # names lower-cased, in the order received

    def aiter_body(self) -> AsyncIterator[bytes]:
        """The body bytes (de-chunked), as they arrive."""
        ...

    async def aclose(self) -> None:
        """Release the connection (back to the pool if the body was read to the end)."""
        ...


class Transport(Protocol):
    """What a cache node needs from its upstream."""

    async def send(self, bereq: BeReq) -> UpstreamResponse:
        """Send ``bereq``; return once the response headers are in."""
        ...

    async def aclose(self) -> None:
        """Close pooled connections."""
        ...


class _PooledResponse:
    """An httpcore response as an `UpstreamResponse`."""

    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: httpcore.Response) -> None:
        self._response = response
        self.status = response.status
        self.headers = [(n.lower(), v) for n, v in response.headers]

    async def aiter_body(self) -> AsyncIterator[bytes]:
        stream = self._response.stream
        assert isinstance(stream, AsyncIterable)
        try:
            async for chunk in stream:
                yield chunk
        except Exception as exc:
            raise upstream_error(exc) from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class HTTPTransport:
    """HTTP/1.1 (or HTTPS) to one upstream base URL over a keep-alive connection pool."""

    def __init__(self, base_url: str, *, timeout: float, connect_timeout: float = 5.0,
                 ssl_context: ssl.SSLContext | None = None, max_connections: int = 512,
                 keepalive: int = 128) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"upstream {base_url!r} is not an http(s):// URL")
        self.base_url = base_url.rstrip("/")
        self._scheme = parts.scheme.encode()
        self._host = parts.hostname.encode()
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = self._port == (443 if parts.scheme == "https" else 80)
        self._authority = parts.netloc.encode() if not default_port else self._host
        self._prefix = parts.path.rstrip("/").encode()
        self._timeouts = {"connect": min(timeout, connect_timeout), "read": timeout,
                          "write": timeout, "pool": timeout}
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, max_connections=max_connections,
            max_keepalive_connections=keepalive, keepalive_expiry=60.0, retries=0)

    async def send(self, bereq: BeReq) -> UpstreamResponse:
        """Send one request; a stale pooled connection is retried once on a fresh one."""
        url = httpcore.URL(scheme=self._scheme, host=self._host, port=self._port,
                           target=self._prefix + bereq.target.encode("latin-1"))
        headers = [(b"host", self._authority), *bereq.headers]
        request = httpcore.Request(bereq.method.encode(), url, headers=headers,
                                   content=bereq.body, extensions={"timeout": self._timeouts})
        try:
            response = await self._pool.handle_async_request(request)
        except Exception as exc:
            raise upstream_error(exc) from exc
        return _PooledResponse(response)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._pool.aclose()


def upstream_error(exc: BaseException) -> UpstreamError:
    """Any failure of an upstream exchange as the `UpstreamError` kind it is."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, httpcore.TimeoutException):
        return UpstreamTimeout(f"upstream timed out ({type(exc).__name__})")
    if isinstance(exc, httpcore.RemoteProtocolError | httpcore.LocalProtocolError):
        return UpstreamProtocolError(f"upstream protocol error: {exc or type(exc).__name__}")
    if isinstance(exc, httpcore.NetworkError | OSError):
        return UpstreamUnreachable(f"upstream unreachable: {exc or type(exc).__name__}")
    if isinstance(exc, ssl.SSLError):
        return UpstreamUnreachable(f"upstream TLS failure: {exc}")
    return UpstreamProtocolError(f"upstream exchange failed: {exc!r}")


def transport_for(url: str, *, timeout: float,
                  ssl_context: ssl.SSLContext | None = None) -> Transport:
    """The transport for one configured upstream URL (``http://``, ``https://``)."""
    return HTTPTransport(url, timeout=timeout, ssl_context=ssl_context)
