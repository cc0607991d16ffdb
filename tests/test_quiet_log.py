"""A fault that repeats is logged once a minute with its count, not once per request: a
full cache volume faults every fill (~1,000 ERROR lines a second under load, before)."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from edgeproxy.quietlog import QuietLog
from tests.nodes import NodeProcess, edge_config_file
from tests.origins import TestOrigin, pattern
from tests.servers import free_port, serve
from tests.test_cache_node import _metric

CACHED = {"cache-control": "max-age=600"}


def test_repeats_are_counted_and_told_once_a_window(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    quiet = QuietLog(logging.getLogger("test.quiet"), window=60, clock=lambda: now[0])
    caplog.set_level(logging.INFO, "test.quiet")
    said = []
    for t, kind in [(100, "no_space"), (101, "no_space"), (102, "io"), (130, "no_space"),
                    (159.9, "no_space"), (160, "no_space"), (161, "no_space"), (221, "no_space")]:
        now[0] = t
        said.append(quiet.error(kind, "fault %s at %d", kind, t))
    assert said == [True, False, True, False, False, True, False, True]
    assert [r.getMessage() for r in caplog.records] == [
        "fault no_space at 100",
        "fault io at 102",
        "fault no_space at 160 (3 more like it in the last 60 s)",
        "fault no_space at 221 (1 more like it in the last 61 s)",
    ]
    assert all(r.levelno == logging.ERROR for r in caplog.records)


def test_a_node_without_room_logs_its_storage_fault_once(tmp_path: Path) -> None:
    """Every miss passes through unstored (no room above the reserve: ~all of the volume),
    and is answered whole; the log says so once, not once per miss."""
    origin = TestOrigin()
    bodies = {f"/static/n{i}": pattern(70_000 + i, seed=i) for i in range(30)}
    for path, body in bodies.items():
        origin.put(path, body, headers=CACHED)
    port = free_port()
    config = edge_config_file(tmp_path, port, cache="slice_size: 65536, min_free: '99.99%'",
                              log_level="info")
    with serve(origin) as o, \
            NodeProcess(config, "edge", f"http://127.0.0.1:{port}", upstream=o.url) as edge:
        for path, body in bodies.items():
            r = httpx.get(edge.url + path)
            assert r.status_code == 200 and r.content == body
        assert origin.count() == len(bodies)
        faults = httpx.get(edge.url + "/metrics").text
    lines = [line for line in edge.err.read_text().splitlines() if " ERROR " in line]
    assert len(lines) == 1 and "storage fault (no_space)" in lines[0], lines
    # the metrics count every one
    assert _metric(faults, "edgeproxy_storage_faults_total", reason="no_space") >= len(bodies)
