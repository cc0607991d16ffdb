"""The request guard: limits on the request head and a checked target, before any role's app.

`RequestGuard` wraps the ASGI app of every role (origin, shield, edge). It answers, with a JSON
body ``{"error": ..., "message": ...}`` and without calling the app:

- 431 when the request has more header fields than ``max_header_count`` or their bytes exceed
  ``max_header_bytes`` (RFC 6585 §5);
- 414 when the target (path and query) is longer than ``max_target_length`` (RFC 9110 §15.5.15);
- 400 when the target has no canonical form (`edgeproxy.target.canonical_path`): bad
  percent-encoding, an encoded ``/``, NUL, CR or LF, a target that is not a path.

Otherwise the app sees the canonical target in ``scope["raw_path"]`` (and its decoded form in
``scope["path"]``), so every role routes, classifies and checks one spelling of each path:
``/v/./t1/x`` and ``/v/%74%31/x`` are ``/v/t1/x`` from here on.

The ASGI server has buffered the head before the app sees it, so the server must bound it too:
`uvicorn_http_options` picks the protocol that enforces the same limits while reading
(`edgeproxy.protocol`), or, with the pure-Python h11 parser, a receive-buffer cap.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import quote, unquote

from .config import HTTPLimitsConfig
from .errors import HTTPError
from .target import canonical_path

Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

# Bytes a header field takes on the wire beyond its name and value: ": " and CRLF.
FIELD_OVERHEAD = 4
# Room for the request line's method, version and the head's final CRLF in the server-side cap.
HEAD_SLACK = 8 * 1024
# A request that already crossed proxies (it carries Via) may hold their hop fields too: each
# tier forwards what its own limits admitted plus a few fields of its own, and a request one
# tier accepted must not be refused by the next one up.
PROXIED_FIELDS = 16
PROXIED_BYTES = 2 * 1024


def proxied_limits(limits: HTTPLimitsConfig) -> HTTPLimitsConfig:
    """The limits for a request that came through other proxies (see `PROXIED_FIELDS`)."""
    return dataclasses.replace(limits, max_header_count=limits.max_header_count + PROXIED_FIELDS,
                               max_header_bytes=limits.max_header_bytes + PROXIED_BYTES)


def header_bytes(headers: list[tuple[bytes, bytes]]) -> int:
    """The size of header fields as they were on the wire (``name: value\\r\\n`` each)."""
    return sum(len(name) + len(value) for name, value in headers) + FIELD_OVERHEAD * len(headers)


def check_head(limits: HTTPLimitsConfig, headers: list[tuple[bytes, bytes]], target_length: int,
               ) -> HTTPError | None:  # fmt: skip
    """The error a request head breaking ``limits`` gets, else None."""
    if any(name == b"via" for name, _ in headers):
        limits = proxied_limits(limits)
    if target_length > limits.max_target_length:
        return HTTPError(414, "uri_too_long", f"the request target is longer than "
                         f"{limits.max_target_length} bytes", max_length=limits.max_target_length)
    if len(headers) > limits.max_header_count:
        return HTTPError(431, "headers_too_large", f"the request has more than "
                         f"{limits.max_header_count} header fields",
                         max_count=limits.max_header_count)  # fmt: skip
    if header_bytes(headers) > limits.max_header_bytes:
        return HTTPError(431, "headers_too_large", f"the request header fields exceed "
                         f"{limits.max_header_bytes} bytes", max_bytes=limits.max_header_bytes)
    return None


# RFC 9110 §7.2 and RFC 3986 §3.2.2: uri-host [ ":" port ], an IP literal in brackets; a port
# names a TCP port (0-65535: five digits at most, checked in `valid_host`).
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::([0-9]{0,5}))?")


def check_host(http_version: str, headers: list[tuple[bytes, bytes]]) -> HTTPError | None:
    """RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host, and to
    any request with more than one Host field or an invalid one (a cache between clients and
    an origin that read them differently is how responses get poisoned)."""
    hosts = [value for name, value in headers if name == b"host"]
    if len(hosts) > 1:
        return HTTPError(400, "bad_host", "the request has more than one Host field")
    if not hosts:
        if http_version == "1.1":
            return HTTPError(400, "bad_host", "an HTTP/1.1 request must carry Host")
        return None
    if not valid_host(hosts[0]):
        return HTTPError(400, "bad_host", "the request's Host field is not a host")
    return None


def check_version(http_version: str) -> HTTPError | None:
    """RFC 9110 §15.6.6: a request line naming another major version than HTTP/1 (``HTTP/2.0``
    on a cleartext HTTP/1 connection, say) gets 505. A later minor version of HTTP/1 is
    served as HTTP/1.1 (§2.5)."""
    if http_version.startswith("1."):
        return None
    return HTTPError(505, "http_version_not_supported",
                     f"HTTP/{http_version} is not supported here: use HTTP/1.1",
                     supported=["HTTP/1.0", "HTTP/1.1"])


def valid_host(value: bytes) -> bool:
    """Whether a Host field's value is a host, with or without a port (or empty)."""
    m = _HOST.fullmatch(value.strip(b" \t"))
    return m is not None and (not m.group(1) or int(m.group(1)) <= 65535)


def error_bytes(error: HTTPError) -> bytes:
    """The JSON body of ``error``."""
    return json.dumps(error.body()).encode()


class RequestGuard:
    """ASGI middleware refusing requests whose head breaks the limits or whose target is bad."""

    def __init__(self, app: ASGIApp, limits: HTTPLimitsConfig) -> None:
        self.app = app
        self.limits = limits

    def __getattr__(self, name: str) -> Any:
        # The wrapped app's own calls (a cache node's reload on SIGHUP) stay reachable.
        return getattr(self.app, name)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] == "http":
            # ASGI makes raw_path optional; without it, re-encode the decoded path.
            raw_path: bytes = scope.get("raw_path") or quote(scope["path"]).encode()
            query: bytes = scope.get("query_string", b"")
            target_length = len(raw_path) + (len(query) + 1 if query else 0)
            error = check_version(scope["http_version"]) \
                or check_head(self.limits, scope["headers"], target_length) \
                or check_host(scope["http_version"], scope["headers"])
            if error is None:
                try:
                    path = canonical_path(raw_path)
                except HTTPError as exc:
                    error = exc
                else:
                    if path.encode() != raw_path:
                        scope = {**scope, "raw_path": path.encode(), "path": unquote(path)}
            if error is not None:
                await _send_error(send, error, head=scope["method"] == "HEAD")
                return
        await self.app(scope, receive, send)


async def _send_error(send: Send, error: HTTPError, *, head: bool) -> None:
    body = error_bytes(error)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
               (b"cache-control", b"no-store"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def uvicorn_http_options(limits: HTTPLimitsConfig) -> dict[str, Any]:
    """uvicorn settings that bound the request head while the server reads it.

    httptools (llhttp) has no head limit of its own: a 1 MB header or 10,000 fields reach the
    app, having been buffered whole. `edgeproxy.protocol.GuardedHttpToolsProtocol` counts them
    as they arrive and answers 431/414 as soon as a limit is crossed. Without httptools,
    `h11_http_options`. Both give each head ``header_timeout`` to arrive (408 beyond).

    No WebSocket: the nodes serve none, and with a WebSocket library installed uvicorn
    handed an ``Upgrade: websocket`` GET to the app as a handshake, which it never completes
    (a 500 in plain text, found from outside). Without, such a GET is a plain GET (its
    Upgrade and Connection fields are hop-by-hop: RFC 9110 §7.8).
    """
    if importlib.util.find_spec("httptools") is not None:
        from .protocol import GuardedHttpToolsProtocol

        return {"http": partial(GuardedHttpToolsProtocol, limits=limits), "ws": "none"}
    return {**h11_http_options(limits), "ws": "none"}


def h11_http_options(limits: HTTPLimitsConfig) -> dict[str, Any]:
    """uvicorn settings for the pure-Python h11 parser: its receive buffer capped (uvicorn
    answers 400 beyond the cap; the guard gives 431 or 414 below it) and the head deadline of
    `edgeproxy.headtimeout`."""
    from .headtimeout import GuardedH11Protocol

    return {"http": partial(GuardedH11Protocol, limits=limits),
            "h11_max_incomplete_event_size": head_cap(limits)}


def head_cap(limits: HTTPLimitsConfig) -> int:
    """The most bytes of one request head a server buffers before refusing it."""
    return limits.max_target_length + limits.max_header_bytes + HEAD_SLACK
