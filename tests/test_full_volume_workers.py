"""A node of several workers whose data volume fills up: prometheus-client's multiprocess
files live there, made by ``truncate`` (a hole) and written through a map, and a write into
a hole that a full volume cannot back kills the process (SIGBUS). Every worker died at its
first metric update once the volume was full, and again after each restart: requests got
resets and refusals until space came back."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.nodes import NodeProcess, edge_config_file
from tests.origins import TestOrigin, pattern
from tests.servers import free_port, serve
from tests.test_culled_files import _tree
from tests.test_fault_flipped_byte import CACHED
from tests.volumes import Tmpfs, need_root


def test_workers_live_on_when_the_data_volume_is_full(tmp_path: Path) -> None:
    """Fill the volume of a two-worker edge (cache and metrics both there), then ask for
    objects never seen: every answer is 200 with the origin's bytes (passed through), no
    worker is replaced, and /metrics still answers."""
    need_root()
    bodies = {f"/o{i}": pattern(300_000 + i, seed=110 + i) for i in range(4)}
    origin = TestOrigin()
    for path, body in bodies.items():
        origin.put(path, body, headers=CACHED)
    volume = Tmpfs(tmp_path / "vol", 16 * 2**20)
    try:
        port = free_port()
        config = edge_config_file(tmp_path, port, cache="slice_size: 131072",
                                  edge=f"workers: 2, cache_size: {8 * 2**20}")
        config.write_text(config.read_text().replace(f"data_dir: {tmp_path / 'var'}",
                                                     f"data_dir: {volume.directory}"))
        with serve(origin) as o, NodeProcess(config, "edge", f"http://127.0.0.1:{port}",
                                             upstream=o.url) as edge:
            workers = sorted(_tree(edge.pid))
            volume.fill_up()
            for _round in range(3):
                for path, body in bodies.items():
                    # new connections: both workers answer
                    r = httpx.get(edge.url + path, timeout=20)
                    assert r.status_code == 200 and r.content == body, (path, r.status_code)
            assert httpx.get(edge.url + "/metrics", timeout=20).status_code == 200
            time.sleep(1)  # (a worker killed by the last answer is replaced within a second)
            assert sorted(_tree(edge.pid)) == workers
            volume.drain()
    finally:
        volume.close()
