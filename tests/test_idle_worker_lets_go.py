"""A worker lets go of the descriptors it keeps of purged or evicted slice files without
waiting for a request of its own.

A worker learnt that another had purged or evicted slices (the shared evictions counter) only
when it next looked a slice up; one that got no request, or answered only from memory, held
the files' space on the volume for as long as that lasted (a 2-worker edge after a purge of
everything: 52 deleted slice files, 3 MiB of a 24 MiB volume, still held after 60 s).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from tests.foreign import ForeignOrigin
from tests.nodes import NodeProcess, edge_config_file
from tests.servers import free_port

TOKEN = "idle-worker-admin-token-0123"
SIZE = 1024 * 1024  # 16 slices of 64 KiB, more than the memory tier keeps whole


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _slice_files(pid: int, cache: Path, deleted: bool) -> int:
    """Descriptors ``pid`` holds of slice files under ``cache`` (removed ones only, or not)."""
    count = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(cache)) and ".val" in target \
                and target.endswith("(deleted)") == deleted:
            count += 1
    return count


def test_a_purge_in_one_worker_frees_the_files_the_other_holds(tmp_path: Path) -> None:
    body = os.urandom(SIZE)
    with ForeignOrigin() as origin:
        origin.route("/big.bin", body=body, headers=[("Cache-Control", "max-age=600"),
                                                     ("ETag", '"big-1"')])
        port = free_port()
        config = edge_config_file(tmp_path, port, cache="slice_size: 65536",
                                  edge="workers: 2")
        config.write_text(config.read_text() + f"admin_token: {TOKEN}\n")
        node = NodeProcess(config, "edge", f"http://127.0.0.1:{port}", upstream=origin.url)
        cache = tmp_path / "var" / "edge" / "cache"
        with node:
            workers = [c for c in _children(node.pid)]
            # new connections until both workers hold the object's slice files open
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                with httpx.Client(timeout=10) as client:
                    answer = client.get(node.url + "/big.bin")
                    assert answer.content == body
                holding = [w for w in workers if _slice_files(w, cache, deleted=False) > 0]
                if len(holding) >= 2:
                    break
            assert len(holding) >= 2, "both workers should hold the slice files open"
            purged = httpx.post(node.url + "/_admin/purge", json={"paths": ["/big.bin"]},
                                headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
            assert purged.json() == {"purged": 1}
            # no more requests: the worker that did not purge must let go by itself
            deadline = time.monotonic() + 5
            held = {w: _slice_files(w, cache, deleted=True) for w in workers}
            while time.monotonic() < deadline and any(held.values()):
                time.sleep(0.2)
                held = {w: _slice_files(w, cache, deleted=True) for w in workers}
            assert not any(held.values()), f"removed slice files still held: {held}"
