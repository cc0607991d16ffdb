"""A full disk never wedges a node (the outside exam: an edge on a 32 MiB volume, asked for a
64 MiB blob, answered 500 to everything afterwards, purge included, until restarted).

The edge is a real ``edgeproxy serve`` process whose cache directory is a real 32 MiB tmpfs:
the tests and CI run as root. Without root (a developer's machine), an in-process edge on a
volume whose size and ENOSPC are simulated stands in; under CI that is a failure, not a
fallback. Every answer must carry exactly the origin's bytes, and none may be a 5xx.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from edgeproxy.cache import CacheStore, ObjectMeta, batch, checksum, create_app, index
from edgeproxy.cache.policy import Freshness
from edgeproxy.cache.space import BALLAST
from edgeproxy.config import load_config
from edgeproxy.errors import StorageFault
from tests.nodes import NodeProcess
from tests.origins import TestOrigin, pattern
from tests.servers import ServerThread, free_port, serve
from tests.test_cache_node import _metric
from tests.volumes import Tmpfs

MiB = 1024**2
VOLUME = 32 * MiB
RESERVE = VOLUME * 5 // 100  # the default min_free (5%, 256MiB: the smaller) of this volume
TOKEN = "disk-full-admin-token"
_RANDOM = random.Random(1)  # deterministic bytes, made fast (this is 100 MiB)
BIG = _RANDOM.randbytes(64 * MiB)
SMALL = {f"/small/{i}.bin": _RANDOM.randbytes(4 * MiB + 1000 * i) for i in range(10)}
TINY = pattern(9000, seed=3)  # lives inside the index, not in a file


class Volume(Protocol):
    """The volume under the edge's cache directory."""

    def free(self) -> int: ...
    def fill_up(self) -> None: ...
    def drain(self) -> None: ...


class Edge(Protocol):
    """An edge node in front of the test origin."""

    url: str

    def restart(self) -> None: ...
    def logs(self) -> str: ...


# --- the real thing: a tmpfs and an edge process ---------------------------------------------


class EdgeProcess:
    """``edgeproxy serve --role edge`` with its data under ``directory``."""

    def __init__(self, directory: Path, upstream: str) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = directory / "edge.yaml"
        config.write_text(f"data_dir: {directory / 'var'}\nlog_level: warning\n"
                          f"admin_token: {TOKEN}\nedge: {{port: {port}}}\n")
        self.node = NodeProcess(config, "edge", self.url, upstream=upstream).start()

    def restart(self) -> None:
        self.node.stop()
        self.node.start()

    def logs(self) -> str:
        return self.node.stderr()

    def stop(self) -> None:
        self.node.stop()


# --- without root: a simulated volume and an in-process edge -------------------------------


class SimulatedVolume:
    """A `VOLUME`-byte volume as this process sees it: statvfs of the cache directory
    reports it, and fill-file writes past it fail with ENOSPC (the index's own writes are
    not simulated)."""

    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.directory = directory
        directory.mkdir(parents=True)
        self.filler = 0
        real_statvfs, real_pwrite = os.statvfs, os.pwrite

        def statvfs(path: Any) -> Any:
            if not str(path).startswith(str(directory)):
                return real_statvfs(path)
            real = real_statvfs(path)
            blocks = VOLUME // real.f_frsize
            free = max(0, VOLUME - self.used()) // real.f_frsize
            return os.statvfs_result((real.f_bsize, real.f_frsize, blocks, free, free,
                                      real.f_files, real.f_ffree, real.f_favail, real.f_flag,
                                      real.f_namemax))

        def pwrite(fd: int, data: Any, offset: int) -> int:
            if self.used() + len(data) > VOLUME:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_pwrite(fd, data, offset)

        monkeypatch.setattr(os, "statvfs", statvfs)
        monkeypatch.setattr("edgeproxy.cache.fills.os.pwrite", pwrite)

    def used(self) -> int:
        return self.filler + sum(f.stat().st_size for f in self.directory.rglob("*")
                                 if f.is_file())

    def free(self) -> int:
        return max(0, VOLUME - self.used())

    def fill_up(self) -> None:
        self.filler += self.free()

    def drain(self) -> None:
        self.filler = 0


class EdgeThread:
    """An edge app served in this process."""

    def __init__(self, directory: Path, upstream: str, caplog: pytest.LogCaptureFixture) -> None:
        self.config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(directory / "var"),
                                             "EDGEPROXY_ADMIN_TOKEN": TOKEN})
        self.upstream = upstream
        self.caplog = caplog
        self.server = ServerThread(create_app(self.config, "edge", upstream=upstream)).start()
        self.url = self.server.url

    def restart(self) -> None:
        self.server.stop()
        self.server = ServerThread(create_app(self.config, "edge", upstream=self.upstream),
                                   port=self.server.port).start()

    def logs(self) -> str:
        return self.caplog.text

    def stop(self) -> None:
        self.server.stop()


# --- fixtures ----------------------------------------------------------------------------------


def _as_root() -> bool:
    if os.geteuid() == 0:
        return True
    if os.environ.get("CI"):
        pytest.fail("CI must run these tests as root: they mount a real tmpfs")
    return False


@pytest.fixture
def blob_origin() -> Iterator[tuple[TestOrigin, str]]:
    app = TestOrigin()
    cached = {"cache-control": "max-age=600"}
    app.put("/big.bin", BIG, headers=cached)
    app.put("/tiny.bin", TINY, headers=cached)
    for path, body in SMALL.items():
        app.put(path, body, headers=cached)
    with serve(app) as server:
        yield app, server.url


@pytest.fixture
def setup(tmp_path: Path, blob_origin: tuple[TestOrigin, str], monkeypatch: pytest.MonkeyPatch,
          request: pytest.FixtureRequest) -> Iterator[tuple[Edge, Volume, TestOrigin]]:
    cache_dir = tmp_path / "var" / "edge" / "cache"
    app, url = blob_origin
    if _as_root():
        volume = Tmpfs(cache_dir, VOLUME)
        try:
            edge = EdgeProcess(tmp_path, url)
            try:
                yield edge, volume, app
            finally:
                edge.stop()
        finally:
            volume.close()
    else:
        simulated = SimulatedVolume(cache_dir, monkeypatch)
        thread = EdgeThread(tmp_path, url, request.getfixturevalue("caplog"))
        try:
            yield thread, simulated, app
        finally:
            thread.stop()


# --- the tests -------------------------------------------------------------------------------


class Client:
    """Requests to the edge; no answer may be a 5xx."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.http = httpx.Client(timeout=60)

    def get(self, path: str, body: bytes, *, status: int = 200,
            headers: dict[str, str] | None = None) -> httpx.Response:
        r = self.http.get(self.edge.url + path, headers=headers)
        assert r.status_code < 500, f"{path}: {r.status_code} {r.text[:300]}"
        assert r.status_code == status, f"{path}: {r.status_code} {r.text[:300]}"
        assert _sha(r.content) == _sha(body), f"{path}: wrong bytes"
        return r

    def health(self) -> str:
        status: str = self.http.get(self.edge.url + "/healthz").json()["status"]
        return status

    def purge(self, path: str) -> int:
        r = self.http.post(self.edge.url + "/_admin/purge", json={"paths": [path]},
                           headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        purged: int = r.json()["purged"]
        return purged

    def faults(self, reason: str) -> float:
        text = self.http.get(self.edge.url + "/metrics").text
        return _metric(text, "edgeproxy_storage_faults_total", reason=reason)


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _eventually(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 10
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_full_volume_degrades_to_pass_through_and_recovers_by_itself(
        setup: tuple[Edge, Volume, TestOrigin]) -> None:
    edge, volume, origin = setup
    client = Client(edge)

    # A blob twice the volume: passed through whole, nothing of it stored, said so.
    assert client.get("/big.bin", BIG).headers["x-cache"] == "MISS from edge"
    assert client.health() == "degraded"
    assert client.faults("no_space") >= 1
    assert "does not fit" in edge.logs()
    assert volume.free() >= VOLUME - 4 * MiB  # no partial copy
    client.get("/big.bin", BIG[40 * MiB:40 * MiB + 1000], status=206,
               headers={"range": f"bytes={40 * MiB}-{40 * MiB + 999}"})
    assert origin.count("/big.bin") == 2  # one upstream request each: passed through

    # Objects that fit are cached; the least recently stored give way, the reserve is kept.
    for path, body in SMALL.items():
        client.get(path, body)
        assert client.get(path, body).headers["x-cache"] == "HIT from edge"
        assert volume.free() >= RESERVE - MiB, f"after {path}: {volume.free()} bytes free"
    assert client.health() == "ok"
    first = next(iter(SMALL))
    assert client.get(first, SMALL[first]).headers["x-cache"] == "MISS from edge"  # evicted
    assert origin.count(first) == 2

    # Purge frees space.
    last = list(SMALL)[-1]
    before = volume.free()
    assert client.purge(last) == 1
    assert volume.free() >= before + 4 * MiB - 256 * 1024  # less what the index journals
    client.get("/tiny.bin", TINY)
    assert client.get("/tiny.bin", TINY).headers["x-cache"] == "HIT from edge"
    time.sleep(batch.COMMIT_DELAY * 20)  # in the index, not pending in the group commit

    # Another program fills the volume to the last byte: purges (index writes) still work
    # and free space, stored objects are still served, new ones pass through or make room.
    volume.fill_up()
    assert volume.free() < 64 * 1024
    assert client.purge("/tiny.bin") == 1
    kept, other = list(SMALL)[-2], list(SMALL)[-3]
    before = volume.free()
    assert client.purge(kept) == 1
    assert volume.free() >= before + 4 * MiB - 256 * 1024  # less what the index journals
    client.get(other, SMALL[other])
    client.get(kept, SMALL[kept])
    assert client.get("/tiny.bin", TINY).headers["x-cache"] == "MISS from edge"
    volume.fill_up()
    client.get(first, SMALL[first])
    client.get(kept, SMALL[kept])

    # The space comes back: caching resumes, without a restart.
    volume.drain()
    path = list(SMALL)[2]
    client.get(path, SMALL[path])
    assert client.get(path, SMALL[path]).headers["x-cache"] == "HIT from edge"
    assert _eventually(lambda: client.health() == "ok")

    # A restart on a full volume: the node starts and serves, and caches once there is room.
    volume.fill_up()
    edge.restart()
    path = list(SMALL)[3]
    client.get(path, SMALL[path])
    volume.drain()
    assert _eventually(lambda: client.get(path, SMALL[path]).headers["x-cache"]
                       == "HIT from edge")


def test_a_purge_on_a_volume_full_to_the_last_byte_releases_the_ballast(
        tmp_path: Path) -> None:
    """The index needs room to journal a delete: the ballast file gives it that room."""
    if not _as_root():
        pytest.skip("needs root for a tmpfs: SQLite's own writes are not simulated")
    directory = tmp_path / "cache"
    volume = Tmpfs(directory, VOLUME)
    try:
        store = CacheStore(directory, 1024**3)
        assert (directory / BALLAST).exists()
        meta = ObjectMeta(200, len(TINY), None, None, None, (), Freshness(0.0, 0.0, 60.0), "x",
                          "v1", MiB)
        store.commit_object("/tiny", meta, directory / "unused", len(TINY), TINY,
                            checksum=checksum.of(TINY))
        store.close()
        store = CacheStore(directory, 1024**3)  # a fresh start: the journal is empty
        volume.fill_up()
        assert store.get_meta("/tiny") == meta
        assert store.purge("/tiny") == 2
        assert store.get_meta("/tiny") is None
        assert not (directory / BALLAST).exists()
        volume.drain()
        store.space.free(fresh=True)
        assert (directory / BALLAST).exists()  # made again once there is room
        store.close()
    finally:
        volume.close()


def test_a_store_opened_on_a_full_volume_passes_through_until_its_index_opens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No room even to create the index: no crash, every write a storage fault (so answers
    pass through), and the index opens by itself once there is room."""
    if not _as_root():
        pytest.skip("needs root for a tmpfs: SQLite's own writes are not simulated")
    monkeypatch.setattr(index, "REOPEN_INTERVAL", 0.0)  # else it tries every few seconds
    directory = tmp_path / "cache"
    volume = Tmpfs(directory, VOLUME)
    try:
        volume.fill_up()
        store = CacheStore(directory, 1024**3)
        assert store.degraded(time.time())
        assert store.get_meta("/tiny") is None
        meta = ObjectMeta(200, len(TINY), None, None, None, (), Freshness(0.0, 0.0, 60.0), "x",
                          "v1", MiB)
        with pytest.raises(StorageFault):
            store.commit_object("/tiny", meta, directory / "unused", len(TINY), TINY,
                            checksum=checksum.of(TINY))
        volume.drain()
        store.commit_object("/tiny", meta, directory / "unused", len(TINY), TINY,
                            checksum=checksum.of(TINY))
        assert store.get_meta("/tiny") == meta
        assert not store.degraded(time.time())
        store.close()
    finally:
        volume.close()


def test_facts_written_as_the_index_reopens_are_in_the_key_filter(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write that finds room again reopens the index, and with it makes the key filter
    (`presence`): the facts it writes must be in the filter, or every worker would take the
    object for a miss without asking the index."""
    if not _as_root():
        pytest.skip("needs root for a tmpfs: SQLite's own writes are not simulated")
    monkeypatch.setattr(index, "REOPEN_INTERVAL", 0.0)
    directory = tmp_path / "cache"
    volume = Tmpfs(directory, VOLUME)
    try:
        volume.fill_up()
        store = CacheStore(directory, 1024**3)
        assert store.presence is None  # no index, no filter
        meta = ObjectMeta(200, len(TINY), None, None, None, (), Freshness(0.0, 0.0, 60.0), "x",
                          "v1", MiB)
        volume.drain()
        store.set_meta("/tiny", meta)  # this write reopens the index and makes the filter
        assert store.presence is not None
        store.commit()
        other = CacheStore(directory, 1024**3)  # another worker, the filter made already
        try:
            assert other.get_meta("/tiny") == meta
            assert store.get_meta("/tiny") == meta
        finally:
            other.close()
        store.close()
    finally:
        volume.close()
