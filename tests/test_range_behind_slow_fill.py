"""A range that joins a whole-object fill far ahead of where the fill has got waits for the
fill's progress, not its own slice's: it is answered once the bytes come, however long that
takes, while they keep coming (`cache.fill_wait_timeout` is the longest wait for a fill's
*next* bytes).

A flight writes its slices in order, and a range far into an object that a slow origin sends
whole waited for its own slice's first byte: after ``fill_wait_timeout`` it was answered 504,
or cut after its head, though bytes arrived all along (found from outside; a video seek into
a large cold object while another client fetches it whole).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgeproxy.cache import create_app
from tests.chain import chain_config
from tests.foreign import ForeignOrigin
from tests.nodes import NodeProcess
from tests.origins import pattern
from tests.servers import ServerThread, free_port

SLICE = 64 * 1024
BODY = pattern(10 * SLICE + 123, seed=81)
WAIT = 1.0  # fill_wait_timeout: shorter than the fill takes to reach the range's slice


@pytest.fixture
def edge(foreign: ForeignOrigin, tmp_path: Path) -> Iterator[str]:
    config = chain_config(tmp_path / "edge", slice_size=SLICE, fill_wait_timeout=WAIT)
    node = ServerThread(create_app(config, "edge", upstream=foreign.url)).start()
    try:
        yield node.url
    finally:
        node.stop()


def _whole_fill_under_way(foreign: ForeignOrigin, url: str, path: str,
                          whole: list[httpx.Response]) -> threading.Thread:
    """A client fetching ``path`` whole from ``url``, once the origin has its request."""
    leader = threading.Thread(target=lambda: whole.append(httpx.get(url + path, timeout=30)))
    leader.start()
    deadline = time.monotonic() + 5
    while not foreign.count(path):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return leader


def test_a_range_far_ahead_of_a_slow_whole_fill_is_answered(
        edge: str, foreign: ForeignOrigin) -> None:
    # 64 KiB every 0.3 s: slice 8 is reached ~2.4 s in, past the wait (a third of it apart)
    foreign.route("/v/t1/slow", body=BODY, etag='"slow"', drip=0.3,
                  headers=[("Cache-Control", "public, max-age=600")])
    whole: list[httpx.Response] = []
    leader = _whole_fill_under_way(foreign, edge, "/v/t1/slow", whole)
    time.sleep(0.1)
    first, last = 8 * SLICE + 10, 9 * SLICE + 20
    started = time.monotonic()
    r = httpx.get(edge + "/v/t1/slow", headers={"Range": f"bytes={first}-{last}"}, timeout=30)
    waited = time.monotonic() - started
    leader.join(30)
    assert r.status_code == 206, (r.status_code, r.text[:200])
    assert r.content == BODY[first:last + 1]
    assert waited > WAIT  # (it did wait past the wait's length: for the fill, not a fetch)
    assert foreign.count("/v/t1/slow") == 1  # one upstream request: the range joined the fill
    assert whole and whole[0].content == BODY


def test_a_range_in_another_worker_far_ahead_of_a_slow_whole_fill_is_answered(
        foreign: ForeignOrigin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same in another worker process (two node processes on one cache directory, as
    a node's workers are): it follows the fill through the slice's file, which does not
    exist until the fill gets there, and it was a 504 after ``fill_wait_timeout``. It waits
    while the filling worker holds the slice's claim (that flight lets go once its upstream
    is silent as long)."""
    foreign.route("/v/t1/slow2", body=BODY, etag='"slow2"', drip=0.3,
                  headers=[("Cache-Control", "public, max-age=600")])
    config = tmp_path / "config.yaml"
    ports = [free_port(), free_port()]
    config.write_text(f"data_dir: var\nlog_level: warning\nlog: {{access: 'off'}}\n"
                      f"edge: {{port: {ports[0]}, workers: 1}}\n"
                      f"cache: {{slice_size: {SLICE}, fill_wait_timeout: {WAIT}s}}\n")
    one = NodeProcess(config, "edge", f"http://127.0.0.1:{ports[0]}", upstream=foreign.url)
    with one:
        monkeypatch.setenv("EDGEPROXY_EDGE__PORT", str(ports[1]))
        with NodeProcess(config, "edge", f"http://127.0.0.1:{ports[1]}",
                         upstream=foreign.url) as two:
            whole: list[httpx.Response] = []
            leader = _whole_fill_under_way(foreign, one.url, "/v/t1/slow2", whole)
            time.sleep(0.2)
            first, last = 8 * SLICE + 10, 9 * SLICE + 20
            started = time.monotonic()
            r = httpx.get(two.url + "/v/t1/slow2", headers={"Range": f"bytes={first}-{last}"},
                          timeout=30)
            waited = time.monotonic() - started
            leader.join(30)
    assert r.status_code == 206, (r.status_code, r.text[:200])
    assert r.content == BODY[first:last + 1]
    assert waited > WAIT  # (past the wait's length: for the other worker's fill)
    assert foreign.count("/v/t1/slow2") == 1  # one upstream request: it followed the fill
    assert whole and whole[0].content == BODY
