"""Readers of an object that one flight is filling whole, and hashing, do not hash it again.

A flight that fills every slice of a content-addressed object from one whole upstream body
hashes that body and stores no slice before the hash matches (issue "Never a wrong byte").
It says so in the facts it stores (``vouching``), so that the requests that read those facts
while it runs (here, or in another worker) send its bytes without hashing them too, and hold
their last byte until the facts say the hash matched. A body that does not match its address
leaves every such reader aborted, and nothing stored.

Over real sockets: an edge alone and edge → shield in front of a raw-socket origin
(`tests.foreign.ForeignOrigin`) that pauses before the last 64 KiB of its answer, so that a
second request arrives while the first one's flight is still running.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy import cyclesend, zerocopy
from edgeproxy.cache import create_app, deliver
from edgeproxy.cache.deliver import vouched_send
from edgeproxy.cache.types import ZEROCOPY
from edgeproxy.errors import FillAborted
from edgeproxy.guard import uvicorn_http_options
from tests.chain import chain_config
from tests.foreign import ForeignOrigin
from tests.origins import pattern
from tests.servers import ServerThread

SLICE = 256 * 1024
BODY = pattern(3 * SLICE + 1000, seed=41)  # four slices
SHA = hashlib.sha256(BODY).hexdigest()
TARGET = f"/v/t1/{SHA}"
IMMUTABLE = ("Cache-Control", "public, max-age=31536000, immutable")


# --- the held last byte ------------------------------------------------------------------


def _asking(asked: list[bool]) -> Callable[[], bool]:
    """A vouch that says yes, and records that it was asked."""
    def vouch() -> bool:
        asked.append(True)
        return True
    return vouch


def _run(sent: Awaitable[None]) -> None:
    async def wait() -> None:
        await sent
    asyncio.run(wait())


def _collect(length: int, vouched: Callable[[], bool]) -> tuple[list[bytes], Any]:
    out: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        out.append(message.get("body", b""))

    return out, vouched_send(send, length, vouched)


def test_the_last_byte_waits_for_the_facts_to_say_the_hash_matched() -> None:
    asked: list[bool] = []
    out, send = _collect(6, _asking(asked))
    body = {"type": "http.response.body", "more_body": True}
    asyncio.run(send({**body, "body": b"abc"}))
    assert out == [b"abc"] and asked == []
    asyncio.run(send({**body, "body": b"def"}))
    assert out == [b"abc", b"de", b"f"] and asked == [True]


def test_an_object_the_facts_do_not_vouch_for_is_cut_short() -> None:
    out, send = _collect(4, lambda: False)
    with pytest.raises(FillAborted):
        asyncio.run(send({"type": "http.response.body", "body": b"abcd", "more_body": True}))
    assert b"".join(out) == b"abc"  # never complete-looking


def _file_of(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "slice"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def test_file_bytes_pass_by_zero_copy_and_only_the_last_byte_is_held(tmp_path: Path) -> None:
    """A vouched send looks at no byte, so it keeps the server's zero-copy sends: bytes
    before the last go on as they came; the message that ends the body goes one byte short,
    and that byte, read from the file, follows once the facts vouch for the hash."""
    fd = _file_of(tmp_path, b"abcdefgh")
    asked: list[bool] = []
    out: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        out.append(message)

    held = vouched_send(send, 8, _asking(asked))
    try:
        _run(held({"type": ZEROCOPY, "file": fd, "offset": 0, "count": 5,
                          "more_body": True}))
        assert out == [{"type": ZEROCOPY, "file": fd, "offset": 0, "count": 5,
                        "more_body": True}] and asked == []
        _run(held({"type": ZEROCOPY, "file": fd, "offset": 5, "count": 3,
                          "more_body": True}))
    finally:
        os.close(fd)
    assert out[1] == {"type": ZEROCOPY, "file": fd, "offset": 5, "count": 2, "more_body": True}
    assert out[2] == {"type": "http.response.body", "body": b"h", "more_body": True}
    assert asked == [True]


def test_a_zero_copy_body_the_facts_do_not_vouch_for_never_gets_its_last_byte(
        tmp_path: Path) -> None:
    fd = _file_of(tmp_path, b"abcd")
    out: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        out.append(message)

    held = vouched_send(send, 4, lambda: False)
    try:
        with pytest.raises(FillAborted):
            _run(held({"type": ZEROCOPY, "file": fd, "offset": 0, "count": 4,
                              "more_body": True}))
    finally:
        os.close(fd)
    assert [m.get("count") for m in out] == [3]  # three bytes by sendfile, never the fourth
    assert not any(m["type"] == "http.response.body" for m in out)


# --- over real sockets ---------------------------------------------------------------------


@pytest.fixture(params=["edge", "edge-shield"])
def edge(request: pytest.FixtureRequest, foreign: ForeignOrigin,
         tmp_path: Path) -> Iterator[str]:
    config = chain_config(tmp_path, slice_size=SLICE)
    threads: list[ServerThread] = []
    try:
        upstream = foreign.url
        for tier in (["shield"] if request.param == "edge-shield" else []) + ["edge"]:
            # the edge's own server protocol, which offers zero-copy sends
            thread = ServerThread(create_app(config, tier, upstream=upstream),
                                  **uvicorn_http_options(config.http_limits)).start()
            threads.append(thread)
            upstream = thread.url
        yield upstream
    finally:
        for thread in reversed(threads):
            thread.stop()


@pytest.fixture
def hashing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which kind of checked send each whole answer of an unverified object got."""
    kinds: list[str] = []
    verifying, vouched = deliver.verifying_send, deliver.vouched_send

    def spy_verifying(*args: Any, **kwargs: Any) -> Any:
        kinds.append("hashed")
        return verifying(*args, **kwargs)

    def spy_vouched(*args: Any, **kwargs: Any) -> Any:
        kinds.append("vouched")
        return vouched(*args, **kwargs)

    # (the names `deliver.checked_send` calls them by)
    monkeypatch.setattr("edgeproxy.cache.deliver.verifying_send", spy_verifying)
    monkeypatch.setattr("edgeproxy.cache.deliver.vouched_send", spy_vouched)
    return kinds


def _leader_and_follower(url: str, foreign: ForeignOrigin,
                         target: str = TARGET) -> tuple[Any, Any]:
    """The first request leads the fill of ``target``; the second comes while the origin
    pauses before the last 64 KiB, finds the facts stored (``vouching``) and follows it."""
    results: dict[str, Any] = {}

    def get(name: str) -> None:
        try:
            results[name] = httpx.get(url + target, timeout=30)
        except httpx.HTTPError as exc:
            results[name] = exc

    leader = threading.Thread(target=get, args=("leader",))
    leader.start()
    deadline = time.monotonic() + 10
    while foreign.count(target) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # the leader's facts are stored; its body waits on the origin's pause
    get("follower")
    leader.join()
    return results["leader"], results["follower"]


def test_a_reader_of_a_hashing_flight_sends_its_bytes_unhashed(
        edge: str, foreign: ForeignOrigin, hashing: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    sendfiles: list[int] = []
    real_send_file = zerocopy.send_file

    async def counted(transport: Any, fd: int, offset: int, count: int, timeout: float,
                      unchanged: Callable[[], bool] | None = None) -> bool:
        sendfiles.append(count)
        return await real_send_file(transport, fd, offset, count, timeout, unchanged)

    monkeypatch.setattr(cyclesend, "send_file", counted)  # (where the steps call it from)
    foreign.route(TARGET, body=BODY, etag=f'"{SHA}"', headers=[IMMUTABLE], pause=1.0)
    leader, follower = _leader_and_follower(edge, foreign)
    assert isinstance(leader, httpx.Response) and leader.content == BODY
    assert isinstance(follower, httpx.Response) and follower.content == BODY
    # the leader's own flight checks it; the follower, which found the stored facts, trusted it
    assert hashing == ["vouched"]
    # and, looking at no byte, sent the three slices before the origin's pause by sendfile,
    # as the leader did (it used to read them into memory: 3 slices by sendfile in all)
    assert sum(sendfiles) >= 2 * 3 * SLICE, sendfiles
    assert foreign.count(TARGET) == 1
    hashing.clear()
    again = httpx.get(edge + TARGET)
    assert again.content == BODY and "hashed" not in hashing  # verified since: no hashing


def test_a_body_that_fails_its_address_aborts_every_reader_and_stores_nothing(
        edge: str, foreign: ForeignOrigin, hashing: list[str]) -> None:
    wrong = bytearray(BODY)
    wrong[2 * SLICE + 7] ^= 0x01
    foreign.route(TARGET, body=bytes(wrong), etag=f'"{SHA}"', headers=[IMMUTABLE], pause=1.0)
    leader, follower = _leader_and_follower(edge, foreign)
    for answer in (leader, follower):
        assert isinstance(answer, httpx.HTTPError), "a wrong body was completed"
    assert "vouched" in hashing
    foreign.route(TARGET, body=BODY, etag=f'"{SHA}"', headers=[IMMUTABLE])
    fresh = httpx.get(edge + TARGET)
    assert fresh.content == BODY and fresh.headers["x-cache"].startswith("MISS")




def test_a_stampede_across_two_workers_is_never_cut_short(tmp_path: Path) -> None:
    """200 clients on 20 cold content-addressed 16 MiB objects (the benchmark's stampede)
    through an edge of two workers: readers in the worker that does not lead a flight find
    its slice files in the index as they are stored, and release their last byte only if the
    facts say the flight's hash matched. The flight says so before it stores any slice;
    when the facts waited for the group commit, 4 to 6 answers of every such stampede were
    cut one byte short."""
    from benchmarks import coldpath, deploy, rawhttp

    origin = deploy.Origin(tmp_path, tmp_path / "blobs")
    edge = deploy.start_edgeproxy(tmp_path, origin.url, workers=2)
    try:
        for small in origin.small_objects([4096] * 50):  # both workers up and serving
            assert httpx.get(edge.url + small).status_code == 200
        time.sleep(2)
        origin.throttle(50)
        host, port = edge.url.removeprefix("http://").split(":")
        paths = origin.fresh("b16m", 20)
        fetches = rawhttp.run(coldpath._stampede(host, int(port), paths, 200, timeout=120))
        cut = [(f.status, f.body_bytes, f.error) for f in fetches if not f.complete]
        assert not cut, f"{len(cut)} of 200 cut short: {cut[:3]}"
    finally:
        edge.stop()
        origin.stop()

