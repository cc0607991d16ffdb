"""A stored slice's file removed under its readers: by an eviction, or by the index moving
on to a newer copy of the slice (another worker's refetch). Its bytes stay right for whoever
holds it open, and a slice fetched again must not replace the stored slices around it."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from edgeproxy.cache.checksum import file_state, same_bytes
from tests.foreign import ForeignOrigin
from tests.nodes import NodeProcess, edge_config_file
from tests.origins import TestOrigin, pattern
from tests.servers import free_port, serve
from tests.static_origins import HttpServer, Nginx
from tests.test_fault_flipped_byte import CACHED, edge_process, flip, settle, stalled_get


def test_only_a_write_is_a_change_to_an_unlinked_file(tmp_path: Path) -> None:
    path = tmp_path / "slice.val"
    path.write_bytes(pattern(10_000))
    settle()
    fd = os.open(path, os.O_RDWR)
    try:
        state = file_state(os.fstat(fd))
        assert same_bytes(state, os.fstat(fd))
        os.unlink(path)  # moves the ctime: the link count changed, not the bytes
        assert file_state(os.fstat(fd)) != state
        assert same_bytes(state, os.fstat(fd))
        settle()
        os.pwrite(fd, b"x", 5)  # a stray write through a descriptor held from before
        assert not same_bytes(state, os.fstat(fd))
    finally:
        os.close(fd)


def test_a_renamed_file_is_checked_again(tmp_path: Path) -> None:
    """A file that still has a name was moved: the store commits pending moves before it
    reads a file, so a state taken before a move is not trusted after it."""
    path = tmp_path / "slice.val"
    path.write_bytes(pattern(10_000))
    settle()
    state = file_state(path.stat())
    path.rename(tmp_path / "moved.val")
    assert not same_bytes(state, (tmp_path / "moved.val").stat())


def test_a_lane_answer_outlives_a_later_slice_removed_while_it_is_sent(tmp_path: Path) -> None:
    """Every slice of a whole lane answer is checked before its head; one whose file is
    removed meanwhile (evicted, or replaced by another worker) still holds its bytes, and
    the answer completes (it was cut short: the removal moved the file's ctime)."""
    size = 1024 * 1024
    body = pattern(12 * size, seed=9)
    origin = TestOrigin()
    origin.put("/static/lane", body, headers=CACHED)
    with edge_process(tmp_path, origin, size, workers=1) as (edge, cache_dir):
        assert httpx.get(edge.url + "/static/lane").content == body
        assert httpx.get(edge.url + "/static/lane").headers["x-cache"] == "HIT from edge"
        [target] = [p for p in cache_dir.rglob("*.val")
                    if p.read_bytes() == body[10 * size:11 * size]]
        length, got = stalled_get(edge.url, "/static/lane", lambda: target.unlink(),
                                  keep_alive=True)
        assert length == len(body) and got == body


def test_a_dropped_slice_is_fetched_alone(tmp_path: Path) -> None:
    """A slice that failed its check is fetched again by itself: the stored slices after it
    are neither fetched nor written again (their files were replaced, and every worker
    sending them found them changed)."""
    size = 64 * 1024
    body = pattern(6 * size, seed=12)
    origin = TestOrigin()
    origin.put("/static/six", body, headers=CACHED)
    with edge_process(tmp_path, origin, size, workers=1) as (edge, cache_dir):
        assert httpx.get(edge.url + "/static/six").content == body
        deadline = time.monotonic() + 5
        while len(list(cache_dir.rglob("*.val"))) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)  # (moved into place by the group commit)
        files = {p: p.stat().st_ino for p in cache_dir.rglob("*.val")}
        [target] = [p for p in files if p.read_bytes() == body[2 * size:3 * size]]
        flip(target, 100)
        r = httpx.get(edge.url + "/static/six")
        assert r.status_code == 200 and r.content == body
        assert [h.range for h in origin.hits] == [None, f"bytes={2 * size}-{3 * size - 1}"]
        deadline = time.monotonic() + 5
        while origin.bytes_sent("/static/six") < len(body) + size and time.monotonic() < deadline:
            time.sleep(0.01)  # (counted as the origin's send returns: the edge may be done)
        assert origin.bytes_sent("/static/six") == len(body) + size
        for path, ino in files.items():  # the others: the same files, untouched
            assert path == target or path.stat().st_ino == ino
        r = httpx.get(edge.url + "/static/six", headers={"range": f"bytes={size}-"})
        assert r.status_code == 206 and r.content == body[size:]
        assert origin.count("/static/six") == 2


@contextmanager
def _origin(kind: str, tmp_path: Path, bodies: dict[str, bytes]) -> Iterator[
        tuple[str, Callable[[], int]]]:
    """``bodies`` served by ``kind`` (ours, nginx with ranges and a year's max-age,
    ``python -m http.server``: no ranges, Last-Modified only, or a raw origin sending every
    body chunked, without ranges); its URL and request count."""
    if kind == "chunked":  # no length and no Range: each refetch is of the whole body
        with ForeignOrigin() as foreign:
            for path, body in bodies.items():
                foreign.route(path, body=body, framing="chunked", ranges=False, etag='"c1"',
                              headers=[("cache-control", "max-age=600")])
            yield foreign.url, foreign.count
        return
    if kind == "test":
        origin = TestOrigin()
        for path, body in bodies.items():
            origin.put(path, body, headers=CACHED)
        with serve(origin) as o:
            yield o.url, origin.count
        return
    static = (Nginx if kind == "nginx" else HttpServer)(tmp_path / kind)
    for path, body in bodies.items():
        static.put(path, body, mtime=time.time() - 86400)  # heuristically fresh: ~2 h
    static.start()
    try:
        yield static.url, static.count
    finally:
        static.stop()


@pytest.mark.parametrize("kind", ["test", "nginx", "http.server", "chunked"])
def test_answers_stay_whole_while_evictions_churn_the_cache(tmp_path: Path, kind: str) -> None:
    """Two workers, a cache a third the size of what clients ask for: slices are evicted
    (by either worker) while the other sends them. Every answer is whole and right, against
    the origin's bytes (answers were cut short when an eviction removed a file a lane answer
    had checked: 1 run in 3 on our origin)."""
    size = 256 * 1024
    bodies = {f"/immutable/e{i}": pattern(8 * size + 1000 * i, seed=40 + i) for i in range(8)}
    port = free_port()
    config = edge_config_file(tmp_path, port, cache=f"slice_size: {size}, memory_size: 0",
                              edge=f"workers: 2, cache_size: {8 * 2**20}")
    problems: list[str] = []
    answers = [0]

    def client(seed: int, url: str) -> None:
        rng = random.Random(seed)
        deadline = time.monotonic() + 4
        with httpx.Client(base_url=url, limits=httpx.Limits(max_keepalive_connections=0),
                          timeout=20) as http:
            while time.monotonic() < deadline:
                path = rng.choice(sorted(bodies))
                body = bodies[path]
                lo = rng.randrange(len(body)) if rng.random() < 0.5 else 0
                try:
                    r = http.get(path, headers={"range": f"bytes={lo}-"} if lo else {})
                except httpx.HTTPError as exc:
                    problems.append(f"{path} from {lo}: {exc!r}")
                    continue
                answers[0] += 1
                # (a 200 whole is an answer to a Range too, RFC 9110 §14.2: a miss on a body
                # of unknown length from an origin without ranges gets one)
                want = body[lo:] if r.status_code == 206 else body
                if r.status_code not in (200, 206) or r.content != want:
                    problems.append(f"{path} from {lo}: {r.status_code}, {len(r.content)} bytes"
                                    + (f": {r.text[:200]}" if r.status_code >= 300 else ""))

    with _origin(kind, tmp_path, bodies) as (url, count), \
            NodeProcess(config, "edge", f"http://127.0.0.1:{port}", upstream=url) as edge:
        threads = [threading.Thread(target=client, args=(seed, edge.url)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert problems == [], edge.stderr()[-3000:]  # (the node's account of them)
        assert answers[0] > 40
        assert count() > 2 * len(bodies)  # evicted slices were fetched again
