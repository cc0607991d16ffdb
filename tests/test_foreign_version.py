"""A request that follows another worker's fill of a slice sends only bytes of the version its
head announced, and its head only once it is known they will come.

The file a fill writes is named for the slice, not the version. A range into a missing slice
of an object that changed at the origin: the worker whose ``If-Range`` failed fetched the new
version whole and filled the slice with it, while the other worker's requests, holding the old
facts, followed that file and sent the new version's bytes under the old ETag (1-7 of 12 such
answers per round on 2 workers; none on 1). The file now says which version it holds.
Then answers were cut before their first byte instead: a request whose head announced the old
version found the slice's fill (joined here or followed in the other worker) bringing the new
one. A request now learns which version a fill brings before its head goes out, and answers
with the new facts when they are another version's.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from tests.foreign import ForeignOrigin
from tests.nodes import node_process

SLICE = 64 * 1024


def _get(port: int, path: str, extra: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     + extra + b"\r\n")
        return b"".join(iter(lambda: sock.recv(1 << 20), b""))


def test_followers_in_the_other_worker_send_only_their_versions_bytes(
        foreign: ForeignOrigin, tmp_path: Path) -> None:
    edge = node_process(tmp_path / "edge", "edge", foreign.url, workers=2)
    edge.config.write_text(edge.config.read_text() + f"cache: {{slice_size: {SLICE}}}\n")
    port = edge.start().port
    bodies = {'"v1"': b"1" * 3 * SLICE, '"v2"': b"2" * 3 * SLICE}
    headers = [("Cache-Control", "max-age=600")]
    wrong: list[str] = []
    complete = 0
    try:
        for round_ in range(6):
            path = f"/obj{round_}"
            foreign.route(path, body=bodies['"v1"'], etag='"v1"', headers=headers)
            for _ in range(6):
                _get(port, path, b"Range: bytes=0-99\r\n")
            foreign.route(path, body=bodies['"v2"'], etag='"v2"', headers=headers, drip=0.1)
            answers: dict[int, bytes] = {}

            def go(i: int, path: str = path, answers: dict[int, bytes] = answers) -> None:
                answers[i] = _get(port, path, b"Range: bytes=140000-150000\r\n")

            threads = [threading.Thread(target=go, args=(i,)) for i in range(12)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            for i, answer in answers.items():
                head, _, body = answer.partition(b"\r\n\r\n")
                etag = next((line.split(b":", 1)[1].strip().decode()
                             for line in head.split(b"\r\n")
                             if line.lower().startswith(b"etag:")), None)
                assert etag in bodies, head
                want = bodies[etag][140000:150001]
                if body != want[:len(body)]:
                    wrong.append(f"{path} #{i} {etag}: {body[:8]!r}... ({len(body)} bytes)")
                complete += body == want  # (an answer cut short is no wrong byte)
        assert not wrong, wrong
        # and none cut: whether the bytes that will come are ours is known before the head
        # (56-63 of 72 were whole when heads went out first)
        assert complete == 72, f"{72 - complete} of 72 answers cut short"
    finally:
        edge.stop()
