"""Small ASGI helpers for the cache node's lean hand-written responses."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]



async def start(send: Send, status: int, headers: list[tuple[str, str]]) -> None:
    """Send the status line and headers."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(n.lower().encode("latin-1"), v.encode("latin-1"))
                            for n, v in headers]})


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
