"""A byte flipped in a stored slice is never served (issue "Every byte verified").

Every stored slice carries an xxh3 checksum written as its fill wrote it. Over real sockets,
on an edge → shield → origin chain, one byte of a slice file on the edge's (or the shield's)
disk is flipped: whole GETs, ranges and HEADs still answer the right bytes, fetched again, the
failure is counted, and the node goes on serving; a flip in a slice while it is being sent
cuts that answer short; a scrub finds and drops a flipped slice. The checksum record itself
has table and unit tests at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import xxhash
from click.testing import CliRunner

from edgeproxy.cache import checksum, create_app, scrub
from edgeproxy.cache.fills import SliceFill
from edgeproxy.cache.flight import Flight
from edgeproxy.cache.slicefiles import SliceFile
from edgeproxy.cache.store import CacheStore
from edgeproxy.cli import cli
from edgeproxy.config import Config, load_config
from tests.nodes import NodeProcess, edge_config_file
from tests.origins import TestOrigin, pattern
from tests.servers import free_port, serve
from tests.test_cache_node import _metric, make_config

SLICE = 64 * 1024
TOKEN = "scrub-admin-token"
CACHED = {"cache-control": "max-age=600"}
# the object pass has nothing to do here: no object has a known SHA-256 (`test_scrub_objects`)
NO_OBJECTS = {"objects_verified": 0, "objects_bad": 0, "objects_incomplete": 0}


@dataclasses.dataclass
class Stack:
    origin: TestOrigin
    config: Config
    edge: str
    shield: str

    def files(self, tier: str) -> list[Path]:
        """Every slice file stored by ``tier``."""
        return sorted(self.config.cache_dir(tier).rglob("*.val"))

    def slice_file(self, tier: str, data: bytes) -> Path:
        """The one file of ``tier``'s cache that holds exactly ``data`` (a stored slice)."""
        found = [p for p in self.files(tier)
                 if p.stat().st_size == len(data) and p.read_bytes() == data]
        assert len(found) == 1, f"{len(found)} files of {tier} hold these bytes"
        return found[0]

    def failures(self, tier: str) -> float:
        text = httpx.get((self.edge if tier == "edge" else self.shield) + "/metrics").text
        return _metric(text, "edgeproxy_integrity_failures_total", reason="slice_checksum")


@contextmanager
def stack(tmp_path: Path, **cache: Any) -> Iterator[Stack]:
    origin = TestOrigin()
    config = make_config(tmp_path, **cache).replace(admin_token=TOKEN)
    with serve(origin) as o, serve(create_app(config, "shield", upstream=o.url)) as s, \
            serve(create_app(config, "edge", upstream=s.url)) as e:
        yield Stack(origin, config, e.url, s.url)


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Stack]:
    with stack(tmp_path) as st:
        yield st


@contextmanager
def edge_process(tmp_path: Path, origin: TestOrigin, slice_size: int,
                 workers: int) -> Iterator[tuple[NodeProcess, Path]]:
    """An ``edgeproxy serve`` edge (the server protocol, fast lane and all) in front of
    ``origin``, and its cache directory."""
    port = free_port()
    path = edge_config_file(tmp_path, port, cache=f"slice_size: {slice_size}",
                            edge=f"workers: {workers}")
    with serve(origin) as o, \
            NodeProcess(path, "edge", f"http://127.0.0.1:{port}", upstream=o.url) as edge:
        yield edge, load_config(path).cache_dir("edge")


def flip(path: Path, offset: int) -> None:
    """Flip one bit of the byte at ``offset``, in place (as a stray write would)."""
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))


def settle() -> None:
    """Outlast the window in which a file's change may keep its ctime (`checksum.settled`),
    so a read now is remembered as checked and the test covers that memo."""
    time.sleep(checksum.RACY_NS / 1e9 + 0.02)


def fill(st: Stack, path: str, body: bytes) -> None:
    st.origin.put(path, body, headers=CACHED)
    r = httpx.get(st.edge + path)
    assert r.status_code == 200 and r.content == body
    assert httpx.get(st.edge + path).headers["x-cache"] == "HIT from edge"


# --- a flip at rest -------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 3])
@pytest.mark.parametrize("read_before", [False, True], ids=["cold", "remembered"])
def test_a_flipped_slice_on_the_edge_is_fetched_again(chain: Stack, index: int,
                                                      read_before: bool) -> None:
    body = pattern(6 * SLICE + 100)
    fill(chain, "/static/obj", body)
    other = pattern(3 * SLICE, seed=7)
    fill(chain, "/static/other", other)
    if read_before:  # the file is then kept open and remembered as checked
        settle()
        assert httpx.get(chain.edge + "/static/obj").content == body
    target = chain.slice_file("edge", body[index * SLICE:(index + 1) * SLICE])
    flip(target, 1000)
    r = httpx.get(chain.edge + "/static/obj")
    assert r.status_code == 200 and r.content == body
    assert chain.failures("edge") == 1
    assert not target.exists()  # dropped; the refetched slice is a new file
    r = httpx.get(chain.edge + "/static/obj")
    assert r.content == body and r.headers["x-cache"] == "HIT from edge"
    assert chain.origin.count("/static/obj") == 1  # the shield had the right bytes
    assert httpx.get(chain.edge + "/healthz").json()["status"] == "ok"
    assert httpx.get(chain.edge + "/static/other").content == other
    assert chain.failures("edge") == 1


def test_a_range_into_a_flipped_slice_and_a_head(chain: Stack) -> None:
    body = pattern(6 * SLICE + 100)
    fill(chain, "/static/obj", body)
    flip(chain.slice_file("edge", body[3 * SLICE:4 * SLICE]), 5)
    r = httpx.head(chain.edge + "/static/obj")
    assert r.status_code == 200 and r.headers["content-length"] == str(len(body))
    lo, hi = 3 * SLICE + 1, 3 * SLICE + 99
    r = httpx.get(chain.edge + "/static/obj", headers={"range": f"bytes={lo}-{hi}"})
    assert r.status_code == 206 and r.content == body[lo:hi + 1]
    assert chain.failures("edge") == 1
    assert httpx.get(chain.edge + "/static/obj").content == body


def test_a_flipped_slice_on_the_shield_is_fetched_from_the_origin(chain: Stack) -> None:
    body = pattern(5 * SLICE)
    fill(chain, "/static/obj", body)
    flip(chain.slice_file("shield", body[2 * SLICE:3 * SLICE]), SLICE - 1)
    r = httpx.post(chain.edge + "/_admin/purge", json={"paths": ["/static/obj"]},
                   headers={"authorization": f"Bearer {TOKEN}"})
    assert r.json() == {"purged": 1}
    r = httpx.get(chain.edge + "/static/obj")
    assert r.status_code == 200 and r.content == body
    assert r.headers["x-cache"].startswith("MISS from edge")
    assert chain.failures("shield") == 1 and chain.failures("edge") == 0
    assert chain.origin.count("/static/obj") == 2  # the shield asked for that slice again
    assert httpx.get(chain.shield + "/healthz").json()["status"] == "ok"


def test_a_verified_content_addressed_object_is_checked_too(chain: Stack) -> None:
    """The outside exam's case: a blob filled whole (its SHA-256 matched, so its hits are
    not hashed again) with one byte flipped on the edge's disk came back as a complete HIT."""
    body = pattern(4 * SLICE + 17, seed=3)
    path = "/v/t1/" + hashlib.sha256(body).hexdigest()
    chain.origin.put(path, body)
    assert httpx.get(chain.edge + path).content == body
    assert httpx.get(chain.edge + path).headers["x-cache"] == "HIT from edge"
    flip(chain.slice_file("edge", body[SLICE:2 * SLICE]), 77)
    r = httpx.get(chain.edge + path)
    assert r.status_code == 200 and r.content == body
    assert chain.failures("edge") == 1


# --- a flip while an answer is being sent ---------------------------------------------------


def stalled_get(url: str, path: str, during: Callable[[], None],
                keep_alive: bool = False) -> tuple[int, bytes]:
    """GET ``path`` on a socket with a small receive buffer: read the head and the first
    64 KiB, stop reading a while (the server blocks a few MiB in), call ``during``, then read
    on until the server closes (or, ``keep_alive``: until the whole body came). Returns the
    Content-Length and the body received."""
    host, _, port = url.removeprefix("http://").partition(":")
    close = "" if keep_alive else "Connection: close\r\n"
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.settimeout(20)
        s.connect((host, int(port)))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{close}\r\n".encode())
        received = b""
        while len(received.partition(b"\r\n\r\n")[2]) < 65536:
            received += s.recv(16384)
        time.sleep(0.3)
        during()
        want = int(re.search(rb"(?i)content-length: (\d+)", received).group(1))  # type: ignore[union-attr]
        try:
            while len(received.partition(b"\r\n\r\n")[2]) < want \
                    and (chunk := s.recv(65536)):
                received += chunk
        except ConnectionResetError:
            pass
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    return int(fields[b"content-length"]), body


def test_a_later_slice_flipped_while_streaming_is_fetched_again(tmp_path: Path) -> None:
    size = 256 * 1024
    body = pattern(48 * size, seed=5)  # 12 MiB: the server cannot run 10 MiB ahead
    with stack(tmp_path, slice_size=size) as st:
        fill(st, "/static/big", body)
        target = st.slice_file("edge", body[40 * size:41 * size])
        length, got = stalled_get(st.edge, "/static/big", lambda: flip(target, 12345))
        assert length == len(body)
        assert got == body  # the flipped slice never went out: it was fetched again
        assert st.failures("edge") == 1


def test_a_later_slice_flipped_while_the_fast_lane_sends_cuts_the_answer_short(
        tmp_path: Path) -> None:
    """A kept-alive whole hit of up to 32 slices leaves from the fast lane, every slice
    checked before the head: a slice written to after that is found changed before its first
    byte would go out, and the answer is cut short (the steps, taking one slice at a time,
    fetch such a slice again instead). The next request finds it and fetches it again."""
    size = 1024 * 1024
    body = pattern(12 * size, seed=7)  # 12 slices: the lane's
    origin = TestOrigin()
    origin.put("/static/lane", body, headers=CACHED)
    with edge_process(tmp_path, origin, size, workers=1) as (edge, cache_dir):
        assert httpx.get(edge.url + "/static/lane").content == body  # stored
        assert httpx.get(edge.url + "/static/lane").headers["x-cache"] == "HIT from edge"
        [target] = [p for p in cache_dir.rglob("*.val")
                    if p.read_bytes() == body[10 * size:11 * size]]
        length, got = stalled_get(edge.url, "/static/lane", lambda: flip(target, 4321),
                                  keep_alive=True)
        assert length == len(body)
        assert len(got) < length and got == body[:len(got)]  # short, every byte right
        r = httpx.get(edge.url + "/static/lane")
        assert r.status_code == 200 and r.content == body
        metrics = httpx.get(edge.url + "/metrics").text
        assert _metric(metrics, "edgeproxy_integrity_failures_total",
                       reason="slice_checksum") == 1
        assert origin.count("/static/lane") == 2  # that slice, fetched again


def test_a_slice_flipped_while_it_is_sent_cuts_the_answer_short(tmp_path: Path) -> None:
    size = 16 * 1024 * 1024
    body = pattern(size, seed=6)  # one slice: checked before the first byte went out
    with stack(tmp_path, slice_size=size) as st:
        fill(st, "/static/one", body)
        target = st.slice_file("edge", body)
        length, got = stalled_get(st.edge, "/static/one", lambda: flip(target, 15 * 2**20))
        assert length == len(body)
        assert len(got) < length  # aborted before its last byte, never complete
        r = httpx.get(st.edge + "/static/one")  # the next reader finds it changed
        assert r.status_code == 200 and r.content == body
        assert st.failures("edge") == 1


# --- scrub ------------------------------------------------------------------------------------


def test_scrub_finds_and_drops_a_flipped_slice(chain: Stack) -> None:
    bodies = {"/static/a": pattern(3 * SLICE, seed=1), "/static/b": pattern(2 * SLICE, seed=2),
              "/static/small": pattern(1000, seed=4)}
    for path, body in bodies.items():
        fill(chain, path, body)
    settle()
    for path, body in bodies.items():  # remembered as checked: the scrub must not trust that
        assert httpx.get(chain.edge + path).content == body
    target = chain.slice_file("edge", bodies["/static/a"][SLICE:2 * SLICE])
    flip(target, 9)
    url = chain.edge + "/_admin/scrub"
    assert httpx.post(url).status_code == 401
    with httpx.stream("POST", url, headers={"authorization": f"Bearer {TOKEN}"}) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.iter_lines() if line.strip()]
    assert lines[0] == {"total": 6}
    assert {"bad_slice": {"key": "/static/a", "index": 1}} in lines
    assert lines[-1] == {"done": 6, "bad": 1, **NO_OBJECTS}
    assert not target.exists() and len(chain.files("edge")) == 4  # the small one is inline
    assert chain.failures("edge") == 1
    assert httpx.get(chain.edge + "/static/a").content == bodies["/static/a"]
    assert chain.failures("edge") == 1  # dropped by the scrub, not met again by the read
    with httpx.stream("POST", url, headers={"authorization": f"Bearer {TOKEN}"}) as r:
        assert [json.loads(x) for x in r.iter_lines() if x.strip()][-1] == \
            {"done": 6, "bad": 0, **NO_OBJECTS}


def test_scrub_command(chain: Stack) -> None:
    body = pattern(2 * SLICE, seed=9)
    fill(chain, "/static/c", body)
    runner = CliRunner()
    args = ["scrub", "--node", chain.edge, "--node", chain.shield, "--token", TOKEN]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["scrubbed"] == {
        chain.edge: {"done": 2, "bad": 0, **NO_OBJECTS},
        chain.shield: {"done": 2, "bad": 0, **NO_OBJECTS}}
    flip(chain.slice_file("shield", body[:SLICE]), 0)
    result = runner.invoke(cli, args)
    assert result.exit_code == 1  # like fsck: something was found (and repaired)
    assert json.loads(result.stdout)["scrubbed"][chain.shield] == {"done": 2, "bad": 1,
                                                                   **NO_OBJECTS}
    assert "bad slice 0 of /static/c" in result.stderr


# --- the checksum record --------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"x", pattern(1000), pattern(32 * 1024 - 1)])
def test_inline_record_round_trip_and_every_flip_fails(data: bytes) -> None:
    sealed = checksum.seal(data, checksum.of(data))
    assert len(sealed) == len(data) + checksum.INLINE_HEADER
    assert checksum.unseal(sealed) == data
    assert checksum.of(data) == xxhash.xxh3_64_intdigest(data)
    for offset in {0, 7, min(8, len(sealed) - 1), len(sealed) // 2, len(sealed) - 1}:
        bad = bytearray(sealed)
        bad[offset] ^= 0x80
        assert checksum.unseal(bytes(bad)) is None
    assert checksum.unseal(sealed[:-1] if data else sealed[:7]) is None  # cut short


@pytest.mark.parametrize(("name", "expected"), [
    ("0123456789abcdef0123456789ab-00000000000000ff.val", 0xFF),
    ("/c/ab/cd/0123456789ab-ffffffffffffffff.val", 2**64 - 1),
    ("0123456789abcdef0123456789ab.val", None),  # diskcache's own name: no checksum
    ("x-00000000000000ff.tmp", None),
    ("x-0000000000000ff.val", None),  # 15 digits
    ("x-00000000000000fg.val", None),
])
def test_file_name_carries_the_checksum(name: str, expected: int | None) -> None:
    assert checksum.from_file_name(name) == expected
    if expected is not None:
        assert checksum.from_file_name(checksum.file_name("abc.val", expected)) == expected


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CacheStore]:
    s = CacheStore(tmp_path / "cache", 1 << 30)
    yield s
    s.close()


def _commit(store: CacheStore, tmp_path: Path, data: bytes, index: int = 0) -> None:
    path = tmp_path / f"fill-{index}"
    path.write_bytes(data)
    store.commit_slice("/k", "v1", index, path, len(data), checksum=checksum.of(data))


def test_store_drops_an_inline_slice_that_fails(store: CacheStore, tmp_path: Path) -> None:
    dropped: list[tuple[str, int]] = []
    store.on_corrupt = lambda key, index, why: dropped.append((key, index))
    data = pattern(5000)
    _commit(store, tmp_path, data)
    assert store.get_slice("/k", "v1", 0) == data
    skey = next(store.slice_keys())
    raw = bytearray(store._cache.get(skey))
    raw[100] ^= 1  # a bit of the index's copy decays
    store._cache.set(skey, bytes(raw), tag="/k")
    assert store.get_slice("/k", "v1", 0) is None
    assert dropped == [("/k", 0)] and not store.has_slice("/k", "v1", 0)


def _file(store: CacheStore, index: int) -> SliceFile:
    body = store.get_slice("/k", "v1", index)
    assert isinstance(body, SliceFile)
    return body


def test_store_hashes_a_file_once_until_it_changes(store: CacheStore, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[int] = []
    real = checksum.file_matches
    def counting(fd: int, size: int, value: int) -> bool:
        hashed.append(size)
        return real(fd, size, value)

    monkeypatch.setattr("edgeproxy.cache.slicefiles.file_matches", counting)
    dropped: list[int] = []
    store.on_corrupt = lambda key, index, why: dropped.append(index)
    data = pattern(200_000)
    _commit(store, tmp_path, data, 2)
    settle()
    for _ in range(3):
        with _file(store, 2) as body:
            assert os.pread(body.fileno(), len(data), 0) == data
            assert body.unchanged()
    assert hashed == [len(data)]  # once, then remembered
    [path] = store.directory.rglob("*.val")
    held = _file(store, 2)
    flip(path, 199_999)
    assert not held.unchanged()
    assert store.get_slice("/k", "v1", 2) is None
    assert dropped == [2] and not path.exists()
    # the reader still holding the dropped file keeps a valid descriptor until it is done
    assert len(os.pread(held.fileno(), 10, 0)) == 10
    fd = held.fileno()
    held.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_scrub_ignores_what_a_worker_remembers(store: CacheStore, tmp_path: Path) -> None:
    """Decay under the file system changes no ctime: the memo cannot see it, the scrub can."""
    data = pattern(100_000)
    _commit(store, tmp_path, data, 0)
    _commit(store, tmp_path, pattern(20_000, seed=1), 1)
    [path] = [p for p in store.directory.rglob("*.val") if p.stat().st_size == len(data)]
    flip(path, 0)
    settle()
    state = checksum.file_state(path.stat())
    store.files.verified.remember(state, checksum.of(data))  # as if checked before the decay
    with _file(store, 0) as body:  # served: this is what the memo trades for speed
        assert os.pread(body.fileno(), 1, 0) != data[:1]
    checks = [store.inspect(skey) for skey in store.slice_keys()]
    assert [(c.ok, c.size) for c in checks if c is not None] == [(False, 100_000), (True, 20_000)]
    for check in checks:
        assert check is not None
        store.settle(check)
    assert store.get_slice("/k", "v1", 0) is None and not path.exists()
    assert store.get_slice("/k", "v1", 1) == pattern(20_000, seed=1)


def test_store_lets_go_of_descriptors_only_after_their_readers(store: CacheStore,
                                                               tmp_path: Path) -> None:
    data = pattern(100_000)
    _commit(store, tmp_path, data, 1)
    reader = _file(store, 1)
    store.forget_files()  # a purge in some worker
    other = os.open(tmp_path / "fill-1", os.O_RDONLY | os.O_CREAT)  # may reuse a number
    try:
        assert os.pread(reader.fileno(), len(data), 0) == data
    finally:
        os.close(other)
        reader.close()


async def test_a_fill_computes_the_checksum_as_it_writes(tmp_path: Path) -> None:
    flight = Flight("/k", 0, None)
    fill = SliceFill("/k", 0, tmp_path / "fill", flight, inline_max=1000)
    data = pattern(5000)
    for lo in range(0, len(data), 700):  # spills to the file past inline_max
        fill.write(memoryview(data)[lo:lo + 700])
    assert fill.on_disk and fill.sum.value() == xxhash.xxh3_64_intdigest(data)
    fill.release()
    await asyncio.sleep(0)


def test_a_background_scrub_drops_a_flipped_slice_nobody_reads(tmp_path: Path) -> None:
    with stack(tmp_path, scrub_interval=0.2) as st:
        body = pattern(3 * SLICE, seed=8)
        fill(st, "/static/d", body)
        target = st.slice_file("shield", body[2 * SLICE:])
        flip(target, 3)
        deadline = time.monotonic() + 10
        while target.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not target.exists()
        assert st.failures("shield") == 1 and st.failures("edge") == 0
        assert (st.config.cache_dir("shield") / "scrub.done").exists()


async def test_a_scrub_keeps_to_its_rate(store: CacheStore, tmp_path: Path) -> None:
    for index in range(3):
        _commit(store, tmp_path, pattern(100_000, seed=index), index)
    started = time.monotonic()
    state = await scrub.run(store, rate=1_000_000)
    assert (state.total, state.checked, state.bad, state.bytes) == (3, 3, 0, 300_000)
    assert time.monotonic() - started >= 0.29


def test_every_worker_of_a_node_finds_the_flip(tmp_path: Path) -> None:
    """Two workers keep the slice files open, each remembering them as checked: after one
    byte flips, no answer from either worker carries it."""
    origin = TestOrigin()
    body = pattern(4 * SLICE, seed=11)
    origin.put("/static/w", body, headers=CACHED)
    fresh = httpx.Limits(max_keepalive_connections=0)  # connections spread over both workers
    with edge_process(tmp_path, origin, SLICE, workers=2) as (edge, cache_dir), \
            httpx.Client(base_url=edge.url, limits=fresh) as client:
        assert client.get("/static/w").content == body
        settle()
        for _ in range(20):
            assert client.get("/static/w").content == body
        [target] = [p for p in cache_dir.rglob("*.val")
                    if p.read_bytes() == body[2 * SLICE:3 * SLICE]]
        flip(target, 4321)
        for _ in range(20):
            r = client.get("/static/w")
            assert r.status_code == 200 and r.content == body
        metrics = client.get("/metrics").text
        assert _metric(metrics, "edgeproxy_integrity_failures_total",
                       reason="slice_checksum") >= 1
