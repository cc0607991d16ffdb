"""A whole answer of a content-addressed object whose last byte waits for a flight's
whole-body hash (`deliver.vouched_send`) is completed when its bytes are proven, however
soon eviction takes the object's stored facts.

Found by a load run (an 8 MiB edge churned by 17 MB of ``/v/t1/<sha256>`` blobs, 40 clients):
13 to 21 answers a run ended one byte short ("the object's slices were not vouched for by a
whole-body hash"), X-Cache MISS or HIT, although their bytes came from a flight whose hash
matched: the proof was only the index row's ``verified`` mark, and the size bound culled the
row (or another flight rewrote it without the mark) before the reader's last byte. The proof
now also lives where eviction cannot take it: in the flight (`Flight.proven`) for readers of
its worker, in the marks of its slice files for the other worker's (`foreign.vouch_file`),
and, for a last slice stored inline, in its SHA-256 those carry (`Proof.tail`).

Bytes that were never proven are still cut before their last byte (`sources.Witness`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy.cache import checksum, create_app
from edgeproxy.cache.commits import Commits
from edgeproxy.cache.foreign import ForeignFill, Proof, mark_filling, proven_file, vouch_file
from edgeproxy.cache.sources import ForeignSource, StoredSource, Witness
from edgeproxy.cache.store import CacheStore
from edgeproxy.guard import uvicorn_http_options
from tests.chain import chain_config
from tests.foreign import ForeignOrigin
from tests.origins import pattern
from tests.servers import ServerThread
from tests.test_foreign_vouched import _xattrs_or_skip
from tests.test_vouched_followers import _leader_and_follower as leader_and_follower

SLICE = 256 * 1024
BODY = pattern(3 * SLICE + 1000, seed=43)  # three slices of files, a last one stored inline
PART = BODY[:100_000]
SHA = hashlib.sha256(BODY).hexdigest()
TARGET = f"/v/t1/{SHA}"
IMMUTABLE = ("Cache-Control", "public, max-age=31536000, immutable")


def _leader_and_follower(url: str, origin: ForeignOrigin) -> tuple[Any, Any]:
    """The first request leads the fill; the second follows it (`test_vouched_followers`)."""
    return leader_and_follower(url, origin, TARGET)


@pytest.fixture
def edge(foreign: ForeignOrigin, tmp_path: Path) -> Iterator[str]:
    """An edge of one worker (the edge's own server protocol: zero-copy sends)."""
    config = chain_config(tmp_path, slice_size=SLICE)
    thread = ServerThread(create_app(config, "edge", upstream=foreign.url),
                          **uvicorn_http_options(config.http_limits)).start()
    try:
        yield thread.url
    finally:
        thread.stop()


def _evicted(store: CacheStore, key: str) -> None:
    store.purge(key)  # culled by the size bound: facts and slices


def _unmarked(store: CacheStore, key: str) -> None:
    stored = store.get_meta(key)  # rewritten without the mark (a refill stored a slice)
    assert stored is not None and stored.verified
    store.set_meta(key, dataclasses.replace(stored, verified=False))


@pytest.mark.parametrize("taken", [_evicted, _unmarked], ids=["evicted", "unmarked"])
def test_a_follower_of_a_proven_flight_needs_no_stored_facts(
        edge: str, foreign: ForeignOrigin, monkeypatch: pytest.MonkeyPatch,
        taken: Callable[[CacheStore, str], None]) -> None:
    """The flight's hash matched; eviction takes the mark at once, before the follower's
    last byte: the follower, which read that flight's bytes, is answered whole."""
    vouch = Commits.vouch

    def vouch_then_lose_the_mark(self: Commits, flight: Any, size: int) -> None:
        vouch(self, flight, size)
        taken(self.store, flight.key)

    monkeypatch.setattr(Commits, "vouch", vouch_then_lose_the_mark)
    foreign.route(TARGET, body=BODY, etag=f'"{SHA}"', headers=[IMMUTABLE], pause=1.0)
    leader, follower = _leader_and_follower(edge, foreign)
    assert isinstance(leader, httpx.Response) and leader.content == BODY
    assert isinstance(follower, httpx.Response), f"cut short: {follower!r}"
    assert follower.content == BODY
    assert foreign.count(TARGET) == 1


def test_a_follower_of_a_body_that_fails_its_address_is_still_cut(
        edge: str, foreign: ForeignOrigin) -> None:
    """The proof is the hash's: a body that does not match its address proves nothing."""
    wrong = bytearray(BODY)
    wrong[SLICE + 5] ^= 0x01
    foreign.route(TARGET, body=bytes(wrong), etag=f'"{SHA}"', headers=[IMMUTABLE], pause=1.0)
    leader, follower = _leader_and_follower(edge, foreign)
    for answer in (leader, follower):
        assert isinstance(answer, httpx.HTTPError), "a wrong body was completed"


async def _follow_evicted(tmp_path: Path, proof: Proof | None) -> ForeignFill:
    """Follow another worker's fill of a slice as it grows; that worker finishes it,
    vouches for it (with ``proof``) and lets go of its claim, the slice culled at once."""
    path = tmp_path / "fill"
    path.write_bytes(PART[:50_000])
    fd = os.open(path, os.O_RDWR)
    mark_filling(fd, "v1")  # (as a fill marks its file before its first byte)
    os.close(fd)
    running = [True]
    fill = ForeignFill(path, is_running=lambda: running[0], stored=lambda: None,
                       version="v1")
    fill.attach()
    await fill.wait_beyond(0, 5)
    with path.open("ab") as f:
        f.write(PART[50_000:])
        vouch_file(f.fileno(), "v1", checksum.of(PART), proof)
    os.unlink(path)
    running[0] = False
    await fill.wait_done(5)
    return fill


async def test_a_follower_in_another_worker_keeps_the_proof_of_an_evicted_file(
        tmp_path: Path) -> None:
    """The other worker's case: the slice and the object's facts are gone when the
    follower's fill ends, and the file it holds carries the proof."""
    _xattrs_or_skip(tmp_path)
    (tmp_path / "again").mkdir()
    for proof in (Proof(SHA), None):  # (None: a range refill's, never hashed whole)
        fill = await _follow_evicted(tmp_path / ("again" if proof is None else ""), proof)
        source = ForeignSource(fill)
        seen = Witness()
        seen.needed = True
        seen.saw(0, source)
        assert fill.done and fill.evidence() == proof
        assert seen.proves(SHA) is (proof is not None)
        source.close()
        fill.detach()


# --- what proves a source, and what does not ------------------------------------------------


def _stored(tmp_path: Path, name: str, data: bytes, proof: Proof | None) -> StoredSource:
    """A stored slice file with ``proof`` marked on it, as a reader holds it."""
    path = tmp_path / name
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    vouch_file(fd, "v1", 0, proof)

    class Held:  # (the part of a `SliceFile` a witness looks at)
        def fileno(self) -> int:
            return fd

        def close(self) -> None:
            os.close(fd)

    return StoredSource(Held())  # type: ignore[arg-type]


def test_the_witness_proves_files_and_an_inline_tail_and_nothing_else(
        tmp_path: Path) -> None:
    _xattrs_or_skip(tmp_path)  # (a failure under CI, which must cover them)
    tail = b"the last slice, stored inline"
    proof = Proof(SHA, (2, hashlib.sha256(tail).hexdigest()))
    first = _stored(tmp_path, "s0", b"a", proof)
    assert proven_file(first.body.fileno()) == proof  # type: ignore[union-attr]

    def witness(*sources: Any) -> Witness:
        seen = Witness()
        seen.needed = True
        for index, source in enumerate(sources):
            seen.saw(index, source)
        return seen

    second = _stored(tmp_path, "s1", b"b", Proof(SHA))
    unmarked = _stored(tmp_path, "s2", b"c", None)  # a slice a range refill stored
    other = _stored(tmp_path, "s3", b"d", Proof("0" * 64))  # another body's
    try:
        assert witness(first, second, StoredSource(tail)).proves(SHA)
        assert not witness(first, second, StoredSource(b"a wrong tail")).proves(SHA)
        assert not witness(first, unmarked, StoredSource(tail)).proves(SHA)
        assert not witness(first, other, StoredSource(tail)).proves(SHA)
        assert not witness(second, second, StoredSource(tail)).proves(SHA)  # no tail named
        assert not witness(first, second).proves("f" * 64)
        assert not witness().proves(SHA)
    finally:
        for source in (first, second, unmarked, other):
            source.close()


def test_a_mark_round_trips() -> None:
    for proof in (Proof(SHA), Proof(SHA, (7, "ab" * 32))):
        assert Proof.decode(proof.encode()) == proof
    with pytest.raises(ValueError):
        Proof.decode(b"x 1")  # (a tail without its hash)
