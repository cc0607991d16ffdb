"""Objects without a strong validator through a node of two workers: every answer is whole.

Each answer to such an object is a representation of its own (nothing ties the bytes of two
answers together), and slice claims are taken per URL before an answer's version is known. A
whole answer whose flight could not claim a slice that the other worker held for its own
answer was cut there (its request then joined or fetched a slice of another answer). The
flight keeps the bytes of such slices for its own readers instead, unstored.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from tests.foreign import ForeignOrigin
from tests.nodes import node_process

SLICE = 64 * 1024
SIZE = 150_000  # three slices


def _dechunk(data: bytes) -> bytes | None:
    """A chunked body's content; None if its framing is broken or it has no last chunk."""
    out = bytearray()
    while True:
        line, sep, data = data.partition(b"\r\n")
        if not sep:
            return None
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += data[:size]
        if len(data) < size + 2 or data[size:size + 2] != b"\r\n":
            return None
        data = data[size + 2:]


def _get(port: int, path: str, extra: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     + extra + b"\r\n")
        return b"".join(iter(lambda: sock.recv(1 << 20), b""))


@pytest.mark.parametrize(("etag", "framing"), [(None, "length"), ('W/"w1"', "length"),
                                               (None, "chunked")],
                         ids=["no-etag", "weak-etag", "no-etag-chunked"])
def test_concurrent_whole_and_range_answers_of_an_unvalidated_object_are_complete(
        foreign: ForeignOrigin, tmp_path: Path, etag: str | None, framing: str) -> None:
    """Whole GETs and Ranges of the last slice at once, on fresh objects, through an edge of
    two workers: each whole answer is the whole body, each 206 its bytes (a body without
    Content-Length too: its slices are claimed as its bytes come)."""
    edge = node_process(tmp_path / "edge", "edge", foreign.url, workers=2)
    edge.config.write_text(edge.config.read_text() + f"cache: {{slice_size: {SLICE}}}\n")
    port = edge.start().port
    bad: list[str] = []
    try:
        for round_ in range(12):
            path = f"/u{round_}"
            body = os.urandom(SIZE)
            # the answer comes after a while: the other worker's range claims its slice first
            foreign.route(path, body=body, etag=etag, delay=0.15, framing=framing,
                          headers=[("Cache-Control", "max-age=60")])
            asks = [b"", b"Range: bytes=140000-140010\r\n", b"",
                    b"Range: bytes=140000-140010\r\n", b"", b"Range: bytes=70000-70010\r\n"]
            answers: dict[int, bytes] = {}

            def go(i: int, extra: bytes, path: str = path,
                   answers: dict[int, bytes] = answers) -> None:
                answers[i] = _get(port, path, extra)

            threads = [threading.Thread(target=go, args=(i, extra))
                       for i, extra in enumerate(asks)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for i, extra in enumerate(asks):
                head, _, raw = answers[i].partition(b"\r\n\r\n")
                chunked = b"transfer-encoding: chunked" in head.lower()
                content = _dechunk(raw) if chunked else raw
                whole = head.startswith(b"HTTP/1.1 200 ") and content == body
                if not extra or chunked:
                    ok = whole  # (a Range on a body of unknown length is answered whole)
                else:
                    start = int(extra.split(b"=")[1].split(b"-")[0])
                    ok = head.startswith(b"HTTP/1.1 206 ") and content == body[start:start + 11]
                if not ok:
                    got = "cut" if content is None else f"{len(content)} bytes"
                    bad.append(f"{path} {extra!r}: {head.splitlines()[:1]} {got}")
    finally:
        edge.stop()
    assert not bad, bad


def test_one_at_a_time_an_unvalidated_object_is_fetched_once_whole(
        foreign: ForeignOrigin, tmp_path: Path) -> None:
    """A weak-ETag object of two slices, asked first by Range (slice 0 stored), then whole,
    one request at a time, through an edge of two workers: the whole is fetched once, and
    the other worker uses that copy rather than the facts it remembered of the partial one
    (the two workers fetched it in turn, each replacing the other's copy: 2-9 fetches)."""
    edge = node_process(tmp_path / "edge", "edge", foreign.url, workers=2)
    edge.config.write_text(edge.config.read_text() + f"cache: {{slice_size: {SLICE}}}\n")
    body = os.urandom(2 * SLICE)
    foreign.route("/pp", body=body, etag='W/"pp"', headers=[("Cache-Control", "max-age=3600")])
    port = edge.start().port
    try:
        answers = [_get(port, "/pp", extra)
                   for extra in [b"Range: bytes=6290-26582\r\n"] + [b""] * 20]
    finally:
        edge.stop()
    assert answers[0].endswith(body[6290:26583])
    for answer in answers[1:]:
        head, _, content = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and content == body, head
    assert foreign.count("/pp") <= 3  # the range, the whole (and one more for a race)
