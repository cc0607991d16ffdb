"""A scriptable HTTP/1.1 origin on raw asyncio sockets, for what the project's origins never send.

Each route says how its answer is framed (``Content-Length``, chunked, or delimited by closing
the connection), which status it carries (any three digits, 100-999, with 1xx interim answers
before it), which caching headers, and whether it echoes the request's headers back as JSON.
Every request is recorded, so a test can count what reached the origin and read what it carried.
A route can also lie: garble the bytes of ranges, or state a wrong RFC 9530 ``Content-Digest``.
Nothing here uses the project's own HTTP code: the point is an origin written by someone else.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from typing import Literal

import xxhash

# "declared": no framing field of its own (the route's headers say), connection kept open
Framing = Literal["length", "chunked", "close", "declared"]
# "right": the digest of the bytes the representation has there (even when garbled on the way);
# "wrong": a digest of other bytes on each 206 not starting at byte 0 (those `corrupt_ranges`
# garbles), the right one elsewhere.
Digest = Literal["none", "right", "wrong"]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_MAX_HEAD = 64 * 1024


@dataclass
class Route:
    """What the origin answers for one method and request target."""

    body: bytes = b""
    status: int = 200
    # Sent verbatim after the generated ones; a ``Date`` here replaces the generated Date.
    headers: list[tuple[str, str]] = field(default_factory=list)
    framing: Framing = "length"
    etag: str | None = None
    last_modified: float | None = None  # epoch seconds, sent as Last-Modified
    echo: bool = False  # body: the request's headers as a JSON object (names lower-cased)
    ranges: bool = True  # answer a single byte range with 206
    corrupt_ranges: bool = False  # garble every 206 body that does not start at byte 0
    range_cap: int | None = None  # a 206 carries at most this many bytes (its Content-Range
    # says which): a part of the range asked for, as a few origins send
    content_digest: Digest = "none"  # an RFC 9530 Content-Digest on every 200 and 206
    total_offset: int = 0  # a 206's Content-Range states the complete length off by this
    delay: float = 0.0  # seconds before the answer
    pause: float = 0.0  # seconds of silence before the answer's last 64 KiB
    drip: float = 0.0  # seconds of silence before each 64 KiB of the answer (a slow origin)
    conditional: bool = True  # 304 on a matching If-None-Match / If-Modified-Since
    interim: list[int] = field(default_factory=list)  # 1xx answers sent before the final one
    hints: list[tuple[str, str]] = field(default_factory=list)  # fields of each 1xx answer
    chunk: int = 16 * 1024  # chunk size when framing is "chunked"
    bare_lf: bool = False  # the head's lines end in a bare LF (old CGI scripts do)
    # Die once the body reaches this byte of the representation: the connection closes, a
    # Content-Length answer short of its length, a chunked one without its last chunk.
    cut_at: int | None = None
    # Name the xxh3 of each whole slice of this size a 200 or 206 carries, as an edgeproxy
    # node above does (``Edgeproxy-Slice-Sums``): the sums of the right bytes, even when
    # `corrupt_ranges` garbles them on the way.
    slice_sums: int | None = None


@dataclass
class Request:
    """One request as the origin received it."""

    method: str
    target: str  # path and query exactly as sent
    headers: list[tuple[str, str]]  # names lower-cased, in order
    body: bytes = b""

    @property
    def path(self) -> str:
        """The target without its query."""
        return self.target.partition("?")[0]

    def header(self, name: str) -> str | None:
        """All values of ``name`` joined by ", ", or None if absent."""
        values = [v for n, v in self.headers if n == name.lower()]
        return ", ".join(values) if values else None

    def names(self) -> set[str]:
        """The header names the request carried."""
        return {n for n, _v in self.headers}


class ForeignOrigin:
    """The origin in a background thread with its own event loop, on a loopback port."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.hits: list[Request] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL, no trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def route(self, target: str, method: str = "GET", **fields: object) -> Route:
        """Answer ``method target`` (a GET route also answers HEAD) as ``fields`` say.

        A target with a query matches only that exact query; one without matches any query.
        Registering a target again replaces its route (the object changed at the origin).
        """
        route = Route(**fields)  # type: ignore[arg-type]
        with self._lock:
            self.routes[(method.upper(), target)] = route
        return route

    def count(self, target: str | None = None, method: str | None = "GET") -> int:
        """Requests received for ``target`` (a path, or a path with query) and ``method``."""
        return len(self.requests(target, method))

    def requests(self, target: str | None = None, method: str | None = "GET") -> list[Request]:
        """The requests received for ``target`` and ``method`` (None: any), oldest first."""
        with self._lock:
            hits = list(self.hits)
        return [h for h in hits if (method is None or h.method == method) and (
            target is None or h.target == target or ("?" not in target and h.path == target))]

    # --- lifecycle ---

    def start(self) -> ForeignOrigin:
        """Listen on a loopback port chosen by the kernel."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", 0, limit=_MAX_HEAD),
            self._loop)
        self._server = future.result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Close the listener and every open connection, then end the thread."""
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> ForeignOrigin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- one connection ---

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await self._exchange(reader, writer):
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> bool:
        """Read one request, answer it; False when the connection is to be closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
        req = Request(method, target, headers)
        req.body = await _read_body(reader, req)
        with self._lock:
            self.hits.append(req)
            route = self.routes.get((method, target)) or self.routes.get((method, req.path))
            if route is None and method == "HEAD":
                route = self.routes.get(("GET", target)) or self.routes.get(("GET", req.path))
        route = route or Route(b"no route\n", 404, [("content-type", "text/plain")])
        keep = version == "HTTP/1.1" and "close" not in (req.header("connection") or "").lower()
        keep = keep and route.framing != "close"
        if route.delay:
            await asyncio.sleep(route.delay)
        answer = _answer(req, route, keep)
        if route.pause:  # all but the last 64 KiB, then a pause, then the rest
            writer.write(answer[:-65536])
            await writer.drain()
            await asyncio.sleep(route.pause)
            answer = answer[-65536:]
        while route.drip and len(answer) > 65536:
            writer.write(answer[:65536])
            await writer.drain()
            await asyncio.sleep(route.drip)
            answer = answer[65536:]
        writer.write(answer)
        await writer.drain()
        return keep and route.cut_at is None


async def _read_body(reader: asyncio.StreamReader, req: Request) -> bytes:
    if "chunked" in (req.header("transfer-encoding") or "").lower():
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailer fields
                return bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    length = int(req.header("content-length") or 0)
    return await reader.readexactly(length) if length else b""


def _answer(req: Request, route: Route, keep: bool) -> bytes:
    """The whole answer to ``req``: interim 1xx answers, status line, headers, framed body."""
    out = bytearray()
    for code in route.interim:
        out += f"HTTP/1.1 {code} {_reason(code)}\r\n".encode()
        out += "".join(f"{n}: {v}\r\n" for n, v in route.hints).encode("latin-1") + b"\r\n"
    status = route.status
    body = json.dumps({n: req.header(n) for n in req.names()}).encode() if route.echo \
        else route.body
    headers: list[tuple[str, str]] = []
    if not any(n.lower() == "date" for n, _v in route.headers):
        headers.append(("Date", formatdate(time.time(), usegmt=True)))
    if route.etag is not None:
        headers.append(("ETag", route.etag))
    if route.last_modified is not None:
        headers.append(("Last-Modified", formatdate(route.last_modified, usegmt=True)))
    offset = 0  # of the body in the representation
    if status == 200 and req.method in ("GET", "HEAD"):
        if route.conditional and _not_modified(req, route):
            status, body = 304, b""
        elif route.ranges:
            status, body, extra = _range(req, route, body)
            headers += extra
            offset = next((int(v.split()[1].partition("-")[0]) for n, v in extra
                           if n == "Content-Range" and status == 206), 0)  # fmt: skip
    if status == 200 and route.content_digest != "none":
        headers.append(("Content-Digest", _digest(body)))
    if route.slice_sums is not None and status in (200, 206) and req.method == "GET":
        headers += _slice_sums(route.body, offset, len(body), route.slice_sums)
    headers += route.headers
    bodiless = status in (204, 304) or status < 200
    if not bodiless:
        if route.framing == "length":
            headers.append(("Content-Length", str(len(body))))
        elif route.framing == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
    if not keep:
        headers.append(("Connection", "close"))
    eol = "\n" if route.bare_lf else "\r\n"
    out += f"HTTP/1.1 {status} {_reason(status)}{eol}".encode()
    out += "".join(f"{n}: {v}{eol}" for n, v in headers).encode("latin-1") + eol.encode()
    if bodiless or req.method == "HEAD":
        return bytes(out)
    sent = body if route.cut_at is None else body[: max(0, route.cut_at - offset)]
    if route.framing == "chunked":
        for i in range(0, len(sent), route.chunk):
            piece = sent[i : i + route.chunk]
            out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        if route.cut_at is None:
            out += b"0\r\n\r\n"
    else:
        out += sent
    return bytes(out)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Whatever"


def _not_modified(req: Request, route: Route) -> bool:
    """RFC 9110 §13.1.2 (weak comparison) and §13.1.3; If-None-Match takes precedence."""
    inm = req.header("if-none-match")
    if inm is not None:
        if route.etag is None:
            return False
        tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
        return "*" in tags or route.etag.removeprefix("W/") in tags
    ims = req.header("if-modified-since")
    if ims is None or route.last_modified is None:
        return False
    try:
        since = parsedate_to_datetime(ims).timestamp()
    except (TypeError, ValueError):
        return False
    return int(route.last_modified) <= since


def _range(req: Request, route: Route,
           body: bytes) -> tuple[int, bytes, list[tuple[str, str]]]:
    """A single byte range as 206 (RFC 9110 §14), 416 when unsatisfiable; anything else,
    several ranges or a failed If-Range included, gets the whole body."""
    m = _RANGE.fullmatch((req.header("range") or "").replace(" ", ""))
    if m is None or (m.group(1) == "" and m.group(2) == ""):
        return 200, body, []
    if_range = req.header("if-range")
    if if_range is not None:
        strong = route.etag is not None and not route.etag.startswith("W/")
        same_date = route.last_modified is not None and \
            if_range == formatdate(route.last_modified, usegmt=True)
        if not ((strong and if_range == route.etag) or same_date):
            return 200, body, []
    size = len(body)
    if m.group(1) == "":
        start, end = max(0, size - int(m.group(2))), size - 1
    else:
        start = int(m.group(1))
        end = min(size - 1, int(m.group(2))) if m.group(2) else size - 1
    if start >= size or start > end:
        return 416, b"", [("Content-Range", f"bytes */{size}")]
    if route.range_cap is not None:
        end = min(end, start + route.range_cap - 1)
    part = body[start : end + 1]
    extra = [("Content-Range", f"bytes {start}-{end}/{size + route.total_offset}")]
    if route.content_digest != "none":
        wrong = route.content_digest == "wrong" and start > 0
        extra.append(("Content-Digest", _digest(part + b"!" if wrong else part)))
    if route.corrupt_ranges and start > 0:
        part = bytes(b ^ 0x5A for b in part)
    return 206, part, extra


def _digest(content: bytes) -> str:
    """An RFC 9530 §2 ``Content-Digest`` value of ``content``."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(content).digest()).decode()}:"


def _slice_sums(content: bytes, offset: int, count: int, size: int) -> list[tuple[str, str]]:
    """``Edgeproxy-Slice-Sums`` for the whole slices of ``content[offset:offset + count]``."""
    first = -(-offset // size)  # the first slice that starts inside the answer
    sums = []
    index = first
    while index * size < len(content):
        end = min(len(content), (index + 1) * size)
        if end > offset + count:
            break
        sums.append(f"{xxhash.xxh3_64_intdigest(content[index * size:end]):016x}")
        index += 1
    if not sums:
        return []
    return [("Edgeproxy-Slice-Sums", f"{size} {first} {','.join(sums)}"),
            ("Connection", "edgeproxy-slice-sums")]
