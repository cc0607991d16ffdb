"""Plain hits answered by the server protocol as the request head is parsed (no ASGI round
trip): same bytes, fields, access-log line and metrics as the app's path, answers in order
on a pipelined connection, and everything that is not a plain hit still reaches the app."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy.cache import joins
from edgeproxy.cache.node import CacheNode
from edgeproxy.cache.slicefiles import FilePiece
from edgeproxy.cache.store import CacheStore
from edgeproxy.config import load_config
from edgeproxy.fastanswer import fast_lane_of
from edgeproxy.guard import uvicorn_http_options
from edgeproxy.server import node_app
from tests.chain import edge_config
from tests.origins import TestOrigin
from tests.servers import ServerThread, serve
from tests.spies import stored_file

BODY = bytes(range(256)) * 20  # 5,120 bytes
MIB = 1024 * 1024
LARGE = hashlib.shake_256(b"large").digest(2 * MIB + 12345)  # three 1 MiB slices, not in memory
ONE_SLICE = hashlib.shake_256(b"one").digest(MIB - 7)  # one slice, too large for memory
CA_BODY = hashlib.shake_256(b"ca").digest(300_000)  # content-addressed, one slice
CA_PATH = "/v/t1/" + hashlib.sha256(CA_BODY).hexdigest()


@pytest.fixture
def origin() -> Iterator[tuple[TestOrigin, ServerThread]]:
    o = TestOrigin()
    o.put("/v/t1/obj", BODY)
    o.put("/v/t1/other", b"y" * 100)
    o.put("/static/large.bin", LARGE, headers={"cache-control": "max-age=600"})
    o.put("/static/one.bin", ONE_SLICE, headers={"cache-control": "max-age=600"})
    o.put(CA_PATH, CA_BODY)
    with serve(o) as srv:
        yield o, srv


@pytest.fixture
def edge(tmp_path: Path, origin: tuple[TestOrigin, ServerThread]) -> Iterator[ServerThread]:
    config = edge_config(tmp_path, origin[1].url, f"log: {{file: {tmp_path / 'access.log'}}}\n")
    app = node_app(config, "edge")
    assert fast_lane_of(app) is not None  # the chain the server runs is recognised
    with serve(app, proxy_headers=False, **uvicorn_http_options(config.http_limits)) as srv:
        yield srv


def _raw(url: str, payload: bytes, until: int, timeout: float = 5) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(payload)
        data = b""
        deadline = time.monotonic() + timeout
        while data.count(b"HTTP/1.1 ") < until or not data.endswith(BODY[-50:]):
            if time.monotonic() > deadline:
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _hits(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    found = re.findall(r'^edgeproxy_requests_total\{[^}]*result="HIT"[^}]*\} (\S+)$', text, re.M)
    return sum(float(v) for v in found)


def test_a_hot_hit_is_byte_exact_with_the_fields_of_the_app_path(
        edge: ServerThread, origin: tuple[TestOrigin, ServerThread], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    served = _counting(monkeypatch)
    with httpx.Client(base_url=edge.url) as client:
        miss = client.get("/v/t1/obj")
        assert miss.headers["x-cache"].startswith("MISS")
        client.get("/v/t1/obj")  # a hit from the store puts it in memory
        served.clear()
        before = _hits(edge.url)
        hit = client.get("/v/t1/obj", headers={"user-agent": "fast-test"})
    assert hit.status_code == 200 and hit.content == BODY
    assert hit.headers["x-cache"] == "HIT from edge-1"
    assert int(hit.headers["content-length"]) == len(BODY)
    assert "age" in hit.headers and "date" in hit.headers
    names = {n.lower() for n in hit.headers} - {"age", "x-cache"}
    assert names == {n.lower() for n in miss.headers} - {"age", "x-cache"}
    assert _hits(edge.url) == before + 1
    assert served == [200]  # answered by the protocol, not the app
    assert origin[0].count("/v/t1/obj") == 1
    log, deadline = tmp_path / "access.log", time.monotonic() + 5
    while b"fast-test" not in (log.read_bytes() if log.exists() else b"") \
            and time.monotonic() < deadline:
        time.sleep(0.02)  # the sink writes lines out in batches
    (line,) = [x for x in log.read_text().splitlines() if "fast-test" in x]
    assert 'cache="HIT from edge-1"' in line and '"GET /v/t1/obj HTTP/1.1" 200 5120' in line


@pytest.mark.parametrize(("range_value", "status", "body", "content_range"), [
    ("bytes=0-9", 206, BODY[:10], "bytes 0-9/5120"),  # RFC 9110 §14.2
    ("bytes=5000-", 206, BODY[5000:], "bytes 5000-5119/5120"),
    ("bytes=-20", 206, BODY[-20:], "bytes 5100-5119/5120"),
    ("bytes=100-99999", 206, BODY[100:], "bytes 100-5119/5120"),
    ("items=0-9", 200, BODY, None),  # another unit: ignored, the whole body (§14.2)
    ("bytes=9-0", 200, BODY, None),  # invalid: ignored
    ("bytes=9000-", 416, None, "bytes */5120"),  # unsatisfiable: the steps answer 416
    ("bytes=0-0,9-9", 206, None, None),  # several: multipart from the steps
])  # fmt: skip
def test_ranges_of_a_hot_object(edge: ServerThread, monkeypatch: pytest.MonkeyPatch,
                                range_value: str, status: int, body: bytes | None,
                                content_range: str | None) -> None:
    served = _counting(monkeypatch)
    with httpx.Client(base_url=edge.url) as client:
        for _ in range(2):
            client.get("/v/t1/obj")
        served.clear()
        answer = client.get("/v/t1/obj", headers={"range": range_value})
    assert answer.status_code == status
    if body is not None:
        assert answer.content == body and int(answer.headers["content-length"]) == len(body)
        assert answer.headers["x-cache"] == "HIT from edge-1"
        assert served == [status]  # the protocol answered it
    else:
        assert served == []  # the steps answered it
    assert answer.headers.get("content-range") == content_range


def test_pipelined_requests_are_answered_in_order(edge: ServerThread) -> None:
    for _ in range(2):  # a miss, then a hit from the store: now in memory
        assert httpx.get(edge.url + "/v/t1/obj").status_code == 200
    # a miss (through the app) first, then a hot hit: the hit must not overtake it
    payload = (b"GET /v/t1/other HTTP/1.1\r\nhost: x\r\n\r\n"
               b"GET /v/t1/obj HTTP/1.1\r\nhost: x\r\n\r\n")
    data = _raw(edge.url, payload, until=2)
    first = data.index(b"HTTP/1.1 200")
    assert data[first:].index(b"y" * 100) < data.index(BODY)
    assert data.count(b"HTTP/1.1 200 OK") == 2 and data.endswith(BODY)


@pytest.mark.parametrize(("request_head", "expect_status", "expect_body"), [
    # ranges, validators, a query, another spelling: the steps answer them
    (b"GET /v/t1/obj HTTP/1.1\r\nhost: x\r\nrange: bytes=0-9\r\n\r\n", b"206", BODY[:10]),
    (b"GET /v/t1/obj?a=1 HTTP/1.1\r\nhost: x\r\n\r\n", b"200", BODY),
    (b"GET /v/t1/./obj HTTP/1.1\r\nhost: x\r\n\r\n", b"200", BODY),
    (b"HEAD /v/t1/obj HTTP/1.1\r\nhost: x\r\n\r\n", b"200", b""),
    (b"GET /v/t1/obj HTTP/1.0\r\nhost: x\r\n\r\n", b"200", BODY),
])  # fmt: skip
def test_what_is_not_a_plain_hit_goes_through_the_app(
        edge: ServerThread, request_head: bytes, expect_status: bytes,
        expect_body: bytes) -> None:
    for _ in range(2):  # a miss, then a hit from the store: now in memory
        assert httpx.get(edge.url + "/v/t1/obj").status_code == 200
    host, port = edge.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request_head)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < len(expect_body):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == expect_status, head
    assert body[:len(expect_body)] == expect_body


def test_keep_alive_connections_serve_many_fast_hits(edge: ServerThread) -> None:
    with httpx.Client(base_url=edge.url) as client:
        client.get("/v/t1/obj")
        answers = [client.get("/v/t1/obj") for _ in range(50)]
    assert all(a.content == BODY and a.headers["x-cache"] == "HIT from edge-1" for a in answers)


def test_other_chains_take_no_fast_lane() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    assert fast_lane_of(app) is None


def test_each_connection_takes_the_lane_of_its_own_app(tmp_path: Path) -> None:
    """The lane found for one app is kept for that app's next connections (looking for it was
    ~10 us per connection), never handed to another app's."""
    import asyncio

    from uvicorn.config import Config as UvicornConfig
    from uvicorn.server import ServerState

    from edgeproxy.protocol import GuardedHttpToolsProtocol

    config_path = tmp_path / "config.yaml"
    config_path.write_text(f"data_dir: {tmp_path / 'var'}\n"
                           "edge: {upstream: 'http://127.0.0.1:9', node_name: edge-1}\n")
    config = load_config(config_path)

    async def plain(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    node = node_app(config, "edge")

    async def lanes() -> list[Any]:
        found = []
        for app in (node, plain, node, node, plain):
            uv = UvicornConfig(app=app, proxy_headers=False)
            uv.load()
            protocol = GuardedHttpToolsProtocol(config=uv, server_state=ServerState(),
                                                app_state={}, limits=config.http_limits)
            found.append(protocol.fast)
        return found

    found = asyncio.run(lanes())
    assert found[0] == fast_lane_of(node) and found[0] is not None
    assert found[1] is None and found[4] is None
    assert found[2] is found[3] and found[2] == found[0]


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    served: list[int] = []
    real = CacheNode.fast_reply

    def counting(self: CacheNode, *args: Any,
                 ) -> tuple[list[bytes | memoryview | FilePiece], int, int] | None:
        reply = real(self, *args)
        if reply is not None:
            served.append(reply[1])
        return reply

    monkeypatch.setattr(CacheNode, "fast_reply", counting)
    real_replay = CacheNode.fast_replay

    def replaying(self: CacheNode, *args: Any) -> Any:  # a head seen before, answered again
        replayed = real_replay(self, *args)
        if replayed is not None:
            served.append(replayed[1].status)
        return replayed

    monkeypatch.setattr(CacheNode, "fast_replay", replaying)
    return served


def _spy(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, arg: int) -> list[Any]:
    """Positional argument ``arg`` of every call of ``owner.name`` from now on (a method's
    ``self`` is argument 0); the calls go through unchanged."""
    seen: list[Any] = []
    real = getattr(owner, name)

    def spying(*args: Any) -> Any:
        seen.append(args[arg])
        return real(*args)

    monkeypatch.setattr(owner, name, spying)
    return seen


def test_a_range_inside_one_stored_slice_is_read_by_the_fast_lane(
        edge: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    served = _counting(monkeypatch)
    inside = (MIB + 100, MIB + 65_635)  # 64 KiB inside slice 1
    across = (MIB - 10, MIB + 10)  # two slices: the steps
    inside_range = f"bytes={inside[0]}-{inside[1]}"
    with httpx.Client(base_url=edge.url) as client:
        assert client.get("/static/large.bin").content == LARGE  # stored, 3 slices
        first = client.get("/static/large.bin", headers={"range": inside_range})
        served.clear()
        again = client.get("/static/large.bin", headers={"range": inside_range})
        assert served == [206]
        assert again.content == first.content == LARGE[inside[0]:inside[1] + 1]
        assert again.headers["content-range"] == f"bytes {inside[0]}-{inside[1]}/{len(LARGE)}"
        assert again.headers["x-cache"] == "HIT from edge-1"
        assert {n.lower() for n in again.headers} - {"age"} == \
            {n.lower() for n in first.headers} - {"age"}
        served.clear()
        two = client.get("/static/large.bin", headers={"range": f"bytes={across[0]}-{across[1]}"})
        assert served == [] and two.content == LARGE[across[0]:across[1] + 1]


def test_a_flipped_stored_slice_is_not_read_by_the_fast_lane(
        edge: ServerThread, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        origin: tuple[TestOrigin, ServerThread]) -> None:
    served = _counting(monkeypatch)
    inside = f"bytes={MIB + 100}-{MIB + 199}"
    with httpx.Client(base_url=edge.url) as client:
        client.get("/static/large.bin")
        client.get("/static/large.bin", headers={"range": inside})  # facts remembered
        slice1 = LARGE[MIB:2 * MIB]
        path = stored_file(tmp_path / "var", slice1)
        with path.open("r+b") as f:  # one bit of byte 150 of slice 1
            f.seek(150)
            byte = f.read(1)[0]
            f.seek(150)
            f.write(bytes([byte ^ 1]))
        served.clear()
        answer = client.get("/static/large.bin", headers={"range": inside})
    assert answer.status_code == 206 and answer.content == LARGE[MIB + 100:MIB + 200]
    assert served == []  # the steps fetched the slice again
    assert origin[0].count("/static/large.bin") >= 2


@pytest.mark.parametrize("range_value", [None, "items=0-9", "bytes=9-0"])  # §14.2: whole
def test_a_whole_object_of_one_stored_slice_is_read_by_the_fast_lane(
        edge: ServerThread, monkeypatch: pytest.MonkeyPatch, range_value: str | None) -> None:
    served = _counting(monkeypatch)
    asked = {"range": range_value} if range_value else {}
    with httpx.Client(base_url=edge.url) as client:
        assert client.get("/static/one.bin").headers["x-cache"].startswith("MISS")
        served.clear()  # the facts are not remembered yet: the fast lane reads the index
        fast = client.get("/static/one.bin", headers=asked)
        assert served == [200]
        # a validator takes a request through the steps: their answer is the reference
        steps = client.get("/static/one.bin",
                           headers={"if-modified-since": "Thu, 01 Jan 1970 00:00:00 GMT"})
    assert served == [200] and steps.status_code == 200 and steps.content == ONE_SLICE
    assert fast.status_code == 200 and fast.content == ONE_SLICE
    assert fast.headers["x-cache"] == "HIT from edge-1"
    assert int(fast.headers["content-length"]) == len(ONE_SLICE)
    same = {n.lower(): v for n, v in steps.headers.items() if n.lower() not in ("age", "date")}
    assert {n.lower(): v for n, v in fast.headers.items()
            if n.lower() not in ("age", "date")} == same
    assert "date" in fast.headers and "age" in fast.headers


def test_a_whole_content_addressed_object_from_its_stored_slice(
        edge: ServerThread, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    served = _counting(monkeypatch)
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(CA_BODY).digest()).decode() + ":"
    with httpx.Client(base_url=edge.url) as client:
        # slice 0 is the whole object: its fill was hashed whole, so it is verified
        assert client.get(CA_PATH, headers={"range": "bytes=0-99"}).status_code == 206
        client.get(CA_PATH, headers={"range": "bytes=100-199"})  # facts remembered
        served.clear()
        whole = client.get(CA_PATH)
        assert served == [200] and whole.content == CA_BODY
        assert whole.headers["content-digest"] == digest  # as the steps send it
        path = stored_file(tmp_path / "var", CA_BODY)
        with path.open("r+b") as f:  # one bit of byte 7
            f.seek(7)
            byte = f.read(1)[0]
            f.seek(7)
            f.write(bytes([byte ^ 1]))
        served.clear()
        again = client.get(CA_PATH)
    assert again.content == CA_BODY and served == []  # the steps fetched it again


def test_a_slice_ranges_ask_for_again_is_kept_in_memory(
        edge: ServerThread, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    served = _counting(monkeypatch)
    inside = f"bytes={MIB + 100}-{MIB + 65_635}"
    with httpx.Client(base_url=edge.url) as client:
        assert client.get("/static/large.bin").content == LARGE  # stored, 3 slices
        for _ in range(2):  # read from disk twice: the second read keeps the slice
            r = client.get("/static/large.bin", headers={"range": inside})
            assert r.content == LARGE[MIB + 100:MIB + 65_636]
        path = stored_file(tmp_path / "var", LARGE[MIB:2 * MIB])
        with path.open("r+b") as f:  # decay on disk after the checked copy was kept
            f.seek(5000)
            f.write(bytes([LARGE[MIB + 5000] ^ 1]))
        served.clear()
        again = client.get("/static/large.bin", headers={"range": f"bytes={MIB}-{MIB + 9999}"})
    assert served == [206] and again.content == LARGE[MIB:MIB + 10_000]  # the checked copy


def test_a_miss_looks_in_the_index_once(edge: ServerThread,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast lane looks first; the steps then take its "not stored" rather than look
    again (a miss costs one index query, not two)."""
    looks = _spy(monkeypatch, CacheStore, "get_meta", arg=1)
    r = httpx.get(edge.url + "/v/t1/other")
    assert r.status_code == 200 and r.headers["x-cache"].startswith("MISS")
    assert looks.count("/v/t1/other") == 1


def test_a_popular_object_keeps_its_encoded_fields_while_many_others_pass(
        edge: ServerThread, origin: tuple[TestOrigin, ServerThread],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fields memo drops the least recently used entry when full, not everything: a
    Zipf tail of objects asked for once must not make the popular ones be encoded again."""
    from edgeproxy.cache import fastlane

    monkeypatch.setattr(fastlane, "MEMO_SIZE", 3)
    others = [f"/static/p{i}.bin" for i in range(6)]
    for i, path in enumerate(others):  # one slice each, too large for the memory tier
        origin[0].put(path, bytes([i]) * 300_000, headers={"cache-control": "max-age=600"})
    served = _counting(monkeypatch)
    with httpx.Client(base_url=edge.url) as client:
        for path in ["/static/one.bin", *others]:
            assert client.get(path).status_code == 200  # stored
        assert client.get("/static/one.bin").content == ONE_SLICE  # encoded once here
        encoded = _spy(monkeypatch, CacheNode, "stored_headers", arg=1)
        served.clear()
        for pair in (others[0:2], others[2:4], others[4:6]):
            assert client.get("/static/one.bin").content == ONE_SLICE
            for path in pair:
                assert client.get(path).status_code == 200
    assert served == [200] * 9  # every one from the fast lane
    lengths = [meta.length for meta in encoded]
    assert len(ONE_SLICE) not in lengths  # the popular one was never encoded again
    assert lengths.count(300_000) == 6  # (each other one was: the memo holds three)


def test_a_range_asked_again_is_answered_from_its_kept_fields_until_a_purge(
        tmp_path: Path, origin: tuple[TestOrigin, ServerThread],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A range answered from a slice kept in memory is answered again without resolving the
    range or encoding the fields anew (a player's repeated seek); the bytes and fields are
    the same, and a purge of the changed object ends it."""
    from edgeproxy.cache import fastlane

    resolved = _spy(monkeypatch, fastlane, "one_range", arg=0)
    served = _counting(monkeypatch)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(f"data_dir: {tmp_path / 'var'}\nadmin_token: t0ken-for-tests\n"
                           f"edge: {{upstream: '{origin[1].url}', node_name: edge-1}}\n")
    config = load_config(config_path)
    start, end = MIB + 100, MIB + 65_635
    ask = {"range": f"bytes={start}-{end}"}
    with serve(node_app(config, "edge"), proxy_headers=False,
               **uvicorn_http_options(config.http_limits)) as srv, \
            httpx.Client(base_url=srv.url) as client:
        assert client.get("/static/large.bin").content == LARGE  # stored, 3 slices
        first = [client.get("/static/large.bin", headers=ask) for _ in range(2)]  # kept
        resolved.clear()
        served.clear()
        again = [client.get("/static/large.bin", headers=ask) for _ in range(3)]
        assert served == [206] * 3 and resolved == []  # from the kept fields
        for r in [*first, *again]:
            assert r.status_code == 206 and r.content == LARGE[start:end + 1]
            assert r.headers["content-range"] == f"bytes {start}-{end}/{len(LARGE)}"
            assert r.headers["content-length"] == str(end - start + 1)
            assert r.headers["x-cache"] == "HIT from edge-1"
            assert sorted(n.lower() for n in r.headers) == \
                sorted(n.lower() for n in first[0].headers)
        changed = bytes(reversed(LARGE))
        origin[0].put("/static/large.bin", changed, headers={"cache-control": "max-age=600"})
        purged = client.post("/_admin/purge", json={"paths": ["/static/large.bin"]},
                             headers={"authorization": "Bearer t0ken-for-tests"})
        assert purged.json() == {"purged": 1}
        after = client.get("/static/large.bin", headers=ask)
    assert after.status_code == 206 and after.content == changed[start:end + 1]
    assert after.headers["x-cache"].startswith("MISS")


@pytest.mark.parametrize("framing", [b"content-length: 37\r\n\r\n%s",
                                     b"transfer-encoding: chunked\r\n\r\n25\r\n%s\r\n0\r\n\r\n"])
def test_a_get_with_a_body_is_left_to_the_app_and_its_body_stays_a_body(
        edge: ServerThread, monkeypatch: pytest.MonkeyPatch, framing: bytes) -> None:
    """A body (or an upgrade, or Expect) takes a hot GET off the fast lane; a body that
    looks like a request is read as the body, never answered as a second request."""
    for _ in range(2):  # a miss, then a hit from the store: now in memory
        assert httpx.get(edge.url + "/v/t1/obj").status_code == 200
    served = _counting(monkeypatch)
    inner = b"GET /v/t1/other HTTP/1.1\r\nhost: x\r\n\r\n"
    assert len(inner) == 37
    payload = b"GET /v/t1/obj HTTP/1.1\r\nhost: x\r\n" + framing % inner
    host, port = edge.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(payload)
        data = b""
        while not data.endswith(BODY):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            data += sock.recv(65536)  # nothing more: no second answer
    assert data.count(b"HTTP/1.1 ") == 1 and data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(BODY) and b"y" * 100 not in data
    assert served == []  # the app answered it


@pytest.mark.parametrize("fields", [
    [],
    [(b"content-type", b"video/mp4"), (b"etag", b'"abc"')],
    [(b"link", b"<a>; rel=x: y"), (b"x-empty", b""), (b"x-space", b" lead")],  # ": " inside
])
def test_field_pairs_undo_field_lines(fields: list[tuple[bytes, bytes]]) -> None:
    from edgeproxy.cache.hot import field_lines
    from edgeproxy.cache.lanehit import field_pairs

    assert field_pairs(field_lines(fields)) == fields


@pytest.mark.parametrize("how", ["query", "validator", "head"])
def test_hits_the_lane_leaves_to_the_steps_come_from_memory_too(
        edge: ServerThread, origin: tuple[TestOrigin, ServerThread],
        monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A query string, a validator that does not match, HEAD: the steps answer these hits.
    A small object in memory is read there, not from the index (and not put back)."""
    target, headers = "/v/t1/obj", {}
    if how == "query":
        target = "/v/t1/obj?v=2"
        origin[0].put(target, BODY)
    elif how == "validator":
        headers = {"if-none-match": '"not-this-one"'}
    with httpx.Client(base_url=edge.url) as client:
        for _ in range(2):  # a miss, then a hit from the store that puts it in memory
            assert client.get(target).content == BODY
        reads = _spy(monkeypatch, CacheStore, "get_slice", arg=1)
        kept = _spy(monkeypatch, joins, "_keep_hot", arg=1)
        answers = [client.request("HEAD" if how == "head" else "GET", target, headers=headers)
                   for _ in range(3)]
    assert all(a.status_code == 200 and a.headers["x-cache"] == "HIT from edge-1"
               for a in answers)
    assert all(a.content == (b"" if how == "head" else BODY) for a in answers)
    assert reads == [] and kept == []


def test_requests_taken_in_together_for_a_cold_key_read_the_index_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stampede's requests are taken in (their heads parsed, the lane asked) before any of
    them starts the fill: each read the index twice, once in the lane and once in the steps'
    lookup. The lane remembers a key it found absent for a moment: one read for all, and the
    steps take that answer once (after which they lead or join the fill)."""
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(tmp_path / "var"),
                                    "EDGEPROXY_EDGE__UPSTREAM": "http://127.0.0.1:9"})
    found = fast_lane_of(node_app(config, "edge"))
    assert found is not None
    node: CacheNode = found[0]
    reads: list[str] = []
    get_meta = node.store.get_meta

    def counted(key: str) -> Any:
        reads.append(key)
        return get_meta(key)

    monkeypatch.setattr(node.store, "get_meta", counted)
    for _ in range(10):
        assert node.fast.hit("/v/t1/cold", [(b"host", b"x")]) is None
        assert node.fast.hit("/v/t1/other-cold", []) is None
    assert reads == ["/v/t1/cold", "/v/t1/other-cold"]
    assert node.fast.not_stored("/v/t1/cold") and not node.fast.not_stored("/v/t1/cold")
    assert node.fast.not_stored("/v/t1/other-cold")
    node.fast.hit("/v/t1/cold", [])  # (the steps took the answer: the lane looks again)
    assert reads == ["/v/t1/cold", "/v/t1/other-cold", "/v/t1/cold"]


def _slow_read(url: str, payload: bytes, want: int, timeout: float = 20) -> bytes:
    """Send ``payload`` on a connection with a small receive buffer and read ``want`` bytes
    in small steps with pauses, so the server's socket fills and its sends must wait."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.settimeout(timeout)
    with sock:
        sock.connect((host, int(port)))
        sock.sendall(payload)
        data = bytearray()
        while len(data) < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) < 256 * 1024:
                time.sleep(0.002)  # slow at first: the answer's rest waits for room
        return bytes(data)


def test_a_whole_object_of_several_stored_slices_goes_from_their_files(
        edge: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    served = _counting(monkeypatch)
    with httpx.Client(base_url=edge.url) as client:
        assert client.get("/static/large.bin").headers["x-cache"].startswith("MISS")
        served.clear()
        fast = client.get("/static/large.bin")
        assert served == [200]  # three slices, from their files
        steps = client.get("/static/large.bin",
                           headers={"if-modified-since": "Thu, 01 Jan 1970 00:00:00 GMT"})
    assert served == [200] and steps.status_code == 200 and steps.content == LARGE
    assert fast.status_code == 200 and fast.content == LARGE
    assert int(fast.headers["content-length"]) == len(LARGE)
    same = {n.lower(): v for n, v in steps.headers.items() if n.lower() not in ("age", "date")}
    assert {n.lower(): v for n, v in fast.headers.items()
            if n.lower() not in ("age", "date")} == same
    # pipelined, read slowly: each answer's slices go out in order as the socket drains
    head = b"GET /static/large.bin HTTP/1.1\r\nhost: x\r\n\r\n"
    served.clear()
    data = _slow_read(edge.url, head * 2, 2 * len(LARGE) + 2 * 1024)
    assert served == [200, 200]
    answers = data.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert len(answers) == 2
    for answer in answers:
        assert answer.partition(b"\r\n\r\n")[2] == LARGE


def test_a_flipped_later_slice_keeps_a_whole_object_off_the_fast_lane(
        edge: ServerThread, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        origin: tuple[TestOrigin, ServerThread]) -> None:
    served = _counting(monkeypatch)
    with httpx.Client(base_url=edge.url) as client:
        assert client.get("/static/large.bin").content == LARGE
        path = stored_file(tmp_path / "var", LARGE[MIB:2 * MIB])  # slice 1 (slice 2 is inline)
        with path.open("r+b") as f:  # one bit of its byte 1000
            f.seek(1000)
            byte = f.read(1)[0]
            f.seek(1000)
            f.write(bytes([byte ^ 1]))
        served.clear()
        again = client.get("/static/large.bin")
    assert again.status_code == 200 and again.content == LARGE
    assert served == []  # the steps fetched the flipped slice again
    assert origin[0].count("/static/large.bin") >= 2


@pytest.mark.parametrize(("value", "first", "end"), [
    ("bytes=0-", 0, len(LARGE) - 1),  # a player's first request
    ("bytes=1000-2100000", 1000, 2_100_000),  # into the inline last slice
    (f"bytes={MIB - 5}-{2 * MIB + 5}", MIB - 5, 2 * MIB + 5),
    (f"bytes={MIB}-", MIB, len(LARGE) - 1),  # from a slice's first byte
    ("bytes=-1500000", len(LARGE) - 1_500_000, len(LARGE) - 1),  # a suffix (§14.1.2)
    ("bytes=100-99999999", 100, len(LARGE) - 1),  # past the end: up to it
])
def test_a_large_range_across_stored_slices_goes_from_their_files(
        edge: ServerThread, monkeypatch: pytest.MonkeyPatch, value: str, first: int,
        end: int) -> None:
    served = _counting(monkeypatch)
    asked = {"range": value}
    with httpx.Client(base_url=edge.url) as client:
        assert client.get("/static/large.bin").content == LARGE  # stored: 2 files, 1 inline
        served.clear()
        fast = client.get("/static/large.bin", headers=asked)
        assert served == [206]
        steps = client.get("/static/large.bin", headers={
            **asked, "if-modified-since": "Thu, 01 Jan 1970 00:00:00 GMT"})
    assert served == [206] and steps.status_code == 206
    assert fast.status_code == 206 and fast.content == steps.content == LARGE[first:end + 1]
    assert fast.headers["content-range"] == f"bytes {first}-{end}/{len(LARGE)}"
    same = {n.lower(): v for n, v in steps.headers.items() if n.lower() not in ("age", "date")}
    assert {n.lower(): v for n, v in fast.headers.items()
            if n.lower() not in ("age", "date")} == same
