"""A node's life as seen by operators: ``/readyz``, drain on SIGTERM, reload on SIGHUP.

`Lifecycle` is ASGI middleware around a role's app. It watches the app's lifespan to know when
startup is done, answers ``GET /readyz`` itself (200 once started, until a drain begins and
while the role's own `Probe` finds nothing wrong, such as the origin's database; 503
otherwise; ``/healthz`` stays the app's liveness answer), and, in the process's main thread,
hooks two signals:

- SIGTERM marks the node as draining, then hands over to the server's own handler, which stops
  accepting connections and lets requests in flight finish within the grace period.
- SIGHUP calls ``reload`` (re-read the config file, give the app the new content classes and
  TTLs). Connections stay open: nothing is restarted. A config that fails to load is logged
  and the running one kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

from .accesslog import ASGIApp, Message, Receive, Scope, Send
from .errors import EdgeProxyError

__all__ = ["Lifecycle", "Probe"]

log = logging.getLogger("edgeproxy.server")

READYZ = "/readyz"

# What keeps a started node from serving, asked at each /readyz: None when nothing does, else
# a sentence saying what (the origin's database unreachable, say).
Probe = Callable[[], Awaitable[str | None]]


class Lifecycle:
    """Readiness and signal handling around one node's ASGI app."""

    def __init__(self, app: ASGIApp, *, role: str, reload: Callable[[], None] | None = None,
                 on_shutdown: Callable[[], None] | None = None,
                 on_started: Callable[[], None] | None = None,
                 probe: Probe | None = None) -> None:  # fmt: skip
        self.app = app
        self.probe = probe
        self._on_started = on_started
        self.role = role
        self._reload = reload
        self._on_shutdown = on_shutdown
        self.started = False
        self.draining = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    @property
    def ready(self) -> bool:
        """Started and not draining: worth sending traffic to."""
        return self.started and not self.draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._watch_lifespan(send))
            return
        if scope["type"] == "http" and scope["path"] == READYZ:
            await self._readyz(send, head=scope["method"] == "HEAD")
            return
        await self.app(scope, receive, send)

    def _watch_lifespan(self, send: Send) -> Send:
        async def watch(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self._install_signals()
                if self._on_started is not None:
                    self._on_started()
                self.started = True
            elif message["type"] == "lifespan.shutdown.complete" and self._on_shutdown:
                self._on_shutdown()
            await send(message)

        return watch

    async def _readyz(self, send: Send, *, head: bool) -> None:
        problem = None
        if not self.ready:
            problem = f"{self.role} is {'draining' if self.draining else 'starting'}"
        elif self.probe is not None:
            problem = await self.probe()
        if problem is None:
            status, payload = 200, {"status": "ready", "role": self.role}
        else:
            status, payload = 503, {"error": "not_ready", "message": problem}
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b"" if head else body})

    def drain(self) -> None:
        """Stop answering ready; the server finishes what is in flight."""
        if not self.draining:
            log.info("draining: /readyz now answers 503")
        self.draining = True

    def reload(self) -> None:
        """Apply the config file again (what SIGHUP does)."""
        if self._reload is None:
            log.info("SIGHUP: nothing to reload for the %s", self.role)
            return
        try:
            self._reload()
        except (EdgeProxyError, OSError, ValueError) as exc:
            log.error("reload failed, keeping the running config: %s", exc)
            return
        log.info("reloaded the config")

    def _install_signals(self) -> None:
        # Signal handlers belong to the main thread; apps served from a test's thread go
        # without them.
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(sig: int, frame: FrameType | None) -> None:
            self.drain()
            if callable(previous):
                previous(sig, frame)
            elif previous == signal.SIG_DFL:  # nobody else drains: die as SIGTERM would
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_term)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)
