"""`pass`: requests a cache must not answer from storage go upstream unchanged, streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from . import policy

Send = Callable[[dict[str, Any]], Awaitable[None]]


async def pass_request(client: httpx.AsyncClient, upstream: str, tier: str, scope: dict[str, Any],
                       receive: Any, send: Send) -> int:
    """Relay one request and its response, both bodies streamed; returns body bytes sent."""
    raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    headers = [(n, v) for n, v in policy.forwardable(raw) if n.lower() != "host"]
    headers.append(("via", f"1.1 edgeproxy-{tier}"))
    query = scope.get("query_string", b"").decode("latin-1")
    url = upstream + scope["path"] + (f"?{query}" if query else "")
    has_body = any(n.lower() in ("content-length", "transfer-encoding") for n, _ in raw)

    async def body() -> AsyncIterator[bytes]:
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    bereq = client.build_request(scope["method"], url, headers=headers,
                                 content=body() if has_body else None)
    try:
        beresp = await client.send(bereq, stream=True)
    except httpx.HTTPError as exc:
        from ..errors import HTTPError

        raise HTTPError(502, "upstream_unavailable", f"upstream unreachable: {exc}",
                        tier=tier) from None
    sent = 0
    try:
        out = policy.forwardable(beresp.headers.multi_items())
        out = [(n, v) for n, v in out if n.lower() not in ("content-length", "x-cache", "via")]
        out.append(("via", policy.via(beresp.headers.get("via"), tier)))
        upstream_cache = beresp.headers.get("x-cache")
        x_cache = f"PASS from {tier}" + (f", {upstream_cache}" if upstream_cache else "")
        out.append(("x-cache", x_cache))
        length = beresp.headers.get("content-length")
        if length is not None and "content-encoding" not in beresp.headers:
            out.append(("content-length", length))
        await send({"type": "http.response.start", "status": beresp.status_code,
                    "headers": [(n.lower().encode("latin-1"), v.encode("latin-1"))
                                for n, v in out]})
        async for chunk in beresp.aiter_raw():
            sent += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await beresp.aclose()
    return sent
