"""The access log: one line per request, as ASGI middleware around every role's app.

The text format is nginx's *combined* followed by what a CDN operator greps for::

    127.0.0.1 - - [02/Dec/2026:13:38:18 +0000] "GET /v/t1/ab12 HTTP/1.1" 200 5242880 "-" \
"curl/8.5.0" cache="HIT from edge" rt=0.004 urt=- node=edge-ams-1

``rt`` is the time to the last byte, ``urt`` the time spent waiting on the upstream (``-`` when
the request never went upstream or the app does not say). The JSON format carries the same
fields. Signature parameters (``exp``, ``kid``, ``sig``) are cut from the logged query: a signed
URL is a bearer credential until it expires.

Lines go to the ``edgeproxy.access`` logger; where that writes (stdout or a file) is set up by
`edgeproxy.server` from the ``log`` section.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from .signing import signature_params

__all__ = ["FORMATS", "LOGGER", "AccessLog", "loggable_path"]

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


def _clf_time(now: float) -> str:
    t = time.gmtime(now)
    return (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000")  # fmt: skip


class AccessLog:
    """Wraps an ASGI app; writes one access-log line per HTTP request once it is answered."""

    def __init__(self, app: ASGIApp, *, node: str, fmt: str = "on",
                 logger: logging.Logger | None = None) -> None:  # fmt: skip
        if fmt not in FORMATS:
            raise ValueError(f"access log format must be one of {FORMATS}, got {fmt!r}")
        self.app = app
        self.node = node
        self.json = fmt == "json"
        self.logger = logger or logging.getLogger(LOGGER)

    def __getattr__(self, name: str) -> Any:
        # The server reaches through to the app (reload, state); the wrapper stays transparent.
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, sent, x_cache = 0, 0, "-"

        async def watch(message: Message) -> None:
            nonlocal status, sent, x_cache
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
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
        if not self.logger.isEnabledFor(logging.INFO):
            return
        upstream = scope.get("edgeproxy", {}).get("upstream_time")
        headers = dict(scope.get("headers", ()))
        client = scope.get("client") or ("-", 0)
        fields: dict[str, Any] = {
            "client": client[0], "method": scope.get("method", "-"),
            "path": loggable_path(scope), "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
            "status": status, "bytes": sent,
            "referer": headers.get(b"referer", b"-").decode("latin-1"),
            "user_agent": headers.get(b"user-agent", b"-").decode("latin-1"),
            "cache": x_cache, "duration": round(seconds, 6),
            "upstream_time": None if upstream is None else round(float(upstream), 6),
            "node": self.node,
        }  # fmt: skip
        now = time.time()
        if self.json:
            line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                               + f".{int(now % 1 * 1000):03d}Z", **fields})
        else:
            urt = "-" if upstream is None else f"{float(upstream):.3f}"
            line = (f'{fields["client"]} - - [{_clf_time(now)}] '
                    f'"{fields["method"]} {_escape(fields["path"])} {fields["protocol"]}" '
                    f'{status} {sent} "{_escape(fields["referer"])}" '
                    f'"{_escape(fields["user_agent"])}" cache="{_escape(x_cache)}" '
                    f"rt={seconds:.3f} urt={urt} node={self.node}")  # fmt: skip
        self.logger.info(line)
