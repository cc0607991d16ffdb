"""Slice sums between tiers (`edgeproxy.cache.slicesums`): a node answering another node's
fill names the xxh3 of each whole stored slice it sends from files, and the node below
commits a slice only if its bytes hash to that; otherwise the answers reading it are cut and
nothing is stored.

Found by a chaos run flipping bytes in a shield's slice files: ``sendfile`` sends page-cache
pages by reference, so a write after the shield's last check reached the edge, which stored
the wrong bytes under its own xxh3 and served them as hits. Here the bytes are flipped on the
wire between the tiers instead (a proxy), which the shield's own checks cannot see either.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import httpx
import pytest
import xxhash
import yaml

from edgeproxy.cache import checksum
from edgeproxy.cache.deliver import Reply
from edgeproxy.cache.meta import ObjectMeta
from edgeproxy.cache.policy import Freshness
from edgeproxy.cache.slicefiles import FilePiece, KeptFile, SliceFile
from edgeproxy.cache.slicesums import (
    SUMS,
    WANT,
    asked,
    expected,
    of_run,
    request_fields,
    response_fields,
    size_asked,
    with_stored,
)
from edgeproxy.cache.store import CacheStore
from edgeproxy.config import Config, load_config
from edgeproxy.guard import uvicorn_http_options
from edgeproxy.http import ByteRange
from edgeproxy.server import node_app
from tests.foreign import ForeignOrigin
from tests.nodes import NodeProcess, edge_config_file
from tests.origins import pattern
from tests.servers import ServerThread, free_port
from tests.test_cache_node import _metric

S = 512 * 1024  # the slice size of every node here
BODY = pattern(4 * S - 1000, seed=11)  # four slices, the last one short
IMMUTABLE = ("Cache-Control", "public, max-age=31536000, immutable")
INTEGRITY = "edgeproxy_integrity_failures_total"


def _sum(index: int) -> int:
    return xxhash.xxh3_64_intdigest(BODY[index * S:(index + 1) * S])


def _listed(first: int, last: int) -> str:
    return f"{S} {first} " + ",".join(f"{_sum(i):016x}" for i in range(first, last + 1))


# --- the fields, as pure functions ---

@pytest.mark.parametrize(("value", "size"), [
    (b"524288", 524288),
    (b" 65536 ", 65536),
    (b"0", None),          # not a slice size
    (b"-1", None),
    (b"1e6", None),
    (b"", None),
    (b"9" * 20, None),     # absurdly large: ignored, not an error
])
def test_the_size_a_request_asks_sums_for(value: bytes, size: int | None) -> None:
    assert size_asked(value) == size
    assert asked([(b"range", b"bytes=0-1"), (WANT, value)]) == size


def test_a_fill_asks_for_its_own_slice_size_hop_by_hop() -> None:
    fields = request_fields(S)
    assert asked(fields) == S
    assert (b"connection", WANT) in fields  # RFC 9110 §7.6.1: not forwarded further


@pytest.mark.parametrize(("sums", "first", "value"), [
    ([1, 2], 3, b"524288 3 0000000000000001,0000000000000002"),
    ([None, 7, None, 8, None], 0, b"524288 1 0000000000000007,-,0000000000000008"),
    ([None, None], 0, None),  # nothing known: no field at all
    ([], 5, None),
])
def test_response_fields(sums: list[int | None], first: int, value: bytes | None) -> None:
    fields = response_fields(S, first, sums)
    if value is None:
        assert fields == []
    else:
        assert fields == [(SUMS, value), (b"connection", SUMS)]


@pytest.mark.parametrize(("value", "size", "sums"), [
    ("524288 3 0000000000000001,-,00000000000000ff", S, {3: 1, 5: 255}),
    ("524288 3 0000000000000001", 1024 * 1024, {}),  # another slice size: nothing checked
    ("524288 3 01", S, {}),                           # not 16 hex digits
    ("524288 3 000000000000000g", S, {}),
    ("524288 x 0000000000000001", S, {}),
    ("524288 3", S, {}),
    ("", S, {}),
    (None, S, {}),
])
def test_expected_sums(value: str | None, size: int, sums: dict[int, int]) -> None:
    assert expected(value, size) == sums


def test_of_run_names_the_slices_a_run_carries_whole(tmp_path: Path) -> None:
    files = []
    for i in range(3):
        path = tmp_path / f"s{i}"
        path.write_bytes(BODY[i * S:(i + 1) * S])
        files.append(SliceFile(KeptFile(os.open(path, os.O_RDONLY), str(path), _sum(i)),
                               (0, 0, S, 0, 0)))
    last = BODY[3 * S:]  # an inline last slice: hashed here
    # from byte 10 of slice 0 (not whole) to the end of the object
    run = FilePiece(files[0], 10, S - 10, (FilePiece(files[1], 0, S),
                                           FilePiece(files[2], 0, S), last))
    assert of_run(run, 10, S, len(BODY)) == response_fields(
        S, 1, [_sum(1), _sum(2), checksum.of(last)])
    # slice 1 whole, then the first half of slice 2 only
    run = FilePiece(files[1], 0, S, (FilePiece(files[2], 0, S // 2),))
    assert of_run(run, S, S, len(BODY)) == response_fields(S, 1, [_sum(1)])
    for file in files:
        file.close()
        os.close(file.fileno())


class _Index:
    """The store's `slice_sums`, for slices 0, 1 and 3 (slice 2 is not stored)."""

    def __init__(self) -> None:
        self.asked: list[list[int]] = []

    def slice_sums(self, key: str, version: str, indexes: list[int]) -> dict[int, int]:
        self.asked.append(list(indexes))
        return {i: _sum(i) for i in indexes if i != 2}


META = ObjectMeta(200, len(BODY), None, None, None, (), Freshness(0.0, 0.0, 60.0), "x", "v1", S)


@pytest.mark.parametrize(("rng", "want", "queried", "value"), [
    (None, S, [0, 1, 2, 3], f"{S} 0 {_sum(0):016x},{_sum(1):016x},-,{_sum(3):016x}"),
    ((100, 3 * S - 1), S, [1, 2], f"{S} 1 {_sum(1):016x}"),        # slice 0 not whole
    ((S, 2 * S + 5), S, [1], f"{S} 1 {_sum(1):016x}"),
    ((3 * S, len(BODY) - 1), S, [3], f"{S} 3 {_sum(3):016x}"),      # the short last slice
    ((10, 20), S, None, None),                                      # no whole slice
    (None, 2 * S, None, None),                                      # another slice size
    (None, None, None, None),                                       # not asked
])
def test_the_steps_name_the_sums_the_index_holds(
        rng: tuple[int, int] | None, want: int | None, queried: list[int] | None,
        value: str | None) -> None:
    ranges = None if rng is None else [ByteRange(*rng)]
    reply = Reply(200 if rng is None else 206, [("etag", '"v1"')], ranges)
    index = _Index()
    headers = [] if want is None else [(WANT, str(want).encode())]
    got = with_stored(reply, META, cast(CacheStore, index), "/o", headers)
    assert index.asked == ([] if queried is None else [queried])
    fields = dict(got.headers)
    assert fields.get("edgeproxy-slice-sums") == value
    assert ("connection" in fields) is (value is not None)


def test_slices_being_filled_are_not_looked_up() -> None:
    """A miss's answer (its slices filled as it goes) costs no index query."""
    reply = Reply(200, [], None)
    headers = [(WANT, str(S).encode())]
    index = _Index()
    got = with_stored(reply, META, cast(CacheStore, index), "/o", headers, {1, 3})
    assert index.asked == [[0, 2]]
    assert dict(got.headers)["edgeproxy-slice-sums"] == f"{S} 0 {_sum(0):016x}"
    index = _Index()
    assert with_stored(reply, META, cast(CacheStore, index), "/o", headers, {0, 1, 2, 3}) \
        is reply
    assert index.asked == []


def test_the_store_reads_sums_from_file_names_and_inline_rows(tmp_path: Path) -> None:
    """A slice file's sum is in its name, an inline slice's before its bytes; slices still
    pending in this worker's group commit count too, and a slice not stored has none."""
    store = CacheStore(tmp_path / "cache", 1024**3)
    small = BODY[:1000]
    expect = {0: checksum.of(small), 1: _sum(1)}

    async def commit_and_read() -> dict[int, int]:
        fill = tmp_path / "cache" / "fill"
        fill.write_bytes(BODY[S:2 * S])
        store.commit_slice("/o", "v1", 1, fill, S, checksum=_sum(1))  # a file
        store.commit_slice("/o", "v1", 0, tmp_path / "unused", len(small), small,
                           checksum=checksum.of(small))  # inline
        assert store._batch.pending  # (in a loop, commits wait for the group's)
        return store.slice_sums("/o", "v1", range(4))

    try:
        assert asyncio.run(commit_and_read()) == expect
        store.commit()
        assert store.slice_sums("/o", "v1", range(4)) == expect
        assert store.slice_sums("/o", "v2", range(4)) == {}
    finally:
        store.close()


# --- nodes over real sockets ---

def _config(directory: Path, role: str, upstream: str) -> Config:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(f"data_dir: {directory / 'var'}\nlog_level: warning\n"
                    f"{role}: {{upstream: '{upstream}', node_name: {role}-1}}\n"
                    f"cache: {{slice_size: {S}}}\n")
    return load_config(path)


def _serve(config: Config, role: str) -> ServerThread:
    """``role``'s node as ``edgeproxy serve`` runs it (its server protocol: answers from
    slice files go by ``sendfile``)."""
    return ServerThread(node_app(config, role), proxy_headers=False,
                        **uvicorn_http_options(config.http_limits)).start()


@pytest.fixture
def origin(foreign: ForeignOrigin) -> ForeignOrigin:
    foreign.route("/o", body=BODY, etag='"v1"', headers=[IMMUTABLE])
    return foreign


@pytest.fixture
def shield(origin: ForeignOrigin, tmp_path: Path) -> Iterator[ServerThread]:
    node = _serve(_config(tmp_path / "shield", "shield", origin.url), "shield")
    try:
        assert httpx.get(node.url + "/o").content == BODY  # stored, as slice files
        # a shield's upstream is the origin: it asks for no sums
        assert origin.requests("/o")[0].header("edgeproxy-want-slice-sums") is None
        yield node
    finally:
        node.stop()


def _ask(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url + "/o", headers=headers, timeout=10)


@pytest.mark.parametrize(("headers", "listed"), [
    ({}, (0, 3)),                                           # whole, from files (the lane)
    ({"Range": f"bytes={S}-{3 * S - 1}"}, (1, 2)),          # slices 1-2 (the lane)
    ({"Range": f"bytes=100-{3 * S - 1}"}, (1, 2)),          # slice 0 not whole
    ({"Range": f"bytes={S}-{2 * S - 1}"}, (1, 1)),          # one slice, from its file
    ({"Range": f"bytes={S}-{3 * S - 1}", "If-Range": '"v1"'}, (1, 2)),  # the steps
    ({"If-None-Match": '"v0"'}, (0, 3)),                    # the steps, whole
])
def test_a_node_names_the_sums_of_the_slices_it_sends_from_files(
        shield: ServerThread, headers: dict[str, str], listed: tuple[int, int]) -> None:
    resp = _ask(shield.url, **headers, **{"Edgeproxy-Want-Slice-Sums": str(S)})
    start = 0 if "Range" not in headers else int(headers["Range"][6:].partition("-")[0])
    assert resp.content == BODY[start:start + len(resp.content)]
    assert resp.headers["edgeproxy-slice-sums"] == _listed(*listed)
    assert "edgeproxy-slice-sums" in resp.headers["connection"].lower()


@pytest.mark.parametrize("want", [None, str(2 * S), "many"])
def test_no_sums_unless_asked_for_the_nodes_slice_size(shield: ServerThread,
                                                       want: str | None) -> None:
    headers = {} if want is None else {"Edgeproxy-Want-Slice-Sums": want}
    resp = _ask(shield.url, **headers)
    assert resp.content == BODY
    assert "edgeproxy-slice-sums" not in resp.headers


@pytest.mark.parametrize("corrupt", [True, False])
def test_an_edge_commits_no_slice_that_differs_from_its_upstreams_sum(
        foreign: ForeignOrigin, tmp_path: Path, corrupt: bool) -> None:
    """An upstream that names the right sums but garbles the bytes of its ranges: the
    answers reading a garbled slice are cut before their last byte, and nothing is stored."""
    foreign.route("/o", body=BODY, etag='"v1"', headers=[IMMUTABLE], corrupt_ranges=corrupt,
                  slice_sums=S)
    edge = _serve(_config(tmp_path / "edge", "edge", foreign.url), "edge")
    try:
        late = f"bytes={S + 10}-{S + 109}"  # within slice 1: its fill asks a range from S
        for attempt in (1, 2):
            if corrupt:
                with pytest.raises(httpx.HTTPError):
                    httpx.get(edge.url + "/o", headers={"Range": late}, timeout=10).read()
                assert foreign.count("/o") == attempt  # nothing stored: fetched again
            else:
                resp = httpx.get(edge.url + "/o", headers={"Range": late}, timeout=10)
                assert resp.status_code == 206 and resp.content == BODY[S + 10:S + 110]
                assert "edgeproxy-slice-sums" not in resp.headers  # (one hop only)
                assert foreign.count("/o") == 1  # stored: a hit the second time
        metrics = httpx.get(edge.url + "/metrics").text
        assert _metric(metrics, INTEGRITY, reason="upstream_slice") == (2 if corrupt else 0)
        sent = foreign.requests("/o")[0]
        assert sent.header("edgeproxy-want-slice-sums") == str(S)
        assert "edgeproxy-want-slice-sums" in (sent.header("connection") or "")
    finally:
        edge.stop()


def test_a_clients_ask_is_not_forwarded_in_place_of_the_nodes_own(
        foreign: ForeignOrigin, tmp_path: Path) -> None:
    foreign.route("/o", body=BODY, etag='"v1"', headers=[IMMUTABLE])
    edge = _serve(_config(tmp_path / "edge", "edge", foreign.url), "edge")
    try:
        resp = httpx.get(edge.url + "/o", headers={"Edgeproxy-Want-Slice-Sums": "65536"})
        assert resp.content == BODY
        assert foreign.requests("/o")[0].header("edgeproxy-want-slice-sums") == str(S)
    finally:
        edge.stop()


class FlippingProxy:
    """A TCP relay that flips one bit of the first answer body it relays, ``at`` bytes in:
    bytes that go wrong between two nodes, where neither node's own checks look."""

    def __init__(self, upstream_port: int, at: int) -> None:
        self.upstream_port = upstream_port
        self.at = at
        self.flipped = 0
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FlippingProxy:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _relay(self, client_r: asyncio.StreamReader,
                     client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def up() -> None:
            while data := await client_r.read(65536):
                up_w.write(data)
                await up_w.drain()
            up_w.close()

        task = asyncio.ensure_future(up())
        head = bytearray()
        while b"\r\n\r\n" not in head and (data := await up_r.read(65536)):
            head += data
        position = head.find(b"\r\n\r\n") + 4 + self.at  # in the stream
        found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        seen, chunk = 0, head
        while chunk:
            if not self.flipped and found and int(found[1]) > self.at \
                    and seen <= position < seen + len(chunk):
                chunk[position - seen] ^= 1
                self.flipped += 1
            seen += len(chunk)
            client_w.write(chunk)
            await client_w.drain()
            chunk = bytearray(await up_r.read(65536))
        client_w.close()
        task.cancel()


def test_bytes_that_go_wrong_between_the_tiers_are_not_stored_at_the_edge(
        shield: ServerThread, tmp_path: Path) -> None:
    """Edge → (a relay that flips one bit of slice 1) → shield, which sends the object from
    its files and names their sums: the edge cuts the answer, counts the failure, stores the
    other slices, and serves the object whole and right on the next request."""
    with FlippingProxy(shield.port, at=S + 1234) as proxy:
        edge = _serve(_config(tmp_path / "edge", "edge", f"http://127.0.0.1:{proxy.port}"),
                      "edge")
        try:
            with pytest.raises(httpx.HTTPError):
                httpx.get(edge.url + "/o", timeout=10).read()
            assert proxy.flipped == 1
            metrics = httpx.get(edge.url + "/metrics").text
            assert _metric(metrics, INTEGRITY, reason="upstream_slice") == 1
            resp = httpx.get(edge.url + "/o", timeout=10)
            assert resp.status_code == 200 and resp.content == BODY
            again = httpx.get(edge.url + "/o", timeout=10)
            assert again.content == BODY and again.headers["x-cache"].startswith("HIT")
        finally:
            edge.stop()


def test_no_worker_completes_an_answer_from_a_slice_that_failed_its_sum(
        shield: ServerThread, tmp_path: Path) -> None:
    """A two-worker edge (`edgeproxy serve`), eight clients at once for the object whose
    first fill from the shield has a bit flipped on the wire: the requests that read that
    fill, in its worker or following it from the other one, are cut, never completed with
    the wrong byte; the rest are whole and right, and so is the object afterwards."""
    (tmp_path / "edge").mkdir()
    with FlippingProxy(shield.port, at=S + 4321) as proxy:
        config = edge_config_file(tmp_path / "edge", free_port(), cache=f"slice_size: {S}",
                                  edge=f"upstream: 'http://127.0.0.1:{proxy.port}', workers: 2")
        port = yaml.safe_load(config.read_text())["edge"]["port"]
        with NodeProcess(config, "edge", f"http://127.0.0.1:{port}") as edge:
            gate = threading.Barrier(8)

            def fetch(_: int) -> bytes | None:
                gate.wait()
                try:
                    return httpx.get(edge.url + "/o", timeout=20).raise_for_status().content
                except httpx.HTTPError:
                    return None  # cut short

            with ThreadPoolExecutor(8) as pool:
                got = list(pool.map(fetch, range(8)))
            assert proxy.flipped == 1
            assert all(body is None or body == BODY for body in got)
            assert got.count(None) >= 1
            metrics = httpx.get(edge.url + "/metrics").text
            assert _metric(metrics, INTEGRITY, reason="upstream_slice") == 1
            assert httpx.get(edge.url + "/o", timeout=20).content == BODY
