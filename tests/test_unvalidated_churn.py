"""An object without a validator that changes all the time, asked whole through a node of two
workers: every answer is one version's whole body.

Nothing can fetch a slice of such an answer again (no ``If-Range`` ties a new answer to it),
and every other flight of the object, in either worker, replaces its stored slices. An answer
that looked its slices up once its headers were out found one gone now and then, fetched it
anew, got another representation, and was cut after its head (~1 % of such answers; a few
connections closed with no status line at all).
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from pathlib import Path

from tests.foreign import ForeignOrigin
from tests.nodes import node_process
from tests.test_unvalidated_workers import _dechunk

SLICE = 64 * 1024
CLIENTS = 10
SECONDS = 5.0


def _get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"\r\n")
        return b"".join(iter(lambda: sock.recv(1 << 20), b""))


def test_answers_of_a_changing_unvalidated_object_are_whole(
        foreign: ForeignOrigin, tmp_path: Path) -> None:
    """Chunked, no ETag, a Last-Modified equal to its Date (weak: no validator), no
    Cache-Control (stale at once: every request fetches, and each answer replaces the last
    one's slices), two to three slices, rewritten every 50-200 ms while ten clients ask for it
    whole, each on a new connection."""
    edge = node_process(tmp_path / "edge", "edge", foreign.url, workers=2)
    edge.config.write_text(edge.config.read_text() + f"cache: {{slice_size: {SLICE}}}\n")
    versions: set[bytes] = set()
    rng = random.Random(7)

    def rewrite() -> None:
        body = os.urandom(rng.choice([2 * SLICE - 1, 2 * SLICE + 17, 3 * SLICE - 1]))
        versions.add(body)
        foreign.route("/churn", body=body, framing="chunked", ranges=False,
                      conditional=False, last_modified=time.time())

    rewrite()
    port = edge.start().port
    deadline = time.monotonic() + SECONDS
    bad: list[str] = []
    count = [0]

    def client() -> None:
        while time.monotonic() < deadline:
            try:
                answer = _get(port, "/churn")
            except OSError as exc:
                bad.append(repr(exc))
                continue
            count[0] += 1
            head, _, raw = answer.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200 "):
                bad.append(f"{head.splitlines()[:1]} ({len(answer)} bytes in all)")
                continue
            chunked = b"transfer-encoding: chunked" in head.lower()
            content = _dechunk(raw) if chunked else raw
            if content is None or content not in versions:
                got = "cut" if content is None else f"{len(content)} bytes, no version's"
                bad.append(f"200 {got}")

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    try:
        for thread in threads:
            thread.start()
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.05, 0.2))
            rewrite()
        for thread in threads:
            thread.join()
    finally:
        edge.stop()
    assert count[0] > 100  # (enough answers to have met the churn)
    assert not bad, f"{len(bad)} of {count[0]}: {bad[:10]}"
