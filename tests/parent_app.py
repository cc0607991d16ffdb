"""A tiny parent (shield stand-in) run as its own process, so a test can kill -9 it.

``GET /healthz`` answers 200; ``GET /obj/{n}`` answers `pattern(SIZE, n)` in 16 KiB chunks with
``x-parent: $PARENT_NAME``. Run: ``python -m uvicorn tests.parent_app:app --port N``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from tests.origins import pattern

SIZE = 64 * 1024
CHUNK = 16 * 1024
NAME = os.environ.get("PARENT_NAME", "parent").encode()


@functools.cache
def body_of(n: int) -> bytes:
    """Object ``n``'s bytes (made once: the test measures failover, not hashing)."""
    return pattern(SIZE, n)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI app (no lifespan needed)."""
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    if path == "/healthz":
        body, status = b'{"status":"ok"}', 200
    elif path.startswith("/obj/") and path[5:].isdigit():
        body, status = body_of(int(path[5:])), 200
    else:
        body, status = b"not found", 404
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()),
                            (b"x-parent", NAME)]})  # fmt: skip
    for i in range(0, len(body), CHUNK):
        await send({"type": "http.response.body", "body": body[i:i + CHUNK], "more_body": True})
    await send({"type": "http.response.body", "body": b""})
