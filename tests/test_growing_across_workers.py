"""A body of unknown length (chunked, from an origin without Range) that one worker of a
node fetches while requests for it reach the node's other worker: they wait for it to be
stored, and every answer is whole (a second fetch beside the first, once its slice 0 was
in, lost the slices the first one claimed: its answers were cut there)."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from tests.foreign import ForeignOrigin
from tests.nodes import NodeProcess, edge_config_file
from tests.origins import pattern
from tests.servers import free_port

SLICE = 64 * 1024


@pytest.mark.parametrize(("etag", "slow"), [(None, False), ('"g1"', False), ('"g1"', True)],
                         ids=["no-validator", "etag", "longer-than-the-wait"])
def test_every_worker_follows_a_growing_body(tmp_path: Path, etag: str | None,
                                             slow: bool) -> None:
    """``slow``: the body takes 2 s to arrive, the other worker's requests wait 1 s at most
    for it (``fill_wait_timeout``), then relay their own answer (they were answered 504)."""
    body = pattern(6 * SLICE + 1234, seed=21)
    port = free_port()
    wait = ", fill_wait_timeout: 1" if slow else ""
    config = edge_config_file(tmp_path, port, cache=f"slice_size: {SLICE}{wait}",
                              edge="workers: 2")
    with ForeignOrigin() as origin:
        # the last 64 KiB a second late (or each 64 KiB 0.3 s late): the fill is still
        # growing as the others arrive
        origin.route("/static/grow", body=body, framing="chunked", ranges=False,
                     pause=0.0 if slow else 1.0, drip=0.3 if slow else 0.0,
                     etag=etag, headers=[("cache-control", "max-age=600")])
        with NodeProcess(config, "edge", f"http://127.0.0.1:{port}",
                         upstream=origin.url) as edge:
            got: list[object] = []
            start = threading.Barrier(8)

            def client() -> None:
                with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0),
                                  timeout=20) as http:
                    start.wait()
                    try:
                        r = http.get(edge.url + "/static/grow")
                        got.append(r.content if r.status_code == 200 else
                                   f"{r.status_code} {r.text[:200]}")  # (shown when it fails)
                    except httpx.HTTPError as exc:
                        got.append(exc)

            threads = [threading.Thread(target=client) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert [g == body if isinstance(g, bytes) else repr(g) for g in got] == [True] * 8, \
                edge.stderr()[-3000:]  # (the node's account of a failure)
            assert origin.count("/static/grow") == 1 or slow
            r = httpx.get(edge.url + "/static/grow")
            assert r.content == body and r.headers["x-cache"] == "HIT from edge"
