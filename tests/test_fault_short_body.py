"""An upstream whose body ends short: a Content-Length answer closed early, a chunked answer
without its last chunk (RFC 9112 §6.3, §8: both are incomplete messages).

Behind an edge alone and behind edge → shield, for a content-addressed path and a generic one:
the client's answer is cut (never completed, every byte delivered right), the cut body is not
stored (the next request goes upstream again, and is cut again while the origin still breaks
off), and once the origin sends the whole body the answer is byte-exact, then a byte-exact HIT.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.answers import assert_never_wrong, read_answer
from tests.chain import guarded_nodes
from tests.foreign import ForeignOrigin
from tests.nodes import node_process
from tests.origins import pattern
from tests.test_cache_node import SLICE, make_config

CACHEABLE = ("Cache-Control", "public, max-age=600")


@pytest.fixture(scope="module")
def foreign() -> Iterator[ForeignOrigin]:
    """One scriptable origin for the module; each test routes paths of its own."""
    with ForeignOrigin() as origin:
        yield origin


@pytest.fixture(scope="module", params=["edge", "edge+shield"])
def edge(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
         foreign: ForeignOrigin) -> Iterator[str]:  # fmt: skip
    """The URL of an edge in front of ``foreign``, directly or through a shield."""
    config = make_config(tmp_path_factory.mktemp("nodes"))  # default classes; 64 KiB slices
    with guarded_nodes(config, foreign.url, shield=request.param == "edge+shield") as (url, _):
        yield url


def late_reader() -> Callable[[int], None]:
    """An ``on_bytes`` hook that stops reading for a moment after the first bytes: the node's
    delivery is held up (its socket buffers full) while its upstream transfer runs ahead and
    breaks off, so delivery reaches the missing bytes after the fill has ended."""
    paused: list[bool] = []

    def pause(_count: int) -> None:
        if not paused:
            paused.append(True)
            time.sleep(0.25)

    return pause


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("kind", ["content-addressed", "generic"])
def test_a_short_body_is_cut_and_not_stored(edge: str, foreign: ForeignOrigin, framing: str,
                                            kind: str) -> None:  # fmt: skip
    # 8 MiB, cut at 4 MiB: more than socket buffers hold while the client does not read
    body = pattern(128 * SLICE + 123, seed=len(framing + kind))
    path = "/v/t1/" + hashlib.sha256(body).hexdigest() if kind == "content-addressed" \
        else f"/static/cut-{framing}.bin"
    fields: dict[str, Any] = {"body": body, "framing": framing, "headers": [CACHEABLE],
                              "etag": '"v1"'}
    foreign.route(path, **fields, cut_at=64 * SLICE + 500)
    for on_bytes in (late_reader(), None):
        before = foreign.count(path)
        assert_never_wrong(read_answer(edge + path, on_bytes=on_bytes), body, must_cut=True)
        assert foreign.count(path) > before, "a cut body was served from the cache"
    foreign.route(path, **fields)  # the origin sends the whole body again
    r = httpx.get(edge + path, timeout=10)
    assert r.status_code == 200 and r.content == body
    r = httpx.get(edge + path, timeout=10)
    assert r.headers["x-cache"].startswith("HIT from edge") and r.content == body
    r = httpx.get(edge + path, headers={"range": f"bytes={63 * SLICE}-{66 * SLICE}"},
                  timeout=10)
    assert r.status_code == 206 and r.content == body[63 * SLICE : 66 * SLICE + 1]


def test_a_short_body_does_not_stop_the_node(edge: str, foreign: ForeignOrigin) -> None:
    """Other objects are served while one keeps breaking off."""
    broken, fine = pattern(3 * SLICE, seed=1), pattern(2 * SLICE + 9, seed=2)
    foreign.route("/static/broken", body=broken, headers=[CACHEABLE], cut_at=SLICE + 1)
    foreign.route("/static/fine", body=fine, headers=[CACHEABLE])
    for _ in range(3):
        assert_never_wrong(read_answer(edge + "/static/broken"), broken, must_cut=True)
        r = httpx.get(edge + "/static/fine", timeout=10)
        assert r.status_code == 200 and r.content == fine


def test_a_cut_answer_is_one_warning_in_the_log_not_a_traceback(
        foreign: ForeignOrigin, tmp_path: Path) -> None:
    """Past the status line the node can only abort the connection, which an ASGI app asks
    for by raising: its boundary logs the failure as one warning (and its repeats once a
    window), and uvicorn's traceback of the same failure is dropped (an origin that keeps
    breaking off must not bury the log)."""
    body = pattern(300_000, seed=21)
    foreign.route("/log/cut", body=body, headers=[CACHEABLE], cut_at=100_000)
    with node_process(tmp_path, "edge", foreign.url) as edge:
        for _ in range(3):
            with pytest.raises(httpx.RemoteProtocolError):
                httpx.get(edge.url + "/log/cut", timeout=10)
        time.sleep(0.3)
        log = edge.err.read_text()
    # (once: repeats within `boundary.UPSTREAM_LOG_WINDOW` are counted, not logged)
    assert log.count("the upstream transfer broke off") == 1, log
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log
