"""Replays: a request head the fast lane answered from memory or from stored slice files,
sent again byte for byte, is answered again from its record without parsing, over real
sockets: byte-exact with the lane's own answer, Age and Date renewed, on any connection,
logged and counted; never once its object is purged (in any worker), stale, gone from memory
or its file changed on disk; never for heads in pieces or pipelined; and every answer equals
the parsed one (a reference model over random heads)."""

from __future__ import annotations

import hashlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy.accesslog import AccessLog
from edgeproxy.cache.node import CacheNode
from edgeproxy.cache.replays import BodyAt, Replay, Replays
from edgeproxy.fastanswer import fast_lane_of
from edgeproxy.guard import uvicorn_http_options
from edgeproxy.protocol import GuardedHttpToolsProtocol
from edgeproxy.server import node_app
from edgeproxy.zerocopy import WIDE_SEND
from tests.chain import edge_config
from tests.nodes import NodeProcess
from tests.origins import TestOrigin
from tests.servers import ServerThread, free_port, serve

BODY = bytes(range(256)) * 20  # 5,120 bytes: kept in memory whole
MIB = 1024 * 1024
LARGE = hashlib.shake_256(b"replays").digest(2 * MIB + 999)  # slices, not in memory whole
HUGE = hashlib.shake_256(b"replays, huge").digest(12 * MIB + 5)  # > what a socket takes at once
TOKEN = "t0ken-for-replay-tests"


@pytest.fixture
def origin() -> Iterator[tuple[TestOrigin, ServerThread]]:
    o = TestOrigin()
    o.put("/v/t1/obj", BODY)
    o.put("/static/short.bin", BODY, headers={"cache-control": "max-age=2"})
    o.put("/static/large.bin", LARGE, headers={"cache-control": "max-age=600"})
    o.put("/static/huge.bin", HUGE, headers={"cache-control": "max-age=600"})
    with serve(o) as srv:
        yield o, srv


@pytest.fixture
def edge(tmp_path: Path, origin: tuple[TestOrigin, ServerThread],
         ) -> Iterator[tuple[ServerThread, CacheNode]]:
    config = edge_config(tmp_path, origin[1].url, f"admin_token: {TOKEN}\n")
    app = node_app(config, "edge")
    found = fast_lane_of(app)
    assert found is not None
    with serve(app, proxy_headers=False, **uvicorn_http_options(config.http_limits)) as srv:
        yield srv, found[0]


@pytest.fixture
def replayed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The status of every answer given from a record."""
    served: list[int] = []
    real = CacheNode.fast_replay

    def counting(self: CacheNode, *args: Any) -> Any:
        answer = real(self, *args)
        if answer is not None:
            served.append(answer[1].status)
        return answer

    monkeypatch.setattr(CacheNode, "fast_replay", counting)
    return served


def _head(path: str, port: int, rng: str | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "User-Agent: replay-test"]
    if rng:
        lines.append(f"Range: {rng}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Conn:
    """One keep-alive connection that sends raw bytes and reads whole answers."""

    def __init__(self, srv: ServerThread | NodeProcess, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:  # (before connecting: the window it announces is this small)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", srv.port))
        self.buf = b""

    def ask(self, payload: bytes, answers: int = 1) -> list[tuple[bytes, bytes]]:
        self.sock.sendall(payload)
        return [self.answer() for _ in range(answers)]

    def warm(self, node: CacheNode, head: bytes) -> list[tuple[bytes, bytes]]:
        """Ask ``head`` until the lane has kept its answer (a miss first, then the lane;
        under load the fill may commit a little later)."""
        answers: list[tuple[bytes, bytes]] = []
        while node.fast.replays.get(head) is None:
            assert len(answers) < 50, "no record was kept"
            answers += self.ask(head)
            time.sleep(0.01 * len(answers))
        return answers

    def answer_any(self) -> tuple[bytes, bytes]:
        """One answer of any framing: Content-Length, or none (read to the close)."""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head = self.buf.partition(b"\r\n\r\n")[0]
        if re.search(rb"(?im)^content-length:", head):
            return self.answer()
        while True:  # (an answer without a length ends with the connection)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                break
            self.buf += chunk
        head, _, body = self.buf.partition(b"\r\n\r\n")
        self.buf = b""
        return head, body

    def answer(self) -> tuple[bytes, bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return head, body

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 20)
        assert chunk, "connection closed"
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def _warmed(srv: ServerThread, node: CacheNode) -> tuple[Conn, bytes]:
    """A connection on which the head of a plain GET of the hot object has its record."""
    head = _head("/v/t1/obj", srv.port)
    conn = Conn(srv)
    conn.warm(node, head)
    return conn, head


def _field(head: bytes, name: bytes) -> bytes | None:
    found = re.search(rb"(?im)^" + name + rb": *([^\r\n]*)", head)
    return found.group(1) if found else None


def _without_moment(head: bytes) -> bytes:
    return re.sub(rb"(?im)^(age|date): [^\r\n]*\r\n", b"", head + b"\r\n")


def test_a_head_sent_again_is_answered_again_byte_exact_on_any_connection(
        edge: tuple[ServerThread, CacheNode], origin: tuple[TestOrigin, ServerThread],
        replayed: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    srv, node = edge
    logged: list[tuple[int, str]] = []
    real = AccessLog.write

    def logging(self: AccessLog, scope: Any, status: int, sent: int, x_cache: str,
                *rest: Any) -> None:
        logged.append((status, x_cache))
        real(self, scope, status, sent, x_cache, *rest)

    monkeypatch.setattr(AccessLog, "write", logging)
    for path, rng, expected in [("/v/t1/obj", None, BODY),
                                ("/v/t1/obj", "bytes=100-2099", BODY[100:2100]),
                                ("/static/large.bin", f"bytes={MIB + 5}-{MIB + 70_004}",
                                 LARGE[MIB + 5:MIB + 70_005])]:
        head = _head(path, srv.port, rng)
        one = Conn(srv)
        answers = one.warm(node, head)  # a miss; the lane (kept)
        lane = answers[-1]
        replayed.clear()
        answers += one.ask(head) + one.ask(head)
        other = Conn(srv)
        answers += other.ask(head)
        assert replayed == [206 if rng else 200] * 3  # every later one from its record
        for head_bytes, body in answers:
            assert body == expected
            assert _field(head_bytes, b"content-length") == str(len(expected)).encode()
        for head_bytes, _ in answers[-3:]:  # the same answer as the lane's, but the moment
            assert _without_moment(head_bytes) == _without_moment(lane[0])
            assert _field(head_bytes, b"x-cache") == b"HIT from edge-1"
        one.close()
        other.close()
    assert origin[0].count("/v/t1/obj") == 1
    assert logged.count((200, "HIT from edge-1")) >= 4  # replays are logged as hits
    assert logged.count((206, "HIT from edge-1")) >= 8
    metrics = httpx.get(srv.url + "/metrics").text
    hits = re.findall(r'^edgeproxy_requests_total\{[^}]*result="HIT"[^}]*\} (\S+)$',
                      metrics, re.M)
    assert sum(float(v) for v in hits) >= 12  # and counted


@pytest.mark.parametrize(("rng", "expected"), [
    (None, LARGE),  # three slices: two files and an inline last one
    (f"bytes={MIB - 5}-{2 * MIB + 5}", LARGE[MIB - 5:2 * MIB + 6]),  # across slices
])
def test_an_answer_sent_from_slice_files_is_replayed_from_them(
        edge: tuple[ServerThread, CacheNode], origin: tuple[TestOrigin, ServerThread],
        replayed: list[int], rng: str | None, expected: bytes) -> None:
    srv, node = edge
    assert httpx.get(srv.url + "/static/large.bin").content == LARGE  # stored whole
    head = _head("/static/large.bin", srv.port, rng)
    conn = Conn(srv)
    lane = conn.warm(node, head)[-1]
    record = node.fast.replays.get(head)
    assert record is not None and record.at.files
    replayed.clear()
    answers = conn.ask(head) + conn.ask(head) + Conn(srv).ask(head)
    assert replayed == [206 if rng else 200] * 3
    for head_bytes, body in answers:
        assert body == expected
        assert _without_moment(head_bytes) == _without_moment(lane[0])
    assert origin[0].count("/static/large.bin") == 1
    conn.close()


def test_an_answer_whose_body_is_still_going_out_is_kept_and_replayed(
        edge: tuple[ServerThread, CacheNode], origin: tuple[TestOrigin, ServerThread],
        replayed: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """A body larger than the socket can take at once (a large answer's send buffer is
    `zerocopy.WIDE_SEND`, doubled by Linux; the client's receive buffer is kept small): the
    lane's answer goes on after its head was handled (the rest as the client reads), and its
    record is kept and replayed all the same, the rest again going out as the client reads."""
    rests: list[int] = []
    real = GuardedHttpToolsProtocol._send_rest

    async def counting(self: Any, answer: Any, piece: Any, rest: int) -> None:
        rests.append(rest)
        await real(self, answer, piece, rest)

    monkeypatch.setattr(GuardedHttpToolsProtocol, "_send_rest", counting)
    srv, node = edge
    assert httpx.get(srv.url + "/static/huge.bin").content == HUGE
    head = _head("/static/huge.bin", srv.port)
    assert len(HUGE) > 2 * WIDE_SEND + 2 * 65536
    conn = Conn(srv, rcvbuf=65536)
    conn.warm(node, head)
    rests.clear()
    replayed.clear()
    answers = conn.ask(head) + conn.ask(head)
    assert replayed == [200, 200] and len(rests) == 2 and all(rests)
    assert all(body == HUGE for _, body in answers)
    assert origin[0].count("/static/huge.bin") == 1
    conn.close()


def test_a_slice_file_changed_on_disk_ends_its_replay(
        edge: tuple[ServerThread, CacheNode], origin: tuple[TestOrigin, ServerThread],
        replayed: list[int], tmp_path: Path) -> None:
    srv, node = edge
    assert httpx.get(srv.url + "/static/large.bin").content == LARGE
    head = _head("/static/large.bin", srv.port)
    conn = Conn(srv)
    conn.warm(node, head)
    assert conn.ask(head)[0][1] == LARGE and replayed == [200]
    stored = [p for p in (tmp_path / "var").rglob("*.val") if p.read_bytes() == LARGE[MIB:2 * MIB]]
    assert len(stored) == 1
    with stored[0].open("r+b") as f:  # one bit of slice 1's byte 77, as a stray write would
        f.seek(77)
        byte = f.read(1)[0]
        f.seek(77)
        f.write(bytes([byte ^ 1]))
    replayed.clear()
    _, body = conn.ask(head)[0]
    assert body == LARGE and replayed == []  # the record's file failed its check
    assert origin[0].count("/static/large.bin") == 2  # the slice was fetched again
    conn.close()


def _ask_twice(srv: ServerThread, node: CacheNode,
               replayed: list[int]) -> tuple[bytes, bytes]:
    """The heads of two replayed answers of the hot object, 2.1 s apart (Age counted up)."""
    conn, head = _warmed(srv, node)
    replayed.clear()
    first, _ = conn.ask(head)[0]
    time.sleep(2.1)
    later, _ = conn.ask(head)[0]
    conn.close()
    assert len(replayed) == 2
    age_first, age_later = int(_field(first, b"age") or b"-1"), int(_field(later, b"age") or b"-1")
    assert age_later - age_first in (2, 3)
    for answer in (first, later):
        assert len(re.findall(rb"(?im)^date:", answer)) == 1
    return first, later


def test_age_is_renewed_and_the_origins_date_kept(
        edge: tuple[ServerThread, CacheNode], replayed: list[int]) -> None:
    """RFC 9110 §6.6.1: the origin dated its answer; a cache forwards that Date (with Age)."""
    first, later = _ask_twice(*edge, replayed)
    assert _field(first, b"date") == _field(later, b"date")


def test_an_undated_answer_is_dated_by_the_nodes_clock_each_time(
        tmp_path: Path, replayed: list[int]) -> None:
    """RFC 9110 §6.6.1: an answer that came without a Date gets the recipient's, renewed."""
    undated = TestOrigin()
    undated.put("/v/t1/obj", BODY)
    with serve(undated, date_header=False) as osrv:
        config = edge_config(tmp_path, osrv.url, f"admin_token: {TOKEN}\n")
        app = node_app(config, "edge")
        found = fast_lane_of(app)
        assert found is not None
        with serve(app, proxy_headers=False, **uvicorn_http_options(config.http_limits)) as srv:
            first, later = _ask_twice(srv, found[0], replayed)
    assert _field(first, b"date") != _field(later, b"date")


def test_a_purge_ends_a_record(edge: tuple[ServerThread, CacheNode],
                               origin: tuple[TestOrigin, ServerThread],
                               replayed: list[int]) -> None:
    srv, node = edge
    rng = f"bytes={MIB + 10}-{MIB + 20_009}"
    head = _head("/static/large.bin", srv.port, rng)
    conn = Conn(srv)
    assert httpx.get(srv.url + "/static/large.bin").content == LARGE  # stored whole
    conn.warm(node, head)
    assert conn.ask(head)[0][1] == LARGE[MIB + 10:MIB + 20_010]
    assert replayed == [206]  # its record answered
    changed = bytes(reversed(LARGE))
    origin[0].put("/static/large.bin", changed, headers={"cache-control": "max-age=600"})
    purged = httpx.post(srv.url + "/_admin/purge", json={"paths": ["/static/large.bin"]},
                        headers={"authorization": f"Bearer {TOKEN}"})
    assert purged.json() == {"purged": 1}
    replayed.clear()
    head_bytes, body = conn.ask(head)[0]
    assert body == changed[MIB + 10:MIB + 20_010]  # the new object, fetched
    assert replayed == [] and _field(head_bytes, b"x-cache") != b"HIT from edge-1"
    for _ in range(3):
        assert conn.ask(head)[0][1] == changed[MIB + 10:MIB + 20_010]
    conn.close()


def test_a_stale_object_is_not_replayed(edge: tuple[ServerThread, CacheNode],
                                        origin: tuple[TestOrigin, ServerThread],
                                        replayed: list[int]) -> None:
    srv, node = edge
    head = _head("/static/short.bin", srv.port)
    conn = Conn(srv)
    # The origin's Date has whole seconds, so a stored answer may be up to a second old when it
    # lands: under load the object can go stale (and be revalidated) before the lane keeps it.
    conn.warm(node, head)
    fetched = origin[0].count("/static/short.bin")
    time.sleep(2.2)  # max-age=2 has passed, whatever the age it was kept at
    replayed.clear()
    head_bytes, body = conn.ask(head)[0]
    assert body == BODY and replayed == []
    assert _field(head_bytes, b"x-cache") != b"HIT from edge-1"  # the steps revalidated
    assert origin[0].count("/static/short.bin") == fetched + 1
    conn.close()


def test_an_object_gone_from_memory_is_answered_the_usual_way(
        edge: tuple[ServerThread, CacheNode], replayed: list[int]) -> None:
    srv, node = edge
    conn, head = _warmed(srv, node)
    node.hot.clear()  # (as an eviction would)
    replayed.clear()
    head_bytes, body = conn.ask(head)[0]
    assert body == BODY and replayed == []  # its record held no bytes to send
    assert _field(head_bytes, b"x-cache") == b"HIT from edge-1"
    conn.close()


def test_pipelined_or_split_heads_are_parsed_and_answered_in_order(
        edge: tuple[ServerThread, CacheNode], replayed: list[int]) -> None:
    srv, node = edge
    conn, head = _warmed(srv, node)
    ranged = _head("/v/t1/obj", srv.port, "bytes=0-9")
    replayed.clear()
    answers = conn.ask(head + ranged + head, answers=3)  # one chunk, three requests
    assert [body for _, body in answers] == [BODY, BODY[:10], BODY]
    conn.sock.sendall(head[:20])
    time.sleep(0.05)
    answers = conn.ask(head[20:])
    assert answers[0][1] == BODY
    assert replayed == []  # neither was one whole head: both were parsed
    assert conn.ask(head)[0][1] == BODY and replayed == [200]
    conn.close()


def test_other_heads_do_not_share_a_record(
        edge: tuple[ServerThread, CacheNode], replayed: list[int]) -> None:
    srv, node = edge
    conn, head = _warmed(srv, node)
    with_validator = head.replace(b"\r\n\r\n", b"\r\nIf-None-Match: \"nope\"\r\n\r\n")
    close = head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    replayed.clear()
    head_bytes, body = conn.ask(with_validator)[0]
    assert replayed == [] and body == BODY  # a validator goes through the steps
    assert head_bytes.startswith(b"HTTP/1.1 200 ")
    assert len(node.fast.replays) == 1
    conn.ask(close)
    assert replayed == [] and len(node.fast.replays) == 1
    conn.close()


@pytest.mark.parametrize(("age", "now", "until"), [
    (10.25, 100.5, 101.0),  # Date turns first
    (10.75, 100.125, 100.375),  # Age turns first
    (0.0, 50.0, 51.0),
])
def test_a_head_holds_until_age_or_date_would_read_differently(
        age: float, now: float, until: float) -> None:
    class Fresh:
        def age(self, at: float) -> float:
            return age + (at - now)

    class Meta:
        content_class = "media"
        freshness = Fresh()

    record = Replay("/x", b"/x", [], Meta(), BodyAt(None, 0, None), 200,  # type: ignore[arg-type]
                    b"HTTP/1.1 200 OK\r\n", b"", dated=False)
    calls: list[float] = []
    extra = [(b"server", b"edgeproxy")]

    def moment() -> list[tuple[bytes, bytes]]:
        calls.append(now)
        return [(b"age", b"%d" % int(age))]

    head = record.head_at(now, extra, moment)
    assert head == b"HTTP/1.1 200 OK\r\nage: %d\r\nserver: edgeproxy\r\n\r\n" % int(age)
    assert record.until == pytest.approx(until)
    assert record.head_at(until - 0.001, extra, moment) is head and len(calls) == 1
    record.head_at(until, extra, moment)
    assert len(calls) == 2
    record.head_at(until, list(extra), moment)  # the server's fields were renewed
    assert len(calls) == 3


def test_records_are_bounded_and_long_heads_are_not_kept() -> None:
    replays = Replays(size=3)
    record: Replay = object()  # type: ignore[assignment]  # (kept, never looked into)
    for i in range(5):
        replays.keep(b"GET /%d" % i, record)
    assert len(replays) == 3 and replays.get(b"GET /0") is None
    assert replays.get(b"GET /4") is record
    replays.keep(b"GET /" + b"x" * 4096, record)
    assert replays.get(b"GET /" + b"x" * 4096) is None
    replays.drop(b"GET /4")
    assert replays.get(b"GET /4") is None
    replays.clear()
    assert len(replays) == 0


def test_any_head_sent_again_is_answered_as_it_was_answered_parsed(
        edge: tuple[ServerThread, CacheNode], replayed: list[int]) -> None:
    """A reference model: each head is answered once parsed (after a first answer that may be
    a miss), then sent again (and again) on fresh and reused connections; every later answer
    must equal that one but for Age and Date, whether a record answered it or not. Heads
    vary where a record could go wrong: ranges (valid, invalid, several, past the end),
    validators, case and spacing of fields, duplicate fields, dot segments and
    percent-encoding, HTTP/1.0, Connection: close."""
    import random

    srv, _node = edge
    rng = random.Random(1234)
    assert httpx.get(srv.url + "/static/large.bin").content == LARGE  # stored, 3 slices
    ranges = ["bytes=0-99", "bytes=100-2099", "bytes=5000-", "bytes=-10", "bytes=0-0",
              "bytes=9999999-", "bytes=5-1", "bytes=0-9,20-29", "bytes= 0-9", "items=0-9",
              f"bytes={MIB + 3}-{MIB + 70_000}", f"bytes={2 * MIB - 5}-{2 * MIB + 5}"]
    paths = ["/v/t1/obj", "/static/large.bin", "/v/t1/./obj", "/v/t1/%6Fbj", "/v/t1/obj?x=1"]
    extras = ["", "Accept: */*\r\n", "If-None-Match: \"x\"\r\n", "range: bytes=0-9\r\n",
              "Cache-Control: no-cache\r\n", "X-Trace: 1\r\n"]
    heads = []
    for _ in range(60):
        version = rng.choice(["HTTP/1.1"] * 5 + ["HTTP/1.0"])
        lines = [f"GET {rng.choice(paths)} {version}",
                 f"{rng.choice(['Host', 'host', 'HOST'])}: 127.0.0.1:{srv.port}"]
        if rng.random() < 0.7:
            lines.append(f"{rng.choice(['Range', 'range'])}:{rng.choice([' ', '  ', ''])}"
                         f"{rng.choice(ranges)}")
        if version == "HTTP/1.0" or rng.random() < 0.1:
            lines.append("Connection: close")
        heads.append(("\r\n".join(lines) + "\r\n" + rng.choice(extras) + "\r\n").encode())

    def exchange(head: bytes, conn: Conn | None) -> tuple[bytes, bytes, Conn | None]:
        closing = b"Connection: close" in head or b"HTTP/1.0" in head
        if conn is None or closing:
            conn = Conn(srv)
        conn.sock.sendall(head)
        status_head, body = conn.answer_any()
        boundary = re.search(rb"boundary=([0-9A-Za-z]+)", status_head)
        if boundary:  # (each multipart answer draws its own boundary)
            status_head = status_head.replace(boundary.group(1), b"BOUNDARY")
            body = body.replace(boundary.group(1), b"BOUNDARY")
        if closing:
            conn.close()
            conn = None
        return status_head, body, conn

    conn: Conn | None = None
    for head in heads:
        _, _, conn = exchange(head, conn)  # (a miss first, for a head of a new object)
        first, first_body, conn = exchange(head, conn)
        for _ in range(3):
            again, again_body, conn = exchange(head, conn)
            assert again_body == first_body, head
            assert _without_moment(again) == _without_moment(first), head
    assert replayed  # (some of them were answered from records)
    if conn is not None:
        conn.close()


def test_a_purge_in_one_worker_ends_the_records_of_every_worker(tmp_path: Path) -> None:
    """A two-worker edge process: keep-alive connections spread over both workers, each
    sending one head until its worker answers it from a record; a purge (answered by one
    worker) with the object changed at the origin: every connection gets the new bytes."""
    app = TestOrigin()
    app.put("/static/p.bin", BODY, headers={"cache-control": "max-age=600"})
    changed = bytes(reversed(BODY))
    port = free_port()
    config = tmp_path / "edge.yaml"
    config.write_text(f"data_dir: {tmp_path / 'var'}\nlog_level: warning\n"
                      f"admin_token: {TOKEN}\nedge: {{port: {port}, workers: 2}}\n")
    with serve(app) as origin, \
            NodeProcess(config, "edge", f"http://127.0.0.1:{port}", upstream=origin.url) as edge:
        head = b"GET /static/p.bin HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port
        conns = []
        for _ in range(8):  # (the kernel spreads new connections over the workers)
            conn = Conn(edge)
            for _ in range(5):
                assert conn.ask(head)[0][1] == BODY
            conns.append(conn)
        app.put("/static/p.bin", changed, headers={"cache-control": "max-age=600"})
        purged = httpx.post(edge.url + "/_admin/purge", json={"paths": ["/static/p.bin"]},
                            headers={"authorization": f"Bearer {TOKEN}"})
        assert purged.status_code == 200
        for conn in conns:
            for _ in range(3):
                assert conn.ask(head)[0][1] == changed
            conn.close()
        assert app.count("/static/p.bin") <= 4  # once per worker and version at most
