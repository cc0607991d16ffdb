"""Run ASGI apps on real loopback sockets for tests (uvicorn in a background thread)."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import uvicorn


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now.

    Chosen below the kernel's ephemeral range: a port from that range can be taken by any
    outgoing connection between this call and the server's bind, which made tests flaky. Each
    pytest-xdist worker picks from a share of its own, and a port is not handed out again
    within `REISSUE_AFTER` seconds: between this call and its server's bind, another test
    picked the same port now and then, and one of the two servers failed to start (seen in CI).
    """
    low, _high = _ephemeral_range()
    first, last = _share(10000, max(10001, low))
    now = time.monotonic()
    for _ in range(200):
        port = random.randrange(first, last)
        if now - _ISSUED.get(port, -REISSUE_AFTER) < REISSUE_AFTER:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _ISSUED[port] = now
            return port
    raise RuntimeError("no free port below the ephemeral range")


REISSUE_AFTER = 300.0
_ISSUED: dict[int, float] = {}  # port -> when this process handed it out


def _share(low: int, high: int) -> tuple[int, int]:
    """This pytest-xdist worker's part of [low, high) (all of it outside xdist)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or not worker[2:].isdigit() or count <= 1:
        return low, high
    index, span = int(worker[2:]) % count, (high - low) // count
    return low + index * span, low + (index + 1) * span


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` or one of its descendants listens on TCP ``port``.

    A connection that succeeds proves only that *something* listens: between `free_port` and
    a server's bind, another test's server may take the port, and a test that waited for a
    connection then talks to the wrong server (it happened: 404s from another test's origin).
    """
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for process in family:
        try:
            connections = process.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
               for c in connections):
            return True
    return False


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


class ServerThread:
    """One uvicorn server on 127.0.0.1 in its own thread and event loop."""

    def __init__(self, app: Any, port: int | None = None, **options: Any) -> None:
        """``options`` are uvicorn settings over the defaults (h11, asyncio, lifespan on;
        ``ssl_certfile=...`` serves HTTPS)."""
        self.port = port or free_port()
        scheme = "https" if options.get("ssl_certfile") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        from edgeproxy.cache import CacheNode

        # cache nodes date their own answers; uvicorn dates the others'
        inner = app
        while type(inner).__name__ in ("RequestGuard", "AccessLog", "Lifecycle"):  # wrappers
            inner = inner.app
        settings = {"log_level": "warning", "lifespan": "on", "loop": "asyncio", "http": "h11",
                    "date_header": not isinstance(inner, CacheNode), **options}
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, **settings)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextmanager
def serve(app: Any, port: int | None = None, **options: Any) -> Iterator[ServerThread]:
    """Serve ``app`` on a loopback port for the duration of the block (``options``: uvicorn's)."""
    server = ServerThread(app, port, **options).start()
    try:
        yield server
    finally:
        server.stop()


async def alive_app(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that completes its lifespan and answers every request 200 ``alive``."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"alive"})


def wait_healthy(url: str, proc: Any, timeout: float = 30) -> None:
    """Wait until ``url``/healthz answers 200; fail if ``proc`` (a Popen) exits first."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the server of {url} exited at start"
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not start"
        time.sleep(0.1)


def write_stack_config(directory: Path, extra: str = "") -> tuple[Path, dict[str, int]]:
    """A config for a loopback origin/shield/edge stack on free ports, data under
    ``directory`` (``extra``: more top-level YAML); returns its path and the ports by role."""
    ports = {role: free_port() for role in ("origin", "shield", "edge")}
    path = directory / "config.yaml"
    path.write_text(f"""\
data_dir: {directory / "var"}
public_base_url: http://127.0.0.1:{ports["edge"]}
log_level: warning
origin: {{port: {ports["origin"]}}}
shield: {{port: {ports["shield"]}, upstream: "http://127.0.0.1:{ports["origin"]}"}}
edge: {{port: {ports["edge"]}, upstream: "http://127.0.0.1:{ports["shield"]}"}}
{extra}""")
    return path, ports
