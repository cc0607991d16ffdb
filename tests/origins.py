"""A scriptable test origin: deterministic bodies, Range support, request/byte counters."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

from edgeproxy.http import ByteRange, RangeNotSatisfiable, parse_range, resolve_ranges


def pattern(length: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes (so an offset error shows); a shorter
    pattern of one seed is a prefix of a longer one. (An extendable-output hash: ~150 MB/s.)"""
    return hashlib.shake_256(f"pattern:{seed}".encode()).digest(length)


@dataclass
class Obj:
    """One object the test origin serves."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    etag: str | None = None
    ranges: bool = True  # honour Range requests
    range_cap: int | None = None  # answer at most this many bytes of a range (a 206 cut short)


@dataclass
class Hit:
    """One request the origin received."""

    method: str
    path: str
    range: str | None
    headers: dict[str, str]
    sent: int = 0


class TestOrigin:
    """ASGI origin whose objects, speed and failures a test controls."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.delay_headers = 0.0  # seconds before the status line
        self.chunk = 64 * 1024
        self.chunk_delay = 0.0  # seconds between body chunks (throttling)
        self.fail_after: int | None = None  # abort the connection after this many body bytes

    def put(self, path: str, body: bytes, **kwargs: Any) -> Obj:
        obj = Obj(body, **kwargs)
        if obj.etag is None:
            obj.etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        self.objects[path] = obj
        return obj

    def count(self, path: str | None = None, method: str = "GET") -> int:
        with self.lock:
            return sum(1 for h in self.hits if (path is None or h.path == path)
                       and h.method == method)

    def bytes_sent(self, path: str | None = None) -> int:
        with self.lock:
            return sum(h.sent for h in self.hits if path is None or h.path == path)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while True:
                    msg = await receive()
                    await send({"type": msg["type"] + ".complete"})
                    if msg["type"] == "lifespan.shutdown":
                        return
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        hit = Hit(scope["method"], scope["path"], headers.get("range"), headers)
        with self.lock:
            self.hits.append(hit)
        if self.delay_headers:
            await asyncio.sleep(self.delay_headers)
        obj = self.objects.get(scope["path"])
        if obj is None:
            await self._send(send, 404, {"content-type": "application/json"},
                             b'{"error":"not_found"}', hit, scope)
            return
        out = {"content-type": "application/octet-stream", "accept-ranges": "bytes",
               "etag": obj.etag or "", **obj.headers}
        inm = headers.get("if-none-match")
        if inm is not None and inm == obj.etag:
            await self._send(send, 304, {k: v for k, v in out.items()
                                         if k in ("etag", "cache-control")}, b"", hit, scope)
            return
        body, status = obj.body, obj.status
        specs = parse_range(headers.get("range")) if obj.ranges else None
        if specs is not None and status == 200:
            try:
                rngs = resolve_ranges(specs, len(obj.body))
            except RangeNotSatisfiable as exc:
                out["content-range"] = exc.content_range
                await self._send(send, 416, out, b"", hit, scope)
                return
            r = rngs[0]
            if obj.range_cap is not None:
                r = ByteRange(r.start, min(r.end, r.start + obj.range_cap - 1))
            body, status = obj.body[r.start : r.end + 1], 206
            out["content-range"] = r.content_range(len(obj.body))
        await self._send(send, status, out, body, hit, scope)

    async def _send(self, send: Any, status: int, headers: dict[str, str], body: bytes,
                    hit: Hit, scope: dict[str, Any]) -> None:
        headers = {**headers, "content-length": str(len(body))}
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        pos = 0
        while pos < len(body):
            if self.fail_after is not None and pos >= self.fail_after:
                raise ConnectionAbortedError("test origin dies mid-body")
            piece = body[pos : pos + self.chunk]
            if self.fail_after is not None:
                piece = piece[: max(1, self.fail_after - pos)]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            pos += len(piece)
            with self.lock:
                hit.sent += len(piece)
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await send({"type": "http.response.body", "body": b""})


class _Controlled:
    """A `TestOrigin` that also answers ``/healthz`` and ``PUT /_test/chunk_delay`` (body: the
    seconds between body chunks), so a test can slow it down or speed it up across processes."""

    def __init__(self, origin: TestOrigin) -> None:
        self.origin = origin

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path")
        if scope["type"] == "http" and path in ("/healthz", "/_test/chunk_delay"):
            if path == "/_test/chunk_delay":
                message = await receive()
                self.origin.chunk_delay = float(message.get("body", b"0"))
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await self.origin(scope, receive, send)


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.origins PORT CHUNK_DELAY PATH=SIZE:SEED...``: a `TestOrigin` in its own
    process (so a test can kill it), serving `pattern` (SIZE, SEED) at each PATH."""
    import sys

    import uvicorn

    port, delay, *objects = sys.argv[1:] if argv is None else argv
    origin = TestOrigin()
    origin.chunk_delay = float(delay)
    for spec in objects:
        path, _, size_seed = spec.partition("=")
        size, _, seed = size_seed.partition(":")
        origin.put(path, pattern(int(size), int(seed or 0)),
                   headers={"cache-control": "public, max-age=3600"})
    uvicorn.run(_Controlled(origin), host="127.0.0.1", port=int(port), log_level="warning",
                lifespan="on", loop="asyncio", http="h11")


if __name__ == "__main__":
    main()
