"""A client leaves a collapsed fill mid-stream: the leader's own client, or one of its followers.

Several clients ask an edge (alone, or in front of a shield) for one object while a slow origin
sends it; they share one fill (one upstream request in all). One of them closes its connection
part-way. The others still get complete, byte-exact answers, the fill runs to its end and the
object is stored whole: the next request is a byte-exact HIT, and the node serves others.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.answers import Answer, read_answer
from tests.chain import guarded_nodes
from tests.origins import TestOrigin, pattern
from tests.servers import serve
from tests.test_cache_node import SLICE, make_config
from tests.test_fault_kill import blob_path

MIB = 1024 * 1024
FOLLOWERS = 4


@dataclass
class Nodes:
    origin: TestOrigin
    edge: str
    shield: str | None


@pytest.fixture(scope="module")
def origin() -> Iterator[tuple[TestOrigin, str]]:
    test_origin = TestOrigin()
    with serve(test_origin) as srv:
        yield test_origin, srv.url


@pytest.fixture(scope="module", params=["edge", "edge+shield"])
def nodes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          origin: tuple[TestOrigin, str]) -> Iterator[Nodes]:  # fmt: skip
    test_origin, url = origin
    config = make_config(tmp_path_factory.mktemp("nodes"))  # 64 KiB slices
    with guarded_nodes(config, url, shield=request.param == "edge+shield") as (edge, shield):
        yield Nodes(test_origin, edge, shield)


def leave_after(url: str, count: int, got: threading.Event, on_leave: Callable[[], None],
                ) -> None:  # fmt: skip
    """GET ``url`` on a raw socket, read ``count`` bytes of the answer, then hang up."""
    host, port = url.removeprefix("http://").partition("/")[0].split(":")
    path = "/" + url.removeprefix("http://").partition("/")[2]
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        received = 0
        while received < count:
            data = s.recv(65536)
            if not data:
                raise AssertionError("the answer ended before the client meant to leave")
            received += len(data)
            got.set()
    on_leave()


@pytest.mark.parametrize("leaver", ["leader", "follower"])
def test_one_client_leaves_a_shared_fill(nodes: Nodes, leaver: str) -> None:
    seed = (nodes.shield is None) * 10 + len(leaver)
    body = pattern(3 * MIB + 17, seed)
    path = blob_path(len(body), seed)
    nodes.origin.put(path, body)
    nodes.origin.chunk, nodes.origin.chunk_delay = 64 * 1024, 0.01  # the fill takes ~0.5 s
    url = nodes.edge + path
    answers: list[Answer] = []
    lock = threading.Lock()

    def follow(on_bytes: Callable[[int], None] | None = None) -> None:
        answer = read_answer(url, on_bytes=on_bytes)
        with lock:
            answers.append(answer)

    left_at: list[int] = []  # bytes the origin had sent when the client left

    def on_leave() -> None:
        left_at.append(nodes.origin.bytes_sent(path))

    leader_in = threading.Event()
    if leaver == "leader":
        first = threading.Thread(target=leave_after, args=(url, MIB // 2, leader_in, on_leave))
    else:
        first = threading.Thread(target=follow, args=(lambda _n: leader_in.set(),))
    first.start()
    assert leader_in.wait(10)
    # the leader's answer is under way: everyone below joins its fill
    threads = [threading.Thread(target=follow) for _ in range(FOLLOWERS)]
    if leaver == "follower":
        threads.append(threading.Thread(target=leave_after,
                                        args=(url, MIB // 2, threading.Event(), on_leave)))
    for t in threads:
        t.start()
    for t in [first, *threads]:
        t.join(30)
    nodes.origin.chunk_delay = 0
    expected = FOLLOWERS + (1 if leaver == "follower" else 0)
    assert len(answers) == expected
    assert left_at and left_at[0] < len(body), "the client left after the fill had ended"
    for answer in answers:
        assert answer.status == 200 and not answer.cut, (answer.status, len(answer.body))
        assert answer.body == body
    # one fill in all, run to its end although a client left it
    assert nodes.origin.count(path) == 1, [h.range for h in nodes.origin.hits if h.path == path]
    # (the origin counts a chunk once its send returns, which may be after the edge has it)
    deadline = time.monotonic() + 5
    while nodes.origin.bytes_sent(path) < len(body) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert nodes.origin.bytes_sent(path) == len(body)
    r = httpx.get(url, timeout=10)
    assert r.headers["x-cache"] == "HIT from edge" and r.content == body
    if nodes.shield is not None:
        r = httpx.get(nodes.shield + path, timeout=10)
        assert r.headers["x-cache"] == "HIT from shield" and r.content == body
    other = pattern(2 * SLICE + 3, seed + 100)
    nodes.origin.put(f"/static/other-{seed}", other, headers={"cache-control": "max-age=60"})
    assert httpx.get(f"{nodes.edge}/static/other-{seed}", timeout=10).content == other
