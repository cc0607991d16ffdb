"""Issue 10, operations: drain on SIGTERM within `shutdown_grace`, /readyz apart from /healthz,
and reload of content classes and TTLs on SIGHUP without dropping connections (real `edgeproxy
serve` subprocesses, real signals)."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy.lifecycle import Lifecycle
from tests.nodes import NodeProcess
from tests.origins import TestOrigin, pattern
from tests.servers import ServerThread, alive_app, free_port, serve

BIG = 2 * 1024 * 1024
CLASSES = """\
content_classes:
  - {{name: media, paths: ["/v/t1/*"], ttl: {{edge: 7d, shield: 30d}}, immutable: true}}
  - {{name: profile_photo, paths: ["/pp/*"], ttl: {{edge: {edge_ttl}, shield: 7d}}}}
"""


@pytest.fixture
def origin() -> Iterator[tuple[TestOrigin, ServerThread]]:
    o = TestOrigin()
    o.put("/v/t1/big", pattern(BIG))
    o.put("/pp/alice", b"photo" * 100)
    with serve(o) as srv:
        yield o, srv


def write_config(tmp_path: Path, port: int, *, grace: str = "10s", workers: int = 1,
                 edge_ttl: str = "1d") -> Path:  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: var\nlog_level: info\nlog: {{access: 'off'}}\n"
                      f"edge: {{port: {port}, workers: {workers}, shutdown_grace: {grace}}}\n"
                      + CLASSES.format(edge_ttl=edge_ttl))
    return config


class Download(threading.Thread):
    """A streamed GET in the background; ``started`` once the first bytes arrived."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.started = threading.Event()
        self.body = b""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=30) as r:
                for chunk in r.iter_bytes():
                    self.body += chunk
                    self.started.set()
        except BaseException as exc:  # recorded for the test to judge
            self.error = exc
        finally:
            self.started.set()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_sigterm_lets_a_download_in_flight_finish(
        tmp_path: Path, origin: tuple[TestOrigin, ServerThread]) -> None:
    test_origin, osrv = origin
    test_origin.chunk_delay = 0.05  # 32 chunks of 64 KiB: about 1.6 s to send
    port = free_port()
    edge = NodeProcess(write_config(tmp_path, port), "edge", f"http://127.0.0.1:{port}",
                       upstream=osrv.url).start()
    try:
        download = Download(edge.url + "/v/t1/big")
        download.start()
        assert download.started.wait(10)
        edge.signal(signal.SIGTERM)
        time.sleep(0.3)
        refused_while_draining = not port_open(port)
        still_running = download.is_alive()
        # uvicorn re-raises the signal once drained: the exit status says SIGTERM, as
        # service managers expect of a process that honoured it.
        assert edge.wait(15) in (0, -signal.SIGTERM)
        download.join(10)
    finally:
        edge.kill()
    assert still_running  # the signal did arrive mid-download
    assert refused_while_draining  # no new connections once draining
    assert download.error is None and download.body == pattern(BIG)


def test_grace_bounds_the_drain(tmp_path: Path,
                                origin: tuple[TestOrigin, ServerThread]) -> None:
    test_origin, osrv = origin
    test_origin.chunk_delay = 0.25  # about 8 s to send: longer than the grace
    port = free_port()
    edge = NodeProcess(write_config(tmp_path, port, grace="1s"), "edge",
                       f"http://127.0.0.1:{port}", upstream=osrv.url).start()
    try:
        download = Download(edge.url + "/v/t1/big")
        download.start()
        assert download.started.wait(10)
        signalled = time.monotonic()
        edge.signal(signal.SIGTERM)
        edge.wait(15)
        took = time.monotonic() - signalled
        download.join(10)
    finally:
        edge.kill()
        test_origin.chunk_delay = 0  # let the origin finish its side quickly
    assert 0.8 < took < 5, took
    assert len(download.body) < BIG  # cut off at the grace, not completed


def test_readyz_apart_from_healthz(tmp_path: Path,
                                   origin: tuple[TestOrigin, ServerThread]) -> None:
    port = free_port()
    with NodeProcess(write_config(tmp_path, port), "edge", f"http://127.0.0.1:{port}",
                     upstream=origin[1].url) as edge:
        assert httpx.get(edge.url + "/readyz").json() == {"status": "ready", "role": "edge"}

    node = Lifecycle(alive_app, role="edge")
    assert not node.ready  # before startup
    with serve(node) as srv:
        assert httpx.get(srv.url + "/readyz").status_code == 200
        node.drain()
        r = httpx.get(srv.url + "/readyz")
        assert (r.status_code, r.json()["error"]) == (503, "not_ready")
        assert httpx.get(srv.url + "/healthz").text == "alive"  # liveness is the app's


def _local_port(response: httpx.Response) -> int:
    port: int = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    return port


def _wait_for(predicate: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_sighup_reloads_ttls_in_every_worker_without_dropping_connections(
        tmp_path: Path, origin: tuple[TestOrigin, ServerThread]) -> None:
    test_origin, osrv = origin
    test_origin.chunk_delay = 0.05
    port = free_port()
    config = write_config(tmp_path, port, workers=2)
    fresh = httpx.Limits(max_keepalive_connections=0)
    with NodeProcess(config, "edge", f"http://127.0.0.1:{port}", upstream=osrv.url) as edge, \
            httpx.Client(base_url=edge.url) as kept, \
            httpx.Client(base_url=edge.url, limits=fresh) as client:
        before = kept.get("/pp/alice")
        before_port = _local_port(before)
        assert before.headers["cache-control"] == "public, max-age=86400"
        download = Download(edge.url + "/v/t1/big")
        download.start()
        assert download.started.wait(10)

        write_config(tmp_path, port, workers=2, edge_ttl="60s")
        edge.signal(signal.SIGHUP)
        assert _wait_for(lambda: edge.stderr().count("reloaded the config") == 2), \
            edge.stderr()
        after = kept.get("/pp/alice")
        after_port = _local_port(after)
        fresh_answers = {client.get("/pp/alice").headers["cache-control"] for _ in range(10)}
        download.join(15)

        config.write_text("edge: [this is not a mapping\n")
        edge.signal(signal.SIGHUP)
        assert _wait_for(lambda: "reload failed" in edge.stderr())
        still = client.get("/pp/alice")
        assert edge.process is not None and edge.process.poll() is None
    assert after.headers["cache-control"] == "public, max-age=60"
    assert after_port == before_port  # same connection, kept open
    assert fresh_answers == {"public, max-age=60"}  # both workers reloaded
    assert download.error is None and download.body == pattern(BIG)
    assert still.headers["cache-control"] == "public, max-age=60"  # bad file: config kept
