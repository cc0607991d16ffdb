"""Slow clients (slowloris) against origin, shield and edge as `edgeproxy serve` processes.

Each node gets connections that never finish their request head: some send half a head and
wait, some trickle it a byte at a time for longer than ``http_limits.header_timeout``, some
send nothing at all. Meanwhile ordinary clients are served promptly and byte-exact; once the
deadline passes every held connection is closed, with a 408 JSON answer where part of a head
had arrived (RFC 9110 §15.5.9). Before the head deadline existed, uvicorn held all of them for
as long as the client liked.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy.config import HTTPLimitsConfig, load_config
from edgeproxy.guard import RequestGuard, h11_http_options, uvicorn_http_options
from tests.nodes import NodeProcess, process_stack
from tests.servers import serve
from tests.test_guard import echo
from tests.test_origin import Clock, Origin, make_blob, sha

HEADER_TIMEOUT = 1.5
HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: slow.test\r\nX-Wait: "
TRICKLE = b"GET /healthz HTTP/1.1\r\nHost: slow.test\r\n" + b"X-Slow: " + b"s" * 200 + b"\r\n\r\n"


@dataclass
class Held:
    """One connection a slow client holds: what it still trickles, and what came back."""

    sock: socket.socket
    sent_any: bool
    trickle: bytes = b""
    received: bytes = b""
    closed_at: float | None = None

    @property
    def status(self) -> int | None:
        return int(self.received.split(b" ", 2)[1]) if self.received else None


@dataclass
class Normal:
    """What ordinary clients saw while the slow ones held their connections."""

    latencies: list[float] = field(default_factory=list)
    finished_at: float = 0.0
    errors: list[str] = field(default_factory=list)


def hold(url: str, idle: int, half: int, trickle: int) -> list[Held]:
    """Open ``idle`` silent connections, ``half`` that sent half a head and ``trickle`` that
    will send theirs a byte per step."""
    host, port = url.removeprefix("http://").split(":")
    held = []
    for kind, count in (("idle", idle), ("half", half), ("trickle", trickle)):
        for _ in range(count):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.setblocking(False)
            if kind == "half":
                sock.sendall(HALF_HEAD)
            held.append(Held(sock, kind != "idle", TRICKLE if kind == "trickle" else b""))
    return held


def watch(held: list[Held], until: float, step: float = 0.1) -> None:
    """Trickle a byte per ``step`` on each trickling connection and record what the server
    answers, until every connection is closed or ``until`` (monotonic) passes."""
    while time.monotonic() < until:
        open_ = [h for h in held if h.closed_at is None]
        if not open_:
            return
        for h in open_:
            if h.trickle:
                try:
                    h.sock.send(h.trickle[:1])
                    h.trickle, h.sent_any = h.trickle[1:], True
                except (BlockingIOError, OSError):
                    pass  # the server closed it: the read below sees that
        readable, _, _ = select.select([h.sock for h in open_], [], [], step)
        for h in open_:
            if h.sock in readable:
                try:
                    data = h.sock.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if data:
                    h.received += data
                else:
                    h.closed_at = time.monotonic()


def serve_normally(urls: dict[str, tuple[str, bytes]], rounds: int) -> tuple[Normal,
                                                                          threading.Thread]:
    """Ordinary clients in a thread: ``rounds`` GETs of each node's object, checked byte-exact."""
    normal = Normal()

    def run() -> None:
        with httpx.Client(timeout=10) as http:
            for _ in range(rounds):
                for role, (url, body) in urls.items():
                    started = time.monotonic()
                    try:
                        r = http.get(url)
                        if r.status_code != 200 or r.content != body:
                            normal.errors.append(f"{role}: {r.status_code} {len(r.content)}")
                    except httpx.HTTPError as exc:
                        normal.errors.append(f"{role}: {exc!r}")
                    normal.latencies.append(time.monotonic() - started)
        normal.finished_at = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return normal, thread


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    directory = Path(tmp_path_factory.mktemp("slowloris"))
    with process_stack(directory, f"http_limits: {{header_timeout: {HEADER_TIMEOUT}}}\n") as nodes:
        yield nodes


def upload(stack: dict[str, NodeProcess], blob: bytes) -> str:
    """Upload ``blob`` to the stack's origin; its path."""
    origin = stack["origin"]
    config = load_config(origin.config)
    with httpx.Client(base_url=origin.url, timeout=10) as http:
        client = Origin(origin.url, http, config, Clock())
        http.headers.update(client.auth("alice"))
        client.upload(blob)
    return f"/v/t1/{sha(blob)}"


def test_slow_heads_are_cut_while_others_are_served(stack: dict[str, NodeProcess]) -> None:
    blob = make_blob(12_500)  # 200 KB
    path = upload(stack, blob)
    urls = {role: (node.url + path, blob) for role, node in stack.items()}
    started = time.monotonic()
    held = {role: hold(node.url, idle=20, half=60, trickle=10) for role, node in stack.items()}
    normal, thread = serve_normally(urls, rounds=5)
    every = [h for hs in held.values() for h in hs]
    watch(every, until=started + HEADER_TIMEOUT + 5)
    thread.join(10)
    for h in every:
        h.sock.close()
    # ordinary clients were served, byte-exact and promptly, while the slow ones were held
    assert not normal.errors, normal.errors
    assert len(normal.latencies) == 5 * len(stack) and max(normal.latencies) < 1.0, \
        normal.latencies
    assert normal.finished_at < min(h.closed_at or 0.0 for h in every)
    for role, hs in held.items():
        assert all(h.closed_at is not None for h in hs), f"{role} kept a slow connection"
        for h in hs:
            assert h.closed_at is not None and h.closed_at - started > HEADER_TIMEOUT * 0.8
            # a trickler whose head the server stopped reading may see a reset instead
            if h.received or (h.sent_any and not h.trickle):
                assert h.status == 408, (role, h.received[:200])
                body = json.loads(h.received.partition(b"\r\n\r\n")[2])
                assert body["error"] == "request_timeout" and body["message"]
            elif not h.sent_any:
                assert h.received == b""  # nothing asked, nothing answered
        half = [h for h in hs if not h.trickle and h.sent_any]
        assert all(h.status == 408 for h in half), role
    # the nodes serve others afterwards
    for role, (url, body) in urls.items():
        r = httpx.get(url, timeout=10)
        assert r.status_code == 200 and r.content == body, role


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_both_parsers_time_out_a_slow_head(parser: str) -> None:
    """The pure-Python fallback parser has the same deadline, and a keep-alive connection's
    next head gets its own deadline from the end of the previous answer."""
    limits = HTTPLimitsConfig(header_timeout=0.5)
    options: dict[str, Any] = (uvicorn_http_options(limits) if parser == "httptools"
                               else h11_http_options(limits))  # fmt: skip
    with serve(RequestGuard(echo, limits), lifespan="off", **options) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
            first = b""
            while not first.endswith(b"}"):  # the echo's JSON body
                first += s.recv(65536)
            assert first.startswith(b"HTTP/1.1 200"), first
            time.sleep(0.3)  # the keep-alive connection's next head starts late...
            s.sendall(HALF_HEAD)
            started = time.monotonic()
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := s.recv(65536):
                    answer += chunk
        # ...and is cut 0.5 s after the first answer ended, not 0.5 s after its first byte
        assert time.monotonic() - started < 0.5
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"


def test_keep_alive_bound_closes_an_idle_connection_but_not_a_started_head() -> None:
    """uvicorn's ``timeout_keep_alive`` rides on the lazy head deadline: a connection silent
    after its answer is closed at the keep-alive bound; one whose next head has begun gets
    the (longer) head deadline and its 408."""
    limits = HTTPLimitsConfig(header_timeout=1.2)
    with serve(RequestGuard(echo, limits), lifespan="off", timeout_keep_alive=0.3,
               **uvicorn_http_options(limits)) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        results = {}
        for kind in ("idle", "started"):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
                first = b""
                while not first.endswith(b"}"):
                    first += s.recv(65536)
                assert first.startswith(b"HTTP/1.1 200"), first
                answered = time.monotonic()
                if kind == "started":
                    s.sendall(HALF_HEAD)
                answer = b""
                with contextlib.suppress(ConnectionResetError):
                    while chunk := s.recv(65536):
                        answer += chunk
                results[kind] = (time.monotonic() - answered, answer)
    idle_after, idle_answer = results["idle"]
    assert idle_answer == b"" and 0.25 < idle_after < 1.0, results
    started_after, started_answer = results["started"]
    assert started_answer.startswith(b"HTTP/1.1 408 ") and started_after > 1.0, results
