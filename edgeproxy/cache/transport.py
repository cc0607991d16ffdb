"""The upstream seam of a cache node: a `BeReq` goes in, an `UpstreamResponse` comes out.

Everything a cache node sends upstream crosses `Transport.send` exactly once, so tests can
inject an upstream (any object with ``send``/``aclose``), and other backends (an S3 bucket, a
director over several parents) fit in without the pipeline knowing. Transports raise only the
`UpstreamError` kinds of `edgeproxy.errors`; the node maps them to statuses in one table.

`HTTPTransport` speaks HTTP/1.1 through the lean pooled client of `http11`.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from ..config import S3Config
from ..errors import (
    ConfigError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from .pool import Pool

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


class HTTPTransport:
    """HTTP/1.1 (or HTTPS) to one upstream base URL over a keep-alive connection pool."""

    def __init__(self, base_url: str, *, timeout: float, connect_timeout: float = 5.0,
                 ssl_context: ssl.SSLContext | None = None, keepalive: int = 128) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"upstream {base_url!r} is not an http(s):// URL")
        self.base_url = base_url.rstrip("/")
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        if https and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self._authority = (parts.hostname if port == (443 if https else 80)
                           else parts.netloc).encode()
        self._prefix = parts.path.rstrip("/").encode()
        self._pool = Pool(parts.hostname, port, ssl_context=ssl_context,
                          server_hostname=parts.hostname, timeout=timeout,
                          connect_timeout=min(timeout, connect_timeout), keepalive=keepalive)

    async def send(self, bereq: BeReq) -> UpstreamResponse:
        """Send one request; return once the response headers are in."""
        headers = [(b"host", self._authority), *bereq.headers]
        return await self._pool.request(bereq.method, self._prefix + bereq.target.encode(
            "latin-1"), headers, bereq.body)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._pool.aclose()


def upstream_error(exc: BaseException) -> UpstreamError:
    """Any failure of an upstream exchange as the `UpstreamError` kind it is."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("upstream timed out")
    if isinstance(exc, ssl.SSLError):
        return UpstreamUnreachable(f"upstream TLS failure: {exc}")
    if isinstance(exc, OSError):
        return UpstreamUnreachable(f"upstream unreachable: {exc or type(exc).__name__}")
    return UpstreamProtocolError(f"upstream exchange failed: {exc!r}")


def transport_for(url: str, *, timeout: float, ssl_context: ssl.SSLContext | None = None,
                  s3: S3Config | None = None) -> Transport:
    """The transport for one configured upstream URL (``http://``, ``https://``, or
    ``s3://bucket/prefix`` with the config's ``s3`` settings)."""
    if url.startswith("s3://"):
        from .s3transport import s3_transport  # botocore is loaded only for a bucket upstream

        return s3_transport(url, s3 or S3Config(), timeout=timeout, ssl_context=ssl_context)
    return HTTPTransport(url, timeout=timeout, ssl_context=ssl_context)
