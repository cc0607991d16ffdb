"""A node's workers each accept on a socket of their own (`edgeproxy.workers`): the kernel
spreads a burst of new connections over them, where one shared socket let one worker take
nearly all of them."""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from edgeproxy.workers import claim_port, reuse_port_socket
from tests.nodes import NodeProcess, node_process
from tests.origins import TestOrigin
from tests.servers import serve

CONNECTIONS = 64
OBJ = "/v/t1/obj"


def test_reuse_port_sockets_share_an_address_a_plain_one_cannot_take() -> None:
    first = reuse_port_socket("127.0.0.1", 0)
    assert first is not None
    port = first.getsockname()[1]
    second = reuse_port_socket("127.0.0.1", port)
    assert second is not None and second.getsockname()[1] == port
    plain = socket.socket()
    with pytest.raises(OSError) as taken:
        plain.bind(("127.0.0.1", port))
    assert taken.value.errno == errno.EADDRINUSE
    for sock in (first, second, plain):
        sock.close()


def test_a_port_in_use_is_refused_at_start() -> None:
    plain = socket.socket()
    plain.bind(("127.0.0.1", 0))
    plain.listen()
    with pytest.raises(OSError) as taken:
        reuse_port_socket("127.0.0.1", plain.getsockname()[1])
    assert taken.value.errno == errno.EADDRINUSE
    plain.close()


def test_a_supervisor_does_not_share_a_port_another_reuse_port_socket_holds() -> None:
    """`reuse_port_socket` alone would join another process's group on the port (as a second
    node configured on the same port would, taking half of its connections); `claim_port`
    refuses, and takes a port nobody holds, or a free one for port 0."""
    other = reuse_port_socket("127.0.0.1", 0)
    assert other is not None
    other.listen()
    port = other.getsockname()[1]
    with pytest.raises(OSError) as taken:
        claim_port("127.0.0.1", port)
    assert taken.value.errno == errno.EADDRINUSE
    other.close()
    mine = claim_port("127.0.0.1", port)
    assert mine is not None and mine.getsockname()[1] == port
    joined = reuse_port_socket("127.0.0.1", port)  # the workers join the supervisor's
    assert joined is not None
    fresh = claim_port("127.0.0.1", 0)
    assert fresh is not None and fresh.getsockname()[1] not in (0, port)
    for sock in (mine, joined, fresh):
        sock.close()


def test_a_second_node_with_workers_on_a_taken_port_exits(tmp_path: Path) -> None:
    """Two edges of two workers each, configured on one port: the second exits at start with
    the address in use, and the first keeps every connection."""
    with _two_worker_edge(tmp_path / "a", b"z" * 300) as (first, port):
        assert len(_listening_workers(first.pid, port, 2)) == 2
        config = tmp_path / "b" / "config.yaml"
        config.parent.mkdir()
        config.write_text(first.config.read_text())
        second = NodeProcess(config, "edge", first.url, upstream=first.upstream)
        second.launch()
        try:
            assert second.wait(20) != 0
        finally:
            second.stop()  # (when it did not exit: it shared the port)
        assert "address already in use" in second.err.read_text().lower()
        fresh = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(limits=fresh, timeout=10) as client:
            for _ in range(20):
                r = client.get(first.url + OBJ)
                assert r.status_code == 200 and r.content == b"z" * 300


def _on_port(pid: int, port: int, status: str) -> int:
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:  # a worker killed between the listing and this look
        return 0
    return sum(1 for c in connections if c.status == status and c.laddr and c.laddr.port == port)


def _listening_workers(supervisor: int, port: int, want: int) -> list[int]:
    """The worker processes listening on ``port``, once ``want`` of them are."""
    deadline = time.monotonic() + 20
    while True:
        found = [c.pid for c in psutil.Process(supervisor).children()
                 if _on_port(c.pid, port, psutil.CONN_LISTEN)]
        if len(found) >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@contextlib.contextmanager
def _two_worker_edge(tmp_path: Path, body: bytes) -> Iterator[tuple[NodeProcess, int]]:
    """An edge process of two workers in front of an origin serving ``body`` at OBJ."""
    origin = TestOrigin()
    origin.put(OBJ, body)
    with serve(origin) as osrv, node_process(tmp_path, "edge", osrv.url, workers=2) as edge:
        yield edge, int(edge.url.rsplit(":", 1)[1])


def test_a_burst_of_connections_reaches_both_workers(tmp_path: Path) -> None:
    with _two_worker_edge(tmp_path, b"x" * 1000) as (edge, port):
        workers = _listening_workers(edge.pid, port, 2)
        assert len(workers) == 2, workers
        assert _on_port(edge.pid, port, psutil.CONN_LISTEN) == 0  # the supervisor only binds
        socks = []
        answered = []
        lock = threading.Lock()

        def one() -> None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % OBJ.encode())
            data = b""
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 1000:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            with lock:
                socks.append(sock)  # kept open: its worker still holds the connection
                answered.append(data.startswith(b"HTTP/1.1 200"))

        threads = [threading.Thread(target=one) for _ in range(CONNECTIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        try:
            assert answered.count(True) == CONNECTIONS
            per_worker = [_on_port(pid, port, psutil.CONN_ESTABLISHED) for pid in workers]
            assert sum(per_worker) == CONNECTIONS, per_worker
            # spread by a hash of each connection's address: 64 over two sockets, each gets
            # fewer than 8 about once in ten billion
            assert min(per_worker) >= 8, per_worker
        finally:
            for sock in socks:
                sock.close()


def test_a_worker_killed_is_replaced_on_a_socket_of_its_own(tmp_path: Path) -> None:
    """kill -9 of one worker: the others keep answering, the supervisor starts a new one,
    and it listens on a socket of its own at the same address."""
    with _two_worker_edge(tmp_path, b"y" * 500) as (edge, port):
        before = _listening_workers(edge.pid, port, 2)
        assert len(before) == 2
        psutil.Process(before[0]).kill()
        fresh = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(limits=fresh, timeout=10) as client:
            for _ in range(20):  # new connections while one worker is gone
                r = client.get(edge.url + OBJ)
                assert r.status_code == 200 and r.content == b"y" * 500
        deadline = time.monotonic() + 30
        after: list[int] = []
        while time.monotonic() < deadline:
            after = _listening_workers(edge.pid, port, 2)
            if len(after) == 2 and before[0] not in after:
                break
            time.sleep(0.2)
        assert len(after) == 2 and before[1] in after and before[0] not in after, (before, after)
        with httpx.Client(limits=fresh, timeout=10) as client:
            for _ in range(20):
                assert client.get(edge.url + OBJ).status_code == 200


def test_workers_end_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    """kill -9 of the supervisor: its workers notice they were re-parented and shut down
    (uvicorn's lived on as orphans, each still answering on a socket of its own; a stuck one
    burned a core for half an hour), so a restart finds the port free."""
    with _two_worker_edge(tmp_path, b"z" * 100) as (edge, port):
        workers = _listening_workers(edge.pid, port, 2)
        assert len(workers) == 2
        edge.kill()  # SIGKILL: the supervisor stops nothing itself
        deadline = time.monotonic() + 15
        alive = workers
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in workers if psutil.pid_exists(pid)
                     and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
            time.sleep(0.1)
        assert alive == [], alive
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}{OBJ}", timeout=2)
