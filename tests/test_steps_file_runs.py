"""The steps send runs of stored slices as one zero-copy message each, as the fast lane does:
over real sockets, answers the steps give (a validator or a signature takes a request past
the lane) are byte-exact whole, by ranges across seams, and for objects of more slices than
one run takes; a slice changed on disk makes them go slice by slice (and fetch it again),
never send a wrong byte."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy.cache.lanebodies import PIECES_MAX
from edgeproxy.config import load_config
from edgeproxy.cyclesend import ZeroCopySend
from edgeproxy.guard import uvicorn_http_options
from edgeproxy.server import node_app
from tests.chain import edge_config, serve_edge
from tests.origins import TestOrigin
from tests.servers import ServerThread, serve
from tests.spies import assert_same_hits, wait_stored

SLICE = 64 * 1024
MANY = hashlib.shake_256(b"steps, many").digest(100 * SLICE - 77)  # 100 slices
MORE = hashlib.shake_256(b"steps, more").digest((PIECES_MAX + 40) * SLICE + 5)
STEPS = {"if-modified-since": "Thu, 01 Jan 1970 00:00:00 GMT"}  # (past the lane)


@pytest.fixture
def origin() -> Iterator[tuple[TestOrigin, ServerThread]]:
    o = TestOrigin()
    o.put("/static/many.bin", MANY, headers={"cache-control": "max-age=600"})
    o.put("/static/more.bin", MORE, headers={"cache-control": "max-age=600"})
    with serve(o) as srv:
        yield o, srv


@pytest.fixture
def edge(tmp_path: Path, origin: tuple[TestOrigin, ServerThread]) -> Iterator[ServerThread]:
    config = edge_config(tmp_path, origin[1].url, "cache: {slice_size: 64KiB}\n")
    with serve_edge(config, loop="uvloop") as srv:
        yield srv


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte counts of the runs of stored slices the server was handed."""
    counts: list[int] = []
    real = ZeroCopySend._send_piece

    async def spying(self: ZeroCopySend, cycle: Any, piece: Any, more: bool) -> None:
        counts.append(len(piece))
        await real(self, cycle, piece, more)

    monkeypatch.setattr(ZeroCopySend, "_send_piece", spying)
    return counts


@pytest.mark.parametrize(("rng", "first", "last"), [
    (None, 0, len(MANY) - 1),
    (f"bytes={SLICE - 3}-{90 * SLICE + 4}", SLICE - 3, 90 * SLICE + 4),
    (f"bytes={5 * SLICE + 7}-{5 * SLICE + 9}", 5 * SLICE + 7, 5 * SLICE + 9),  # inside one
])
def test_the_steps_send_stored_slices_as_one_run(
        edge: ServerThread, runs: list[int], rng: str | None, first: int, last: int) -> None:
    asked = {"range": rng} if rng else {}
    with httpx.Client(base_url=edge.url, timeout=10) as client:
        wait_stored(client, "/static/many.bin", MANY)
        lane = client.get("/static/many.bin", headers=asked)
        runs.clear()
        steps = client.get("/static/many.bin", headers={**asked, **STEPS})
    assert runs == [last - first + 1]
    assert lane.status_code == steps.status_code == (206 if rng else 200)
    assert_same_hits(lane, steps, MANY[first:last + 1])


def test_an_object_of_more_slices_than_a_run_goes_in_several(
        edge: ServerThread, runs: list[int]) -> None:
    with httpx.Client(base_url=edge.url, timeout=10) as client:
        wait_stored(client, "/static/more.bin", MORE)
        runs.clear()
        whole = client.get("/static/more.bin")  # (too many slices for the lane: the steps)
        assert whole.content == MORE and whole.headers["x-cache"].startswith("HIT")
        assert runs == [PIECES_MAX * SLICE, len(MORE) - PIECES_MAX * SLICE]
        runs.clear()
        start = 3 * SLICE + 1
        part = client.get("/static/more.bin", headers={"range": f"bytes={start}-"})
        assert part.status_code == 206 and part.content == MORE[start:]
        assert runs == [PIECES_MAX * SLICE - 1, len(MORE) - (PIECES_MAX + 3) * SLICE]


def _slice_file(root: Path, body: bytes, index: int) -> Path:
    wanted = body[index * SLICE:(index + 1) * SLICE]
    return next(p for p in root.rglob("*.val")
                if p.stat().st_size == SLICE and p.read_bytes() == wanted)


def test_a_slice_changed_on_disk_sends_slice_by_slice_and_is_fetched_again(
        edge: ServerThread, origin: tuple[TestOrigin, ServerThread], runs: list[int],
        tmp_path: Path) -> None:
    with httpx.Client(base_url=edge.url, timeout=10) as client:
        wait_stored(client, "/static/many.bin", MANY)
        fetched = origin[0].count("/static/many.bin")
        changed = _slice_file(tmp_path / "var", MANY, 60)
        data = bytearray(changed.read_bytes())
        data[100] ^= 0xFF
        changed.write_bytes(bytes(data))
        runs.clear()
        answer = client.get("/static/many.bin", headers=STEPS)
        assert answer.content == MANY  # never the flipped byte
        assert runs == []  # the run was refused before its first byte: slice by slice
        assert origin[0].count("/static/many.bin") == fetched + 1  # that slice, again
        runs.clear()
        assert client.get("/static/many.bin", headers=STEPS).content == MANY
        assert runs == [len(MANY)]  # stored right again: one run



@pytest.mark.parametrize("server", ["nginx", "http_server"])
def test_runs_from_static_servers_the_project_did_not_write(
        server: str, request: pytest.FixtureRequest, tmp_path: Path, runs: list[int]) -> None:
    """nginx and ``python -m http.server`` as the origin (Last-Modified only: heuristically
    fresh): the steps' answers from the stored slices are byte-exact, whole and across
    seams, in one run each, and the origin is asked once."""
    static = request.getfixturevalue(server)
    static.put("many.bin", MANY, mtime=time.time() - 10 * 86400)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(f"data_dir: {tmp_path / 'var'}\ncache: {{slice_size: 64KiB}}\n"
                           f"edge: {{upstream: '{static.url}', node_name: edge-1}}\n")
    config = load_config(config_path)
    with serve(node_app(config, "edge"), proxy_headers=False, loop="uvloop",
               **uvicorn_http_options(config.http_limits)) as edge, \
            httpx.Client(base_url=edge.url, timeout=10) as client:
        wait_stored(client, "/many.bin", MANY)
        runs.clear()
        whole = client.get("/many.bin", headers=STEPS)
        first, last = 3 * SLICE - 1, 77 * SLICE + 1
        part = client.get("/many.bin", headers={**STEPS, "range": f"bytes={first}-{last}"})
    assert whole.status_code == 200 and whole.content == MANY
    assert part.status_code == 206 and part.content == MANY[first:last + 1]
    assert runs == [len(MANY), last - first + 1]
    assert static.count("/many.bin") == 1
