"""The bytes a whole flight keeps for its own requests (`Coalescer.keep`: a slice of an
object without a strong validator that the other worker fills for an answer of its own) go
once those requests are done, not a fixed while later.

Kept files are unlinked once complete and held open: held 30 s after every such flight, a
changing object under load held several times the cache's size on the volume (63 MB of
kept files in one edge of cache_size 4 MiB, and `no_space` faults on a small volume).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

from tests.foreign import ForeignOrigin
from tests.nodes import node_process
from tests.test_unvalidated_workers import _get

SLICE = 64 * 1024
SIZE = 150_000  # three slices


def _kept_open(parent: int) -> list[str]:
    """Kept files (`-k<pid>-<n>`) the node's processes hold open."""
    pids = [parent]
    for task in Path(f"/proc/{parent}/task").iterdir():
        children = task / "children"
        if children.exists():
            pids += [int(pid) for pid in children.read_text().split()]
    held = []
    for pid in pids:
        with contextlib.suppress(OSError):  # (a process or file may go while we look)
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if "-k" in Path(target.removesuffix(" (deleted)")).name:
                        held.append(f"{pid}: {target}")
    return held


def test_kept_slices_go_when_their_requests_are_done(
        foreign: ForeignOrigin, tmp_path: Path) -> None:
    """Whole GETs and Ranges at once on fresh objects without a validator, through an edge
    of two workers (the whole flights keep slices the other worker claimed): a few seconds
    after every answer is in, no kept file is held open any more."""
    edge = node_process(tmp_path / "edge", "edge", foreign.url, workers=2)
    edge.config.write_text(edge.config.read_text() + f"cache: {{slice_size: {SLICE}}}\n")
    port = edge.start().port
    try:
        for round_ in range(8):
            path = f"/k{round_}"
            body = os.urandom(SIZE)
            foreign.route(path, body=body, delay=0.15,
                          headers=[("Cache-Control", "max-age=60")])
            asks = [b"", b"Range: bytes=140000-140010\r\n", b"",
                    b"Range: bytes=140000-140010\r\n", b"", b"Range: bytes=70000-70010\r\n"]
            threads = [threading.Thread(target=_get, args=(port, path, extra))
                       for extra in asks]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        # Answers are all in: only the flights' own holds could be left, and those go as
        # the flights end (well within 10 s; `KEPT_FOR`, 30 s, is the bound otherwise).
        deadline = time.monotonic() + 10
        while (held := _kept_open(edge.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        edge.stop()
    assert not held, held
