"""A minimal HTTP/1.1 GET client on asyncio protocols: exact time to first byte, cheap bodies.

One connection per request (``Connection: close``), body bytes counted and dropped as they
arrive, so hundreds of concurrent 100 MiB downloads cost the client little CPU and no memory.
Used where timing matters more than features (stampede, late-range TTFB, memory load).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

T = TypeVar("T")


@dataclass
class Fetch:
    """Timings (``time.perf_counter`` seconds) and facts of one GET."""

    path: str
    started: float = 0.0
    headers_at: float | None = None
    first_byte_at: float | None = None
    done_at: float | None = None
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body_bytes: int = 0
    error: str | None = None

    @property
    def ttfb(self) -> float | None:
        """Seconds from sending the request to the first *body* byte."""
        return None if self.first_byte_at is None else self.first_byte_at - self.started

    @property
    def total(self) -> float | None:
        """Seconds from sending the request to the last byte."""
        return None if self.done_at is None else self.done_at - self.started

    @property
    def complete(self) -> bool:
        """Whether a successful (2xx) answer's whole promised body arrived. An error page is
        not: a server that failed every request (nginx's workers unable to reach their cache
        directory, say) would otherwise be timed on its error pages."""
        want = self.headers.get("content-length")
        if self.error is not None or self.done_at is None or not 200 <= self.status < 300:
            return False
        return want is None or int(want) == self.body_bytes


class _GetProtocol(asyncio.Protocol):
    def __init__(self, fetch: Fetch, finished: asyncio.Future[None]) -> None:
        self.fetch = fetch
        self.finished = finished
        self.head = bytearray()
        self.in_body = False

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self._parse_head(bytes(self.head[:end]))
            self.fetch.headers_at = now
            data = bytes(self.head[end + 4 :])
            self.in_body = True
            self.head.clear()
        if data:
            if self.fetch.first_byte_at is None:
                self.fetch.first_byte_at = now
            self.fetch.body_bytes += len(data)

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.fetch.status = int(lines[0].split()[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.fetch.headers.setdefault(name.strip().lower(), value.strip())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.fetch.done_at is None:
            self.fetch.done_at = time.perf_counter()
        if exc is not None:
            self.fetch.error = repr(exc)
        elif not self.in_body:
            self.fetch.error = "connection closed before the response head"
        if not self.finished.done():
            self.finished.set_result(None)


async def get(host: str, port: int, path: str, headers: dict[str, str] | None = None,
              timeout: float = 120.0) -> Fetch:
    """GET ``path``; never raises for HTTP or socket trouble (see `Fetch.error`)."""
    fetch = Fetch(path)
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
               f"{extra}\r\n").encode("latin-1")
    transport: asyncio.BaseTransport | None = None
    fetch.started = time.perf_counter()
    try:
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: _GetProtocol(fetch, finished), host, port), timeout)
        cast(asyncio.Transport, transport).write(request)
        await asyncio.wait_for(asyncio.shield(finished), timeout)
    except (OSError, TimeoutError) as exc:
        fetch.error = repr(exc) or type(exc).__name__
        fetch.done_at = fetch.done_at or time.perf_counter()
    finally:
        if transport is not None:
            transport.close()
    return fetch


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when available (as the servers use), else the default loop."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh (uvloop) event loop."""
    loop = new_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
