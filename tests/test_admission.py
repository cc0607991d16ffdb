"""`edgeproxy.admission`: new request tasks start a few per loop turn, in arrival order.

A burst of requests used to queue all its first steps ahead of the answers already under way
(a stampede's leaders waited ~100 ms behind them for their first bytes). The unit tests run
a real event loop and count its turns; the socket test sends a burst to an edge.

Requests for what another request leads (`lead_key`) start once its answer begins or its
task ends (or after `LEAD_MAX`): tested on the admission alone, and over sockets with an
origin that holds its head, a leader whose client leaves, and an app that never answers it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.admission import LEAD_MAX, PER_TURN, Admission, admission_for, lead_key
from edgeproxy.cache import create_app
from edgeproxy.guard import uvicorn_http_options
from edgeproxy.protocol import GuardedHttpToolsProtocol
from tests.chain import chain_config
from tests.foreign import ForeignOrigin
from tests.servers import ServerThread


def _turns_of(arrivals: list[int], per_turn: int) -> list[tuple[str, int]]:
    """Start requests arriving at the given turns; (name, turn it started in), in start order."""

    async def main() -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        admission = Admission(loop, per_turn)
        turn = 0
        started: list[tuple[str, int]] = []
        done = loop.create_future()

        def tick() -> None:
            nonlocal turn
            turn += 1
            if turn < 20:
                loop.call_soon(tick)
            else:
                done.set_result(None)

        def arrive(name: str) -> None:
            admission.start(lambda: started.append((name, turn)))

        loop.call_soon(tick)  # first in each turn's callbacks: it numbers the turn
        for i, at in enumerate(arrivals):
            if at == 0:
                arrive(f"r{i}")
            else:
                # arrive at turn ``at``: hop that many turns first
                def hop(left: int, name: str) -> None:
                    if left:
                        loop.call_soon(hop, left - 1, name)
                    else:
                        arrive(name)
                loop.call_soon(hop, at - 1, f"r{i}")
        await done
        return started

    return asyncio.run(main())


def test_under_the_share_a_request_starts_at_once() -> None:
    assert _turns_of([0, 0], per_turn=2) == [("r0", 0), ("r1", 0)]


def test_a_burst_is_spread_over_turns_in_arrival_order() -> None:
    started = _turns_of([0] * 7, per_turn=2)
    assert [name for name, _ in started] == [f"r{i}" for i in range(7)]
    turns = [turn for _, turn in started]
    assert turns == [0, 0, 1, 1, 2, 2, 3]  # the share of each turn, from the one they came in


def test_a_later_request_waits_behind_earlier_waiting_ones() -> None:
    started = _turns_of([0, 0, 0, 0, 0, 1], per_turn=2)
    assert started == [("r0", 0), ("r1", 0), ("r2", 1), ("r3", 1), ("r4", 2), ("r5", 2)]


def test_once_the_burst_is_through_requests_start_at_once_again() -> None:
    assert _turns_of([0, 0, 0, 5, 5], per_turn=2)[-2:] == [("r3", 5), ("r4", 5)]


def test_one_admission_per_loop() -> None:
    async def two() -> tuple[Admission, Admission]:
        loop = asyncio.get_running_loop()
        return admission_for(loop), admission_for(loop)

    first, second = asyncio.run(two())
    assert first is second and first.per_turn == PER_TURN
    assert asyncio.run(two())[0] is not first  # a new loop, a new admission


def test_a_burst_of_requests_is_answered_whole_and_in_order(foreign: ForeignOrigin,
                                                            tmp_path: Path) -> None:
    """64 connections, each with 3 pipelined requests, sent at once to an edge served by its
    own protocol: every answer comes, each connection's in order."""
    for i in range(16):
        foreign.route(f"/burst/{i}", body=f"object {i}".encode() * 100,
                      headers=[("Cache-Control", "public, max-age=60")])
    config = chain_config(tmp_path)
    thread = ServerThread(create_app(config, "edge", upstream=foreign.url),
                          **uvicorn_http_options(config.http_limits)).start()
    try:
        host, port = "127.0.0.1", thread.port
        socks = []
        for c in range(64):
            sock = socket.create_connection((host, port))
            wanted = [(c + k) % 16 for k in range(3)]
            sock.sendall(b"".join(f"GET /burst/{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
                                  for i in wanted))
            socks.append((sock, wanted))
        for sock, wanted in socks:
            sock.settimeout(30)
            raw = b""
            expect = b"".join(f"object {i}".encode() * 100 for i in wanted)
            while raw.count(b"HTTP/1.1 200") < 3 or not raw.endswith(
                    f"object {wanted[-1]}".encode()):
                data = sock.recv(65536)
                assert data, f"closed early: {raw[-200:]!r}"
                raw += data
            bodies = b"".join(part.split(b"\r\n\r\n", 1)[1]
                              for part in raw.split(b"HTTP/1.1 200")[1:])
            assert bodies == expect
            sock.close()
    finally:
        thread.stop()


def _begin_all(keys: list[tuple[str, object]], lead_max: float = 60.0,
               ) -> tuple[Admission, list[str]]:
    """An admission (on a loop of its own, not running) with requests named and keyed as
    given, each its own owner; the names of those started, in start order."""
    admission = Admission(asyncio.new_event_loop(), per_turn=100, lead_max=lead_max)
    started: list[str] = []
    for name, key in keys:
        admission.start(lambda name=name: started.append(name), key, name)  # type: ignore[misc]
    return admission, started


def test_requests_behind_a_leader_start_together_once_its_answer_begins() -> None:
    admission, started = _begin_all([("a", "k"), ("b", "k"), ("c", None), ("d", "k"),
                                     ("e", "j")])
    try:
        assert started == ["a", "c", "e"]  # b and d follow a
        admission.led("k", "b")  # not the leader: nothing moves
        assert started == ["a", "c", "e"]
        admission.led("k", "a")
        assert started == ["a", "c", "e", "b", "d"]  # at once, in arrival order
        admission.start(lambda: started.append("f"), "k", "f")  # a new leader for k
        admission.start(lambda: started.append("g"), "k", "g")
        assert started[-1] == "f"
        admission.led("k", "a")  # (an old leader's task ending later)
        assert started[-1] == "f"
        admission.led("k", "f")
        assert started[-1] == "g"
    finally:
        admission.loop.close()


def test_requests_behind_a_stuck_leader_start_after_lead_max() -> None:
    async def main() -> list[str]:
        admission = Admission(asyncio.get_running_loop(), lead_max=0.05)
        started: list[str] = []
        for name in ("a", "b", "c"):
            admission.start(lambda name=name: started.append(name), "k", name)  # type: ignore[misc]
        await asyncio.sleep(0.01)
        assert started == ["a"]
        await asyncio.sleep(0.1)
        assert admission.leading == {}  # a later request leads anew
        return started

    assert asyncio.run(main()) == ["a", "b", "c"]


def _scope(method: str = "GET", path: bytes = b"/a", query: bytes = b"",
           headers: tuple[tuple[bytes, bytes], ...] = ()) -> dict[str, object]:
    return {"method": method, "raw_path": path, "query_string": query,
            "headers": [(b"host", b"h"), *headers]}


@pytest.mark.parametrize(("scope", "same"), [
    (_scope(), True),
    (_scope("HEAD"), True),  # a HEAD follows a GET's fetch too
    (_scope(headers=((b"user-agent", b"x"),)), True),
    (_scope(path=b"/b"), False),
    (_scope(query=b"v=2"), False),
    (_scope(headers=((b"range", b"bytes=0-9"),)), False),  # another part: its own fetch
])
def test_lead_keys_group_requests_for_the_same_fetch(scope: dict[str, object],
                                                     same: bool) -> None:
    assert (lead_key(scope) == lead_key(_scope())) is same


@pytest.mark.parametrize("scope", [
    _scope("POST"), _scope("PUT"), _scope("DELETE"), _scope("OPTIONS"),
    _scope(headers=((b"authorization", b"Bearer x"),)),  # RFC 9111 §3.5: never shared
])
def test_other_methods_and_credentials_never_wait_behind_a_leader(
        scope: dict[str, object]) -> None:
    assert lead_key(scope) is None


def _ask(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    return sock


def _body_of(sock: socket.socket, size: int) -> bytes:
    raw = b""
    while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < size:
        data = sock.recv(65536)
        assert data, f"closed early: {raw[-200:]!r}"
        raw += data
    sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


def test_followers_start_once_their_leaders_answer_begins(
        foreign: ForeignOrigin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over real sockets: requests for an object another request is fetching start their
    tasks only once that answer begins (the origin holds its head 0.4 s), then all get it;
    a request for something else is not held up."""
    slow, fast = b"slow object " * 1000, b"fast object"
    foreign.route("/slow", body=slow, delay=0.4, headers=[("Cache-Control", "max-age=60")])
    foreign.route("/fast", body=fast, headers=[("Cache-Control", "max-age=60")])
    begun: list[tuple[float, str]] = []
    real = GuardedHttpToolsProtocol._begin_task

    def spying(self: Any, cycle: Any, app: Any, key: Any) -> None:
        begun.append((time.monotonic(), cycle.scope["path"]))
        real(self, cycle, app, key)

    monkeypatch.setattr(GuardedHttpToolsProtocol, "_begin_task", spying)
    config = chain_config(tmp_path)
    thread = ServerThread(create_app(config, "edge", upstream=foreign.url),
                          **uvicorn_http_options(config.http_limits)).start()
    try:
        t0 = time.monotonic()
        leader = _ask(thread.port, "/slow")
        time.sleep(0.1)
        followers = [_ask(thread.port, "/slow") for _ in range(3)]
        assert _body_of(_ask(thread.port, "/fast"), len(fast)) == fast
        assert time.monotonic() - t0 < 0.35  # answered while /slow's head was held
        for sock in (leader, *followers):
            assert _body_of(sock, len(slow)) == slow
        slow_begun = [at - t0 for at, path in begun if path == "/slow"]
        assert len(slow_begun) == 4 and slow_begun[0] < 0.1
        assert min(slow_begun[1:]) >= 0.38  # behind the leader's answer, not before
        assert foreign.count("/slow") == 1
    finally:
        thread.stop()


def test_followers_of_a_leader_that_left_are_answered(foreign: ForeignOrigin,
                                                      tmp_path: Path) -> None:
    """The leading request's client goes away before its answer: the requests behind it
    start all the same (its task ends), and each gets the whole object."""
    slow = b"slow object " * 1000
    foreign.route("/slow", body=slow, delay=0.3, headers=[("Cache-Control", "max-age=60")])
    config = chain_config(tmp_path)
    thread = ServerThread(create_app(config, "edge", upstream=foreign.url),
                          **uvicorn_http_options(config.http_limits)).start()
    try:
        leader = _ask(thread.port, "/slow")
        time.sleep(0.05)
        followers = [_ask(thread.port, "/slow") for _ in range(3)]
        leader.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        leader.close()  # a reset before any answer
        started = time.monotonic()
        for sock in followers:
            assert _body_of(sock, len(slow)) == slow
        assert time.monotonic() - started < 2.0
    finally:
        thread.stop()


def test_followers_start_when_their_leaders_task_ends_without_an_answer(
        tmp_path: Path) -> None:
    """The leading request's client leaves, and its app returns without an answer (nothing
    is sent to a client that is gone): the requests behind it start as its task ends, well
    before the safety bound (`LEAD_MAX`)."""
    calls: list[float] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        calls.append(time.monotonic())
        if len(calls) == 1:
            while (await receive())["type"] != "http.disconnect":
                pass
            return  # no answer at all
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    config = chain_config(tmp_path)
    thread = ServerThread(app, lifespan="off", **uvicorn_http_options(config.http_limits)).start()
    try:
        leader = _ask(thread.port, "/x")
        time.sleep(0.05)
        followers = [_ask(thread.port, "/x") for _ in range(3)]
        time.sleep(0.1)
        assert len(calls) == 1  # behind the leader
        leader.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        leader.close()
        t0 = time.monotonic()
        for sock in followers:
            assert _body_of(sock, 2) == b"ok"
        assert time.monotonic() - t0 < LEAD_MAX * 0.6
        assert len(calls) == 4
    finally:
        thread.stop()


def test_followers_start_when_their_leaders_head_goes_not_its_last_byte(
        tmp_path: Path) -> None:
    """The leading request's head goes out (0.3 s in) and its body takes longer than
    `LEAD_MAX`: the requests behind it start as its head goes (its answer has begun), not
    when its task ends nor when the safety bound runs out."""
    calls: list[float] = []
    release = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        calls.append(time.monotonic())
        leading = len(calls) == 1
        if leading:
            await asyncio.sleep(0.3)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        if leading:  # the body waits, in a thread: the loop runs on
            await asyncio.to_thread(release.wait, LEAD_MAX * 5)
        await send({"type": "http.response.body", "body": b"ok"})

    config = chain_config(tmp_path)
    thread = ServerThread(app, lifespan="off", **uvicorn_http_options(config.http_limits)).start()
    try:
        t0 = time.monotonic()
        leader = _ask(thread.port, "/x")
        time.sleep(0.1)
        followers = [_ask(thread.port, "/x") for _ in range(3)]
        time.sleep(0.1)
        assert len(calls) == 1  # behind the leader, whose answer has not begun
        for sock in followers:
            assert _body_of(sock, 2) == b"ok"
        assert time.monotonic() - t0 < 0.3 + LEAD_MAX * 0.5  # the leader's body still waits
        assert not release.is_set() and len(calls) == 4
        release.set()
        assert _body_of(leader, 2) == b"ok"
    finally:
        release.set()
        thread.stop()
