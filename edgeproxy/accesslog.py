"""The access log: one line per request, as ASGI middleware around every role's app.

The text format is nginx's *combined* followed by what a CDN operator greps for::

    127.0.0.1 - - [02/Dec/2026:13:38:18 +0000] "GET /v/t1/ab12 HTTP/1.1" 200 5242880 "-" \
"curl/8.5.0" cache="HIT from edge-ams-1" rt=0.004 urt=0.000 node=edge-ams-1

``rt`` is the time to the last byte, ``urt`` the time spent waiting on the upstream as the app
reports it in ``scope["edgeproxy"]["upstream_time"]`` (``-`` when it does not, as the origin).
The JSON format carries the same fields. Signature parameters (``exp``, ``kid``, ``sig``) are
cut from the logged query: a signed URL is a bearer credential until it expires.

A node writes its lines through a `Sink` (stdout, or a file that logrotate may move): lines are
batched and written at most ``delay`` later (50 ms), in one system call, because a line per
write through `logging` cost a small-object hit 40% of its rate. Without a sink, lines go to the
``edgeproxy.access`` logger (for apps embedded elsewhere, and tests).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from .cache.types import ZEROCOPY
from .signing import signature_params

__all__ = ["FORMATS", "LOGGER", "AccessLog", "Sink", "loggable_path"]

LOGGER = "edgeproxy.access"
FORMATS = ("on", "json")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def loggable_path(scope: Scope) -> str:
    """The request target as received, minus the signature parameters of its query."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope.get("path", "")
    query = scope.get("query_string", b"").decode("latin-1")
    if not query:
        return str(path)
    drop = signature_params()
    kept = [p for p in query.split("&") if unquote(p.partition("=")[0]) not in drop]
    return f"{path}?{'&'.join(kept)}" if kept else str(path)


def _escape(value: str) -> str:
    # nginx escapes quotes, backslashes and control bytes as \xHH, so a line stays one line
    # and its quoted fields stay parseable whatever a client sends.
    if value.isprintable() and '"' not in value and "\\" not in value:
        return value
    return "".join(c if c.isprintable() and c not in '"\\' else f"\\x{ord(c):02X}"
                   for c in value)  # fmt: skip


def _clf_time(second: int) -> str:
    t = time.gmtime(second)
    return (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000")  # fmt: skip


class Sink:
    """Appends access lines to standard output or to ``path``, in batches.

    A line is written at most ``delay`` seconds after it was given (at once outside an event
    loop), so ``tail -f`` follows requests as they are answered. A file is opened with
    O_APPEND, which keeps the lines of several worker processes whole, and reopened when
    logrotate has moved it away.
    """

    def __init__(self, path: str | None = None, *, delay: float = 0.05) -> None:
        self.path = path
        self.delay = delay
        self._lines: list[str] = []
        self._scheduled = False
        self._fd: int | None = None
        self._inode: int | None = None
        atexit.register(self.flush)

    def __call__(self, line: str) -> None:
        self._lines.append(line)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_later(self.delay, self.flush)

    def flush(self) -> None:
        """Write what is pending now."""
        self._scheduled = False
        if not self._lines:
            return
        data = ("\n".join(self._lines) + "\n").encode("utf-8", "backslashreplace")
        self._lines.clear()
        try:
            fd = self._target()
            while data:
                data = data[os.write(fd, data):]
        except OSError as exc:  # a full disk must not take requests down with it
            logging.getLogger(LOGGER).error("cannot write the access log: %s", exc)

    def _target(self) -> int:
        if self.path is None:
            return 1  # stdout, unbuffered: Python's own buffer would hold lines back
        try:
            moved = os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            moved = True
        if self._fd is None or moved:
            if self._fd is not None:
                os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._inode = os.fstat(self._fd).st_ino
        return self._fd


class AccessLog:
    """Wraps an ASGI app; writes one access-log line per HTTP request once it is answered."""

    def __init__(self, app: ASGIApp, *, node: str, fmt: str = "on",
                 sink: Callable[[str], None] | None = None) -> None:  # fmt: skip
        if fmt not in FORMATS:
            raise ValueError(f"access log format must be one of {FORMATS}, got {fmt!r}")
        self.app = app
        self.node = node
        self.json = fmt == "json"
        self.sink = sink or logging.getLogger(LOGGER).info
        self._second = -1
        self._clf = ""

    def __getattr__(self, name: str) -> Any:
        # The server reaches through to the app (reload, state); the wrapper stays transparent.
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            if scope["type"] == "lifespan" and isinstance(self.sink, Sink):
                self.sink.flush()  # the app has shut down: the last lines go out now
            return
        started = time.perf_counter()
        status, sent, x_cache = 0, 0, "-"

        async def watch(message: Message) -> None:
            nonlocal status, sent, x_cache
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == ZEROCOPY:
                sent += message.get("count") or 0
            elif message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name.lower() == b"x-cache":
                        x_cache = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except BaseException:
            # Unstarted: the server answers 500. Started: the client sees a cut-off body,
            # logged with its status and the bytes that made it out, as nginx does.
            status = status or 500
            raise
        finally:
            self.write(scope, status, sent, x_cache, time.perf_counter() - started)

    def write(self, scope: Scope, status: int, sent: int, x_cache: str, seconds: float) -> None:
        """Log one answered request."""
        upstream = scope.get("edgeproxy", {}).get("upstream_time")
        referer = agent = "-"
        for name, value in scope.get("headers", ()):
            if name == b"referer":
                referer = value.decode("latin-1")
            elif name == b"user-agent":
                agent = value.decode("latin-1")
        client = (scope.get("client") or ("-", 0))[0]
        method, path = scope.get("method", "-"), loggable_path(scope)
        protocol = f"HTTP/{scope.get('http_version', '1.1')}"
        now = time.time()
        if self.json:
            self.sink(json.dumps({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                + f".{int(now % 1 * 1000):03d}Z",
                "client": client, "method": method, "path": path, "protocol": protocol,
                "status": status, "bytes": sent, "referer": referer, "user_agent": agent,
                "cache": x_cache, "duration": round(seconds, 6),
                "upstream_time": None if upstream is None else round(float(upstream), 6),
                "node": self.node}))  # fmt: skip
            return
        second = int(now)
        if second != self._second:  # one strftime per second, not per line
            self._second, self._clf = second, _clf_time(second)
        urt = "-" if upstream is None else f"{float(upstream):.3f}"
        self.sink(f'{client} - - [{self._clf}] "{method} {_escape(path)} {protocol}" '
                  f'{status} {sent} "{_escape(referer)}" "{_escape(agent)}" '
                  f'cache="{_escape(x_cache)}" rt={seconds:.3f} urt={urt} node={self.node}')
