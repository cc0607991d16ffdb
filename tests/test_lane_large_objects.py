"""Large whole objects from their slice files: an object of up to `lanebodies.PIECES_MAX`
slices is answered by the fast lane from the files themselves (by ``sendfile``, byte-exact,
the same fields as the steps' answer), a larger one by the steps; and a node raises its
open-files limit, since such answers hold a descriptor per slice while they go out."""

from __future__ import annotations

import hashlib
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy.cache.lanebodies import PIECES_MAX
from edgeproxy.cache.slicefiles import FilePiece
from tests.chain import edge_config, serve_edge
from tests.nodes import node_process
from tests.origins import TestOrigin
from tests.servers import ServerThread, serve
from tests.spies import assert_same_hits, count_sendfiles, lane_answers, wait_stored

SLICE = 64 * 1024
MANY = hashlib.shake_256(b"many slices").digest(100 * SLICE - 77)  # 100 slices
TOO_MANY = hashlib.shake_256(b"too many").digest((PIECES_MAX + 3) * SLICE)


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[ServerThread]:
    o = TestOrigin()
    o.put("/static/many.bin", MANY, headers={"cache-control": "max-age=600"})
    o.put("/static/too-many.bin", TOO_MANY, headers={"cache-control": "max-age=600"})
    with serve(o) as origin:
        config = edge_config(tmp_path, origin.url, "cache: {slice_size: 64KiB}\n")
        with serve_edge(config) as srv:
            yield srv


@pytest.fixture
def lane(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, Any]]:
    return lane_answers(monkeypatch)


@pytest.fixture
def sendfiles(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    return count_sendfiles(monkeypatch)


@pytest.mark.parametrize(("rng", "first", "last"), [
    (None, 0, len(MANY) - 1),  # the whole object: 100 slices
    (f"bytes={SLICE - 3}-{90 * SLICE + 4}", SLICE - 3, 90 * SLICE + 4),  # across 90 seams
])
def test_an_object_of_many_slices_goes_from_its_files_by_the_lane(
        edge: ServerThread, lane: list[tuple[int, Any]], sendfiles: list[int],
        rng: str | None, first: int, last: int) -> None:
    asked = {"range": rng} if rng else {}
    with httpx.Client(base_url=edge.url, timeout=10) as client:
        wait_stored(client, "/static/many.bin", MANY)
        lane.clear()
        sendfiles.clear()
        fast = client.get("/static/many.bin", headers=asked)
        assert [status for status, _ in lane] == [206 if rng else 200]
        body = lane[0][1]
        assert isinstance(body, FilePiece) and len(body.then) >= 89  # a piece per slice
        assert sum(sendfiles) >= last - first + 1 - SLICE  # (a last short slice is inline)
        # a validator takes a request through the steps: their answer is the reference
        steps = client.get("/static/many.bin", headers={
            **asked, "if-modified-since": "Thu, 01 Jan 1970 00:00:00 GMT"})
    assert_same_hits(fast, steps, MANY[first:last + 1])


def test_an_object_of_more_slices_than_the_lane_takes_goes_by_the_steps(
        edge: ServerThread, lane: list[tuple[int, Any]]) -> None:
    with httpx.Client(base_url=edge.url, timeout=10) as client:
        wait_stored(client, "/static/too-many.bin", TOO_MANY)
        lane.clear()
        whole = client.get("/static/too-many.bin")
        assert lane == []  # declined: too many slices to find and check before the head
        assert whole.content == TOO_MANY and whole.headers["x-cache"].startswith("HIT")


def _limits(pid: int) -> tuple[int, int]:
    """The soft and hard open-files limits of process ``pid``."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files limit")


def test_a_node_raises_its_open_files_limit_to_the_hard_one(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256
    assert hard == resource.RLIM_INFINITY or hard > low  # (else nothing to show here)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # the node inherits it
    try:
        node = node_process(tmp_path / "edge", "edge", "http://127.0.0.1:9").launch()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        node.ready()
        assert _limits(node.pid)[0] == (hard if hard != resource.RLIM_INFINITY else 1 << 20)
    finally:
        node.stop()


def test_the_soft_limit_goes_to_the_hard_one_and_no_further() -> None:
    code = ("import resource\n"
            "from edgeproxy.server import raise_open_files_limit\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (200, 300))\n"
            "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))\n"
            "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["300 (300, 300)", "300 (300, 300)"]


def test_a_large_answer_widens_its_sockets_send_buffer(
        edge: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer of at least `WIDE_MIN` bytes from files gets a wider send buffer (fewer
    sendfile calls and wake-ups); a smaller one leaves the socket as it is."""
    from edgeproxy import zerocopy

    widened: list[int] = []
    real = zerocopy.widen

    def spying(transport: Any) -> None:
        sock = transport.get_extra_info("socket")
        real(transport)
        widened.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))

    monkeypatch.setattr(zerocopy, "widen", spying)
    assert len(MANY) >= zerocopy.WIDE_MIN
    small = f"bytes=0-{zerocopy.WIDE_MIN // 2}"
    with httpx.Client(base_url=edge.url, timeout=10) as client:
        wait_stored(client, "/static/many.bin", MANY)
        widened.clear()
        assert client.get("/static/many.bin", headers={"range": small}).status_code == 206
        assert widened == []
        assert client.get("/static/many.bin").content == MANY
        assert len(widened) == 1 and widened[0] >= zerocopy.WIDE_SEND  # (Linux doubles it)
