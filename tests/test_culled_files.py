"""Slice files removed by the cache's size bound (diskcache's cull) must not stay open in the
workers: a kept descriptor of a removed file holds its space on the volume. An edge on a
20 MiB tmpfs with an 8 MiB cache filled its volume with culled files it still held open
(up to 256 descriptors per worker), and its fills failed for want of space."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.nodes import NodeProcess, edge_config_file
from tests.origins import TestOrigin, pattern
from tests.servers import free_port, serve
from tests.test_fault_flipped_byte import CACHED

SLICE = 64 * 1024


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(parents.get(found[-1], []))
    return found


def _held_removed_bytes(pids: list[int], directory: Path) -> int:
    """Bytes of files under ``directory`` that are removed but open in any of ``pids``."""
    held: dict[tuple[int, int], int] = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        try:
            names = os.listdir(fds)
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(fds / name)
                if target.startswith(str(directory)) and target.endswith(" (deleted)"):
                    st = os.stat(fds / name)
                    held[(st.st_dev, st.st_ino)] = st.st_size
            except OSError:
                continue
    return sum(held.values())


def test_files_culled_by_the_size_bound_are_let_go(tmp_path: Path) -> None:
    """Objects three times the cache's size, each asked for twice (a miss, then a hit that
    keeps its slice files open), round after round: what the workers hold open of removed
    files stays within a few slices (it was megabytes: every culled file ever kept)."""
    bodies = {f"/o{i}": pattern(8 * SLICE, seed=70 + i) for i in range(12)}
    origin = TestOrigin()
    for path, body in bodies.items():
        origin.put(path, body, headers=CACHED)
    port = free_port()
    config = edge_config_file(tmp_path, port, cache=f"slice_size: {SLICE}, memory_size: 0",
                              edge=f"workers: 2, cache_size: {2 * 2**20}")
    with serve(origin) as o, \
            NodeProcess(config, "edge", f"http://127.0.0.1:{port}", upstream=o.url) as edge, \
            httpx.Client(base_url=edge.url, timeout=20) as http:
        for _round in range(3):
            for path, body in bodies.items():
                for _ in range(2):
                    r = http.get(path)
                    assert r.status_code == 200 and r.content == body
        held = _held_removed_bytes(_tree(edge.pid), tmp_path / "var")
    assert held <= 4 * SLICE, f"{held} bytes of removed slice files held open"

