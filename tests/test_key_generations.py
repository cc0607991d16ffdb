"""What one worker keeps in memory of an object goes when any worker changes that object, and
only that object (`hot.PurgeEpoch`'s key generations).

A purge or an RFC 9111 §4.4 invalidation of one URL used to empty every worker's memory tier
(a stream of POSTs to any cached URL kept them all empty), while new facts committed by one
worker reached the others' memory only after seconds: a worker that remembered an object's
old facts fetched the change again.
"""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from pathlib import Path

from edgeproxy.cache.hot import KEY_SLOTS, HotEntry, HotTier, PurgeEpoch
from edgeproxy.cache.meta import ObjectMeta
from edgeproxy.cache.policy import Freshness
from tests.foreign import ForeignOrigin
from tests.nodes import node_process

META = ObjectMeta(200, None, None, None, None, (), Freshness(0.0, 0.0, 1e9), "x", "v", 1)


def _tier(path: Path) -> HotTier:
    return HotTier(1 << 20, 256 * 1024, PurgeEpoch(path))


def _keys_of_other_slots(n: int) -> list[str]:
    """``n`` keys whose generations are kept apart (no two share a slot)."""
    keys: dict[int, str] = {}
    i = 0
    while len(keys) < n:
        keys.setdefault(PurgeEpoch.slot(f"/k{i}"), f"/k{i}")
        i += 1
    return list(keys.values())


def _bump_elsewhere(path: str, key: str) -> None:
    PurgeEpoch(Path(path)).bump_slot(PurgeEpoch.slot(key))


def test_a_change_of_one_key_in_another_process_drops_that_key_only(tmp_path: Path) -> None:
    here = _tier(tmp_path / "epoch")
    one, other = _keys_of_other_slots(2)
    for key in (one, other):
        here.put(key, HotEntry.of(META, b"x" * 100, [], 1e9))
        here.remember_facts(key + "/large", META, 1e9)
    # another worker process (a real one: the generations live in a shared file)
    proc = multiprocessing.get_context("spawn").Process(
        target=_bump_elsewhere, args=(str(tmp_path / "epoch"), one))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    assert here.get(one, 0.0) is None
    assert here.get(other, 0.0) is not None  # a purge of everything would have dropped it
    assert here.facts(other + "/large", 0.0) is META


def test_facts_read_before_a_change_are_not_kept_as_current(tmp_path: Path) -> None:
    """The generation is taken before the index is read: facts read, then changed by another
    worker, then remembered, are forgotten at the next look."""
    here, there = _tier(tmp_path / "epoch"), _tier(tmp_path / "epoch")
    mark = here.mark("/a")  # ... the index is read here ...
    there.changed("/a")  # another worker changes the object meanwhile
    here.remember_facts("/a", META, 1e9, mark)
    assert here.facts("/a", 0.0) is None
    here.remember_facts("/a", META, 1e9, here.mark("/a"))
    assert here.facts("/a", 0.0) is META


def test_a_commit_drops_the_key_in_other_workers_and_keeps_it_here(tmp_path: Path) -> None:
    here, there = _tier(tmp_path / "epoch"), _tier(tmp_path / "epoch")
    for tier in (here, there):
        tier.put("/a", HotEntry.of(META, b"x" * 100, [], 1e9))
    here.committed("/a")
    assert there.get("/a", 0.0) is None
    assert here.get("/a", 0.0) is not None
    assert 1 <= PurgeEpoch.slot("/a") <= KEY_SLOTS


def test_a_refused_refresh_drops_the_key_here_too(tmp_path: Path) -> None:
    """A 304's refresh the index refused (another worker stored a newer version): what this
    worker kept of the refreshed old version goes, so its next look reads the new one."""
    here = _tier(tmp_path / "epoch")
    here.remember_facts("/a", META, 1e9, here.mark("/a"))
    here.committed("/a", written=False)
    assert here.facts("/a", 0.0) is None


def _get(port: int, path: str, extra: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     + extra + b"\r\n")
        return b"".join(iter(lambda: sock.recv(1 << 20), b""))


def _bodies(port: int, path: str, n: int, extra: bytes = b"") -> list[bytes]:
    """The bodies of ``n`` GETs at once, each on a connection of its own (both workers)."""
    out: list[bytes] = [b""] * n

    def go(i: int) -> None:
        out[i] = _get(port, path, extra).partition(b"\r\n\r\n")[2]

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return out


SLICE = 64 * 1024


def test_new_facts_learnt_by_one_worker_reach_the_other_at_once(
        foreign: ForeignOrigin, tmp_path: Path) -> None:
    """A range into a missing slice finds the object changed (its ``If-Range`` fails): the
    worker that learns it stores the new object, and the other worker answers from the new
    facts at once, not from the old ones it remembered (it fetched the change again)."""
    edge = node_process(tmp_path / "edge", "edge", foreign.url, workers=2)
    edge.config.write_text(edge.config.read_text() + f"cache: {{slice_size: {SLICE}}}\n")
    port = edge.start().port
    old, new = b"o" * 150_000, b"n" * 150_000
    headers = [("Cache-Control", "max-age=600")]
    first = b"Range: bytes=0-99\r\n"
    try:
        foreign.route("/big", body=old, etag='"v1"', headers=headers)
        for _ in range(3):  # both workers remember the facts (slice 0 only is stored)
            assert set(_bodies(port, "/big", 16, first)) == {b"o" * 100}
        assert foreign.count("/big") == 1
        foreign.route("/big", body=new, etag='"v2"', headers=headers)
        answer = _get(port, "/big", b"Range: bytes=140000-140009\r\n")
        assert answer.endswith(b"n" * 10) and b'"v2"' in answer, answer[:400]
        time.sleep(0.3)  # (the new facts reach the index within the group commit's delay)
        for _ in range(3):
            assert set(_bodies(port, "/big", 16, first)) == {b"n" * 100}
        assert foreign.count("/big") == 2, [r.headers for r in foreign.requests("/big")]
    finally:
        edge.stop()


def test_an_invalidation_in_one_worker_reaches_every_worker(
        foreign: ForeignOrigin, tmp_path: Path) -> None:
    """RFC 9111 §4.4: a POST answered 2xx drops the stored answer of its URL in every worker
    (the key's generation), and only that one."""
    edge = node_process(tmp_path / "edge", "edge", foreign.url, workers=2)
    port = edge.start().port
    headers = [("Cache-Control", "max-age=600")]
    try:
        foreign.route("/a", body=b"a1" * 500, etag='"a1"', headers=headers)
        foreign.route("/b", body=b"b1" * 500, etag='"b1"', headers=headers)
        foreign.route("/a", "POST", body=b"ok", headers=[("Cache-Control", "no-store")])
        for _ in range(3):
            assert set(_bodies(port, "/a", 16)) == {b"a1" * 500}
            assert set(_bodies(port, "/b", 16)) == {b"b1" * 500}
        foreign.route("/a", body=b"a2" * 500, etag='"a2"', headers=headers)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            assert b"".join(iter(lambda: sock.recv(1 << 16), b"")).startswith(b"HTTP/1.1 200")
        for _ in range(3):
            assert set(_bodies(port, "/a", 16)) == {b"a2" * 500}
            assert set(_bodies(port, "/b", 16)) == {b"b1" * 500}
        assert foreign.count("/a") == 2 and foreign.count("/b") == 1
    finally:
        edge.stop()
