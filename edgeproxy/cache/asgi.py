"""Small ASGI helpers for the cache node's lean hand-written responses."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from typing import Any

from ..errors import HTTPError
from .types import Receive

Send = Callable[[dict[str, Any]], Awaitable[None]]



async def start(send: Send, status: int, headers: list[tuple[str, str]]) -> None:
    """Send the status line and headers (dated now unless they carry a Date already)."""
    raw = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers]
    if not any(n == b"date" for n, _ in raw):
        raw.append((b"date", formatdate(time.time(), usegmt=True).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})


async def end(send: Send, data: bytes = b"") -> None:
    """Send the last (or only) piece of the body."""
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def send_simple(send: Send, status: int, body: bytes, content_type: str,
                      extra: dict[str, str] | None = None, *, head: bool = False) -> None:
    """A complete small response, never cached."""
    headers = [("content-type", content_type), ("content-length", str(len(body))),
               ("cache-control", "no-store"), *(extra or {}).items()]
    await start(send, status, headers)
    await end(send, b"" if head else body)


async def send_json(send: Send, status: int, payload: dict[str, Any],
                    extra: dict[str, str] | None = None, *, head: bool = False) -> None:
    """A complete JSON response, never cached."""
    await send_simple(send, status, json.dumps(payload).encode(), "application/json", extra,
                      head=head)


def allow_any_status() -> None:
    """Let uvicorn send any status a generic origin may (RFC 9110 §15: 100-999).

    uvicorn builds its status lines for 100-599 only, so a relayed 999 would raise KeyError
    inside the server. A proxy must pass such statuses through, so the missing lines are added
    (with an empty reason phrase, which HTTP/1.1 allows).
    """
    from uvicorn.protocols.http import h11_impl, httptools_impl

    for code in range(600, 1000):
        httptools_impl.STATUS_LINE.setdefault(code, b"".join(
            [b"HTTP/1.1 ", str(code).encode(), b" \r\n"]))
        h11_impl.STATUS_PHRASES.setdefault(code, b"")


async def request_body(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it arrives, chunk by chunk (a pass relays it streamed).

    A body that never ends (the client closed, or its framing broke: the server then answers
    400 and closes, and the app sees a disconnect) raises `HTTPError`: had it ended quietly,
    a chunked relay would write its last chunk and the upstream take a cut body for a whole
    one (a PUT stored short)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPError(400, "incomplete_body", "the request body ended before its end: "
                            "the client closed the connection or its framing broke")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return

