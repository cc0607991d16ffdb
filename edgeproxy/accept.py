"""A server loop that accepts every waiting connection at once.

uvloop (libuv) accepts one connection per turn of the event loop. A worker busy sending takes
tens of milliseconds a turn, so a burst of new connections waits in the listen queue and is
let in one turn at a time: in a stampede of 200 clients on two workers, 40-50 connections
sat accepted by the kernel but not by the worker for up to 2.8 s, and their first bytes came
after the whole object had been filled (the followers' TTFB 20-35x the leader's). nginx, and
asyncio's own loop, accept all that is waiting on each readiness event.

`new_loop` makes uvloop's loop (asyncio's where uvloop is missing) whose ``create_server`` on
a given socket accepts in a loop until the queue is empty (at most `BATCH` per turn), and
hands each connection to ``connect_accepted_socket``. With it, the worst follower's first byte
in that stampede came 2.7-6.5x the leader's (was 26-57x), the last head at 0.43 s (was 2.8).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["BATCH", "BatchServer", "new_loop"]

log = logging.getLogger("edgeproxy.server")

# Connections let in per readiness event, at most: a burst of hundreds comes in over a few
# turns, in which the fills already under way keep moving (a leader's upstream request waits
# behind the setup of every request let in before it).
BATCH = 32
RETRY_AFTER = 0.5  # seconds before accepting again when out of descriptors
_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class BatchServer:
    """A listening socket whose waiting connections are all accepted each time it is
    readable (the part of ``asyncio.Server`` that uvicorn uses: ``close``, ``wait_closed``,
    ``sockets``, ``is_serving``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, factory: Callable[[], Any],
                 sock: socket.socket, backlog: int, ssl: Any = None) -> None:
        self._loop = loop
        self._factory = factory
        self._sock = sock
        self._ssl = ssl
        self._tasks: set[asyncio.Task[Any]] = set()
        self._serving = True
        sock.setblocking(False)
        sock.listen(backlog)
        loop.add_reader(sock.fileno(), self._accept)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening socket (none once closed)."""
        return (self._sock,) if self._serving else ()

    def is_serving(self) -> bool:
        """Whether connections are still accepted."""
        return self._serving

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop this server runs on."""
        return self._loop

    def _accept(self) -> None:
        for _ in range(BATCH):
            try:
                conn, _address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client left before it was accepted
            except OSError as exc:
                if exc.errno not in _OUT_OF_FDS:
                    raise
                # as asyncio does: stop accepting for a while rather than spin on the error
                log.error("accepting connections failed (%s): trying again in %.1f s", exc,
                          RETRY_AFTER)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(RETRY_AFTER, self._resume)
                return
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self._loop.create_task(self._loop.connect_accepted_socket(
                self._factory, conn, ssl=self._ssl))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("a connection failed before it was set up: %s", task.exception())

    def _resume(self) -> None:
        if self._serving:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting and close the listening socket."""
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    async def wait_closed(self) -> None:
        """Return once closed (connections already accepted are the protocol's to end)."""


def _batching(base: type[asyncio.AbstractEventLoop]) -> type[asyncio.AbstractEventLoop]:
    class Loop(base):  # type: ignore[valid-type,misc]
        """``base`` whose ``create_server`` on a given socket accepts in batches."""

        async def create_server(self, protocol_factory: Callable[[], Any], host: Any = None,
                                port: Any = None, *, sock: socket.socket | None = None,
                                backlog: int = 100, ssl: Any = None, **kwargs: Any) -> Any:
            if sock is None or kwargs:
                return await super().create_server(protocol_factory, host, port, sock=sock,
                                                   backlog=backlog, ssl=ssl, **kwargs)
            return BatchServer(self, protocol_factory, sock, backlog, ssl)

    return Loop


try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
    _LOOP: type[asyncio.AbstractEventLoop] | None = None
else:
    _LOOP = _batching(uvloop.Loop)


def new_loop() -> asyncio.AbstractEventLoop:
    """A new server event loop: uvloop's if installed, accepting in batches (asyncio's own
    loop does already)."""
    return _LOOP() if _LOOP is not None else asyncio.new_event_loop()
