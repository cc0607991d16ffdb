"""Worker processes of one node, each accepting on a listening socket of its own.

uvicorn's workers share the one socket their supervisor bound, and whichever wakes first takes
every connection waiting (libuv accepts until the queue is empty): 151 of a stampede's 200
connections went to one of two workers, and 32 of a load test's 32 now and then, while the
other worker idled. With ``SO_REUSEPORT`` each worker listens on its own socket bound to the
same address and the kernel spreads new connections over them by their addresses.

The supervisor binds the address first, with ``SO_REUSEPORT``, and never listens on it: it
reserves the port and tells workers where to bind; a socket that does not listen gets no
connections. ``SO_REUSEPORT`` lets any process of the same user bind the address too, so a
second node configured on the same port (or any server that also sets it) would silently get
half of the connections; `claim_port` first binds without it, which fails if anything holds
the address, so a port taken fails at start as it does without workers.

A worker that dies takes the connections queued on its socket with it, as it does those it
accepted. A worker whose supervisor is gone (SIGKILLed, crashed) shuts down rather than serve
on as an orphan on its own socket.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from uvicorn.supervisors.multiprocess import Process

__all__ = ["ORPHAN_GRACE", "OwnSocketWorker", "claim_port", "reuse_port_socket"]

# Seconds a worker whose supervisor is gone has to shut down gracefully before it is ended.
ORPHAN_GRACE = 30.0


def reuse_port_socket(host: str, port: int) -> socket.socket | None:
    """A TCP socket bound to ``host``:``port`` that others may bind too (``SO_REUSEPORT``);
    None where the system has no such option."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        sock.close()
        return None
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def claim_port(host: str, port: int) -> socket.socket | None:
    """`reuse_port_socket` for a supervisor: raises ``OSError`` (``EADDRINUSE``) if any socket,
    with ``SO_REUSEPORT`` or not, is bound to the address now (port 0: a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP) as probe:
        # SO_REUSEADDR only: a port in TIME_WAIT is free, one bound by anyone is not
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = int(probe.getsockname()[1])
    return reuse_port_socket(host, port)


class OwnSocketWorker(Process):
    """A uvicorn worker that listens on a socket of its own, bound where its supervisor's is."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover
        """Run the server on a new socket at the inherited one's address (which this process
        then closes: only the supervisor keeps it)."""
        from .server import exit_with_parent  # (the server module imports this one)

        exit_with_parent(os.getppid(), hard_after=ORPHAN_GRACE)
        if sockets:
            inherited = sockets[0]
            own = reuse_port_socket(*_host_port(inherited.getsockname()))
            if own is not None:
                inherited.close()
                sockets = [own]
        super().target(sockets)


def _host_port(address: Any) -> tuple[str, int]:
    return str(address[0]), int(address[1])
