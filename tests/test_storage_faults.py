"""Storage faults degrade a node to a pass-through, never to a 5xx or a wrong byte: a full
disk (ENOSPC on fill files) and an index that cannot write ("database or disk is full"), over
real sockets, and the node caches again once the fault is gone."""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy.cache import create_app
from tests.origins import TestOrigin, pattern
from tests.servers import serve
from tests.test_cache_node import make_config

SLICE = 64 * 1024


class Faults:
    """Switches that make the node's index writes and fill-file writes fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cache: Any) -> None:
        self.index = False
        self.disk = False
        real_store, real_pwrite = cache.disk.store, os.pwrite

        def failing_store(*args: Any, **kwargs: Any) -> Any:  # under every index write
            if self.index:
                raise sqlite3.OperationalError("database or disk is full")
            return real_store(*args, **kwargs)

        def failing_pwrite(fd: int, data: Any, offset: int) -> int:
            if self.disk and offset >= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_pwrite(fd, data, offset)

        monkeypatch.setattr(cache.disk, "store", failing_store)
        monkeypatch.setattr("edgeproxy.cache.fills.os.pwrite", failing_pwrite)


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, TestOrigin,
                                                                            Faults]]:
    origin = TestOrigin()
    with serve(origin) as o:
        app = create_app(make_config(tmp_path, slice_size=SLICE), "edge", upstream=o.url)
        faults = Faults(monkeypatch, app.store._cache)
        with serve(app) as edge:
            yield edge.url, origin, faults


def _fault_count(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("edgeproxy_storage_faults_total{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("size", [5000, 5 * SLICE + 7])  # one small slice; several on disk
def test_an_index_that_cannot_write_passes_requests_through(
        node: tuple[str, TestOrigin, Faults], size: int) -> None:
    url, origin, faults = node
    body = pattern(size)
    origin.put("/static/a.bin", body, headers={"cache-control": "max-age=600"})
    faults.index = True
    # The first fault may strike a group commit after its answer was sent: slices pending
    # then are lost and fetched again. From then on the node knows, and writes at once.
    r = httpx.get(url + "/static/a.bin")
    assert r.status_code == 200 and r.content == body
    deadline = time.monotonic() + 5
    while _fault_count(url) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    before = origin.count("/static/a.bin")
    for _ in range(2):
        r = httpx.get(url + "/static/a.bin")
        assert r.status_code == 200 and r.content == body  # correct bytes from upstream
    assert origin.count("/static/a.bin") == before + 2  # nothing was stored, nor half-stored
    assert httpx.get(url + "/healthz").json()["status"] == "degraded"
    assert _fault_count(url) >= 2
    r = httpx.get(url + "/static/a.bin", headers={"range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == body[10:20]
    faults.index = False  # space is back: the node caches again by itself
    assert httpx.get(url + "/static/a.bin").content == body
    r = httpx.get(url + "/static/a.bin")
    assert r.content == body and r.headers["x-cache"] == "HIT from edge"


def test_a_full_disk_mid_fill_still_delivers_every_byte(
        node: tuple[str, TestOrigin, Faults]) -> None:
    url, origin, faults = node
    body = pattern(6 * SLICE)
    origin.put("/static/big.bin", body, headers={"cache-control": "max-age=600"})
    faults.disk = True  # every fill file write fails with ENOSPC
    r = httpx.get(url + "/static/big.bin")
    assert r.status_code == 200 and r.content == body
    assert httpx.get(url + "/healthz").json()["status"] == "degraded"
    faults.disk = False
    r = httpx.get(url + "/static/big.bin")
    assert r.status_code == 200 and r.content == body
