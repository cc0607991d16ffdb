"""Large stored bodies go out by the server's zero-copy send (``sendfile(2)``): the same
bytes and fields as a read-and-write send, with a slow reader, ranges across slices, HEAD,
a client that leaves midway, and a slice file changed on disk (the answer is cut short)."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy.cache.node import CacheNode
from edgeproxy.cache.slicefiles import FilePiece
from tests.chain import edge_config, serve_edge
from tests.origins import TestOrigin
from tests.servers import ServerThread, serve
from tests.spies import count_sendfiles, lane_answers, stored_file, until_stored, wait_stored

MIB = 1024 * 1024
LARGE = hashlib.shake_256(b"zerocopy").digest(3 * MIB + 4321)  # four 1 MiB slices
HUGE = hashlib.shake_256(b"huge").digest(12 * MIB)  # more than a loopback socket buffers
ONE = hashlib.shake_256(b"one slice").digest(MIB - 99)  # one slice, too large for memory


@pytest.fixture
def origin() -> Iterator[ServerThread]:
    o = TestOrigin()
    o.put("/static/large.bin", LARGE, headers={"cache-control": "max-age=600"})
    o.put("/static/huge.bin", HUGE, headers={"cache-control": "max-age=600"})
    o.put("/static/one.bin", ONE, headers={"cache-control": "max-age=600"})
    with serve(o) as srv:
        yield srv


def _edge(tmp_path: Path, origin: ServerThread, loop: str, extra: str = "",
          **options: Any) -> Any:
    config = edge_config(tmp_path, origin.url,
                         f"log: {{file: {tmp_path / 'access.log'}}}\n" + extra)
    return serve_edge(config, loop=loop, **options)


@pytest.fixture(params=["asyncio", "uvloop"])
def edge(request: pytest.FixtureRequest, tmp_path: Path,
         origin: ServerThread) -> Iterator[ServerThread]:
    with _edge(tmp_path, origin, request.param) as srv:
        yield srv


@pytest.fixture
def sendfiles(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte counts ``os.sendfile`` was asked for, in this process."""
    return count_sendfiles(monkeypatch)


def _stored(client: httpx.Client) -> None:
    first = client.get("/static/large.bin")
    assert first.status_code == 200 and first.content == LARGE
    assert first.headers["x-cache"].startswith("MISS")
    until_stored(client, "/static/large.bin", len(LARGE))


def test_a_stored_large_body_goes_out_by_sendfile_byte_exact(
        edge: ServerThread, sendfiles: list[int], tmp_path: Path) -> None:
    with httpx.Client(base_url=edge.url) as client:
        _stored(client)
        sendfiles.clear()
        hit = client.get("/static/large.bin")
        assert hit.status_code == 200 and hit.headers["x-cache"].startswith("HIT")
        assert hit.content == LARGE
        assert int(hit.headers["content-length"]) == len(LARGE)
        # every slice went by sendfile (but the part of the last one that is read)
        assert sum(sendfiles) >= len(LARGE) - 64 * 1024
        part = client.get("/static/large.bin", headers={"range": f"bytes={MIB - 10}-{3 * MIB}"})
        assert part.status_code == 206 and part.content == LARGE[MIB - 10:3 * MIB + 1]
        head = client.head("/static/large.bin")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(LARGE))
        again = client.get("/static/large.bin", headers={"user-agent": "zc-test"})
        assert again.content == LARGE  # the connection is still in step
    # the access log counts the bytes sent by sendfile
    log, deadline = tmp_path / "access.log", time.monotonic() + 5
    while b"zc-test" not in (log.read_bytes() if log.exists() else b"") \
            and time.monotonic() < deadline:
        time.sleep(0.02)  # the sink writes lines out in batches
    (line,) = [x for x in log.read_text().splitlines() if "zc-test" in x]
    assert f'"GET /static/large.bin HTTP/1.1" 200 {len(LARGE)} ' in line


def test_a_large_range_of_a_stored_slice_goes_out_by_sendfile_from_the_fast_lane(
        edge: ServerThread, sendfiles: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """A range too large for memory, inside one stored slice: the server's fast lane (here
    its replay of the same head) sends it from the slice's file, not read into memory first;
    the same bytes and fields as the steps' answer."""
    lane = lane_answers(monkeypatch)  # (status, the body it hands over)
    real_replay = CacheNode.fast_replay

    def replaying(self: CacheNode, *args: Any) -> Any:  # the same head again: its record
        replayed = real_replay(self, *args)
        if replayed is not None:
            lane.append((replayed[1].status, replayed[0][-1]))
        return replayed

    monkeypatch.setattr(CacheNode, "fast_replay", replaying)
    start, end = MIB + 1000, MIB + 1000 + 512 * 1024 - 1  # 512 KiB inside slice 1
    asked = {"range": f"bytes={start}-{end}"}
    with httpx.Client(base_url=edge.url) as client:
        _stored(client)
        client.get("/static/large.bin", headers=asked)  # the object's facts are remembered
        sendfiles.clear()
        lane.clear()
        fast = client.get("/static/large.bin", headers=asked)
        assert [status for status, _ in lane] == [206]
        assert isinstance(lane[0][1], FilePiece)  # handed over unread
        assert sum(sendfiles) == end - start + 1  # all of it, by sendfile
        # a validator takes a request through the steps: their answer is the reference
        steps = client.get("/static/large.bin", headers={
            **asked, "if-modified-since": "Thu, 01 Jan 1970 00:00:00 GMT"})
    for answer in (fast, steps):
        assert answer.status_code == 206 and answer.content == LARGE[start:end + 1]
        assert answer.headers["content-range"] == f"bytes {start}-{end}/{len(LARGE)}"
        assert answer.headers["x-cache"].startswith("HIT")
    skip = ("age", "date")
    assert {n: v for n, v in fast.headers.items() if n not in skip} == \
        {n: v for n, v in steps.headers.items() if n not in skip}


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def test_a_slow_reader_gets_every_byte_in_order(edge: ServerThread,
                                                sendfiles: list[int]) -> None:
    with httpx.Client(base_url=edge.url) as client:
        assert client.get("/static/huge.bin").content == HUGE
        until_stored(client, "/static/huge.bin", len(HUGE))
    sendfiles.clear()
    sock = _connect(edge.url)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    with sock:
        sock.sendall(b"GET /static/huge.bin HTTP/1.1\r\nhost: x\r\n\r\n"
                     b"GET /static/huge.bin HTTP/1.1\r\nhost: x\r\n\r\n")
        time.sleep(0.3)  # the socket fills: the server waits for room
        data = b""
        while data.count(HUGE) < 2:
            chunk = sock.recv(1 << 20)
            assert chunk
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and rest.startswith(HUGE)
    assert rest[len(HUGE):].startswith(b"HTTP/1.1 200")
    # the socket was full at times: some calls sent less than they were asked for
    assert len(sendfiles) > 2 * 12


def test_a_client_that_leaves_midway_does_not_hurt_the_next(edge: ServerThread) -> None:
    with httpx.Client(base_url=edge.url) as client:
        _stored(client)
    for _ in range(5):
        sock = _connect(edge.url)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /static/large.bin HTTP/1.1\r\nhost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # a reset, mid-body
    with httpx.Client(base_url=edge.url) as client:
        assert client.get("/static/large.bin").content == LARGE
        assert client.get("/healthz").status_code == 200


def test_a_slice_changed_on_disk_is_never_sent_complete(edge: ServerThread,
                                                        tmp_path: Path) -> None:
    with httpx.Client(base_url=edge.url) as client:
        _stored(client)
        second = stored_file(tmp_path / "var", LARGE[MIB:2 * MIB])
        data = bytearray(second.read_bytes())
        data[1000] ^= 0xFF
        second.write_bytes(bytes(data))
        try:
            got = client.get("/static/large.bin").content
        except httpx.HTTPError:
            got = b""
        assert got != LARGE[:1000 + MIB] + bytes([data[1000]]) + LARGE[MIB + 1001:]
        assert client.get("/static/large.bin").content == LARGE  # fetched again, right


def _with_marker(one: bytes) -> TestOrigin:
    o = TestOrigin()
    o.put("/static/one.bin", one, headers={"cache-control": "max-age=600"})
    o.put("/static/marker.bin", b"m" * 100, headers={"cache-control": "max-age=600"})
    return o


def _stored_before_marker(client: httpx.Client) -> None:
    """Wait until the object fetched last is stored, by a small one fetched after it (the
    group commit stores in order): a range hit on a one-slice object itself would copy it
    to the memory tier, and its hits would not go by ``sendfile`` any more."""
    wait_stored(client, "/static/marker.bin", b"m" * 100)


def test_a_large_one_slice_hit_in_the_fast_lane_goes_by_sendfile(
        tmp_path: Path, sendfiles: list[int]) -> None:
    o = _with_marker(ONE)
    with serve(o) as origin, _edge(tmp_path, origin, "uvloop") as edge, \
            httpx.Client(base_url=edge.url) as client:
        assert client.get("/static/one.bin").content == ONE
        _stored_before_marker(client)
        sendfiles.clear()
        for _ in range(3):
            hit = client.get("/static/one.bin")
            assert hit.status_code == 200 and hit.content == ONE
            assert hit.headers["x-cache"].startswith("HIT")
            assert hit.headers["content-length"] == str(len(ONE))
        # all of it in one call each: no byte held back to go as a segment of its own
        assert sendfiles == [len(ONE)] * 3
        # a range of it is read as before (and a small object stays in memory)
        part = client.get("/static/one.bin", headers={"range": "bytes=10-20"})
        assert part.status_code == 206 and part.content == ONE[10:21]
        assert sendfiles == [len(ONE)] * 3


def test_a_fast_lane_file_changed_after_its_check_cuts_the_answer_short(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeproxy.cache.slicefiles import SliceFile

    o = _with_marker(ONE)
    with serve(o) as origin, _edge(tmp_path, origin, "uvloop") as edge:
        with httpx.Client(base_url=edge.url) as client:
            assert client.get("/static/one.bin").content == ONE
            _stored_before_marker(client)
        monkeypatch.setattr(SliceFile, "unchanged", lambda self: False)
        sock = _connect(edge.url)
        with sock:
            sock.sendall(b"GET /static/one.bin HTTP/1.1\r\nhost: x\r\n\r\n")
            data = b""
            while chunk := sock.recv(1 << 20):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert f"content-length: {len(ONE)}".encode() in head.lower()
        assert len(body) < len(ONE)  # cut short: never complete-looking


@pytest.mark.parametrize("lane", ["fast", "steps"])
def test_a_file_changed_while_a_slow_reader_takes_it_stops_its_sends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lane: str) -> None:
    """No byte is held back to go after a check; instead the file is checked before its
    first ``sendfile`` and after every wait for room, so a file found written to while a
    reader drains the socket sends nothing more: the answer is cut short, its bytes so far
    right. A large range inside the slice is the fast lane's (`send_rest`), the whole body
    the steps' (`ZeroCopySend`)."""
    from edgeproxy.cache.slicefiles import SliceFile

    first, last = (1000, 11 * MIB) if lane == "fast" else (0, len(HUGE) - 1)
    asked = f"range: bytes={first}-{last}\r\n" if lane == "fast" else ""
    answered: list[bool] = []  # whether the fast lane answered, per request
    real = CacheNode.fast_reply

    def spying(self: CacheNode, *args: Any) -> Any:
        reply = real(self, *args)
        answered.append(reply is not None)
        return reply

    monkeypatch.setattr(CacheNode, "fast_reply", spying)

    o = TestOrigin()
    o.put("/static/huge.bin", HUGE, headers={"cache-control": "max-age=600"})
    one_slice = f"cache: {{slice_size: {16 * MIB}}}\n"  # (the fast lane's: one slice)
    with serve(o) as origin, _edge(tmp_path, origin, "uvloop", one_slice) as edge:
        with httpx.Client(base_url=edge.url) as client:
            assert client.get("/static/huge.bin").content == HUGE
            until_stored(client, "/static/huge.bin", len(HUGE))
            client.get("/static/huge.bin", headers={"range": f"bytes={first}-{last}"})
        answered.clear()
        checks: list[int] = []

        def unchanged(self: SliceFile) -> bool:
            checks.append(1)
            return len(checks) == 1  # as it was when first sent from, then written to

        monkeypatch.setattr(SliceFile, "unchanged", unchanged)
        host, port = edge.url.removeprefix("http://").split(":")
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # (a slow reader)
            sock.settimeout(10)
            sock.connect((host, int(port)))
            sock.sendall(f"GET /static/huge.bin HTTP/1.1\r\nhost: x\r\n{asked}\r\n".encode())
            data = sock.recv(4096)
            time.sleep(0.3)  # the socket is full: the rest waits for room
            while chunk := sock.recv(1 << 20):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206" if asked else b"HTTP/1.1 200")
    assert answered == [lane == "fast"] and len(checks) >= 2
    assert len(body) < last - first + 1 and body == HUGE[first:first + len(body)]


def test_a_slice_file_changed_after_its_check_cuts_the_steps_answer_short(
        edge: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeproxy.cache.slicefiles import SliceFile

    with httpx.Client(base_url=edge.url) as client:
        _stored(client)
    checks: list[int] = []

    def unchanged(self: SliceFile) -> bool:
        checks.append(1)
        return len(checks) < 2  # the first piece is found as it was, the second changed

    monkeypatch.setattr(SliceFile, "unchanged", unchanged)
    first, last = MIB - 70_000, MIB + 500_000  # two pieces, both sent by sendfile
    sock = _connect(edge.url)
    with sock:
        sock.sendall(f"GET /static/large.bin HTTP/1.1\r\nhost: x\r\n"
                     f"range: bytes={first}-{last}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(1 << 20):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206") and len(checks) == 2
    assert len(body) < last - first + 1  # the changed piece never went: cut short
    assert body == LARGE[first:first + len(body)]


def test_over_tls_nothing_bypasses_the_encryption(tmp_path: Path, origin: ServerThread,
                                                 sendfiles: list[int]) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    trust = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with _edge(tmp_path, origin, "uvloop", ssl_certfile=str(tmp_path / "server.pem"),
               ssl_keyfile=str(tmp_path / "server.key")) as edge, \
            httpx.Client(base_url=edge.url, verify=trust) as client:
        for path, body in (("/static/large.bin", LARGE), ("/static/one.bin", ONE)):
            assert client.get(path).content == body
            until_stored(client, path, len(body))
            for _ in range(2):  # (one slice: the fast lane's answer)
                hit = client.get(path)
                assert hit.headers["x-cache"].startswith("HIT") and hit.content == body
    assert sendfiles == []


def test_followers_of_a_fill_get_its_bytes_by_sendfile(tmp_path: Path,
                                                       sendfiles: list[int]) -> None:
    """A cold object asked for by many clients at once: the fill's bytes go to each of them
    from its file as they arrive, byte-exact, the last byte after the whole hash matched."""
    from concurrent.futures import ThreadPoolExecutor

    o = TestOrigin()
    o.chunk_delay = 0.01  # 64 KiB every 10 ms: the followers wait for the fill
    body = hashlib.shake_256(b"cold").digest(2 * MIB + 777)
    path = "/v/t1/" + hashlib.sha256(body).hexdigest()  # content-addressed: hashed whole
    o.put(path, body)
    o.put("/static/cold.bin", LARGE, headers={"cache-control": "max-age=600"})
    with serve(o) as origin, _edge(tmp_path, origin, "uvloop") as edge:
        def get(target: str) -> tuple[bytes, str]:
            with httpx.Client(base_url=edge.url, timeout=30) as client:
                resp = client.get(target)
                return resp.content, resp.headers.get("x-cache", "")

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(get, [path] * 4 + ["/static/cold.bin"] * 4))
    assert [r[0] for r in results] == [body] * 4 + [LARGE] * 4
    assert o.count(path) == 1 and o.count("/static/cold.bin") == 1
    assert sum(sendfiles) > 4 * MIB  # followed by sendfile, not read and copied
