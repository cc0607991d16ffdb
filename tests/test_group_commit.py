"""The cache index's group commit: pending writes are read back at once, committed together,
purged with their object, and claims wait for the commit (other workers read the index)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import diskcache
import pytest

from edgeproxy.cache import batch, queries
from edgeproxy.cache.batch import GroupCommit


@pytest.fixture
def cache(tmp_path: Path) -> diskcache.Cache:
    c = diskcache.Cache(str(tmp_path / "idx"), cull_limit=0, tag_index=True)
    yield c
    c.close()


async def test_pending_writes_are_read_back_and_committed_in_one_go(cache: diskcache.Cache) -> None:
    faults: list[BaseException] = []
    group = GroupCommit(cache, faults.append)
    group.put("a", b"1", "t1")
    group.put("b", b"2", "t2")
    assert group.get("a") == (True, b"1")
    assert "a" not in cache  # not yet in the index other processes read
    released: list[str] = []
    group.after_commit(lambda: released.append("claim"))
    assert released == []
    await asyncio.sleep(batch.COMMIT_DELAY * 3)
    assert cache.get("a") == b"1" and cache.get("b") == b"2"
    assert released == ["claim"] and group.pending == {} and faults == []
    group.after_commit(lambda: released.append("now"))  # nothing pending: at once
    assert released == ["claim", "now"]


async def test_a_purge_drops_pending_writes_of_its_object(cache: diskcache.Cache) -> None:
    group = GroupCommit(cache, lambda exc: None)
    group.put("m\0/a", "meta", "/a")
    group.put("s\0/a", b"body", "/a")
    group.put("m\0/b", "meta", "/b")
    assert group.drop(lambda tag: tag == "/a") == 2
    group.commit()
    assert "m\0/a" not in cache and "s\0/a" not in cache and cache.get("m\0/b") == "meta"


async def test_a_full_batch_commits_without_waiting(cache: diskcache.Cache) -> None:
    group = GroupCommit(cache, lambda exc: None)
    for i in range(batch.COMMIT_BATCH):
        group.put(f"k{i}", i, "t")
    assert group.pending == {} and cache.get(f"k{batch.COMMIT_BATCH - 1}") == batch.COMMIT_BATCH - 1


def test_outside_an_event_loop_writes_go_through(cache: diskcache.Cache) -> None:
    group = GroupCommit(cache, lambda exc: None)
    group.put("a", b"1", "t")
    assert cache.get("a") == b"1" and group.pending == {}


async def test_a_storage_fault_loses_the_batch_reports_it_and_still_releases(
        cache: diskcache.Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    faults: list[BaseException] = []
    group = GroupCommit(cache, faults.append)
    group.put("a", b"1", "t")
    released: list[bool] = []
    group.after_commit(lambda: released.append(True))

    def full(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(cache.disk, "store", full)  # under every index write
    group.commit()
    assert len(faults) == 1 and released == [True] and group.pending == {}
    monkeypatch.undo()
    assert "a" not in cache


def test_new_and_stored_keys_in_one_batch_read_back_as_diskcache_wrote_them(
        cache: diskcache.Cache) -> None:
    """New keys go in with one statement, stored ones through ``set`` (which removes the file
    of the value it replaces); both read back with their tags, and sizes add up."""
    big = b"x" * (cache.disk.min_file_size + 1)  # kept in a file of its own
    group = GroupCommit(cache, lambda exc: None)
    group.pending.update({"a": (big, "ta"), "b": ({"facts": 1}, "tb")})
    group.commit()
    old_files = {p for p in Path(cache.directory).rglob("*.val")}
    assert len(old_files) == 1
    group.pending.update({"a": (b"2", "ta"), "c": (big, "tc"), "d": (b"4", "td")})
    group.commit()
    assert cache.get("a") == b"2" and cache.get("b") == {"facts": 1}
    assert cache.get("c") == big and cache.get("d") == b"4"
    assert not any(p.exists() for p in old_files)  # the replaced value's file is gone
    assert cache.evict("tc") == 1 and "c" not in cache and "a" in cache
    assert cache.volume() >= len(b"2") + len(b"4") and len(cache) == 3


async def test_other_workers_see_a_process_s_writes_in_the_order_made(tmp_path: Path) -> None:
    """A slice file enters the index with what this process wrote before it (the facts that
    vouch for it), in one transaction: a reader in another worker that finds the slice
    without those facts cut answers one byte short. Until then the file is still the fill's
    temp file, which a crash leaves for the start-up sweep."""
    from edgeproxy.cache import checksum
    from edgeproxy.cache.meta import ObjectMeta
    from edgeproxy.cache.policy import Freshness
    from edgeproxy.cache.store import INLINE_MAX, CacheStore

    writer = CacheStore(tmp_path / "cache", 1 << 30)
    reader = CacheStore(tmp_path / "cache", 1 << 30)  # another worker's view of the index
    try:
        data = b"x" * (INLINE_MAX + 1)  # stored as a file
        meta = ObjectMeta(200, len(data), None, None, None, (), Freshness(0.0, 0.0, 60.0), "x",
                          "v1", len(data), verified=True)
        writer.set_meta("/k", meta)
        assert reader.get_meta("/k") is None  # pending in the writer's group commit
        path = tmp_path / "fill"
        path.write_bytes(data)
        writer.commit_slice("/k", "v1", 0, path, len(data), checksum=checksum.of(data))
        assert not reader.has_slice("/k", "v1", 0)  # pending too
        # waiting for the commit under a name of its own, beside the fill's path
        (waiting,) = path.parent.glob("fill.*")
        assert not path.exists() and waiting.read_bytes() == data
        assert writer.has_slice("/k", "v1", 0)  # this process sees its own writes
        writer.commit()
        assert not waiting.exists()  # moved into place
        assert reader.has_slice("/k", "v1", 0)
        stored = reader.get_meta("/k")
        assert stored is not None and stored.verified
        body = reader.get_slice("/k", "v1", 0)
        assert body is not None and not isinstance(body, bytes)
        with body:
            assert os.pread(body.fileno(), len(data) + 1, 0) == data
    finally:
        writer.close()
        reader.close()


async def test_a_pending_slice_file_is_read_in_place_and_a_purge_removes_it(
        tmp_path: Path) -> None:
    """Reading a slice file still pending commits it first: the move into place changes the
    file's ctime, which the reader's check takes for a write, and a stampede's answers were
    cut short by it."""
    from edgeproxy.cache import checksum
    from edgeproxy.cache.store import INLINE_MAX, CacheStore

    store = CacheStore(tmp_path / "cache", 1 << 30)
    try:
        data = bytes(range(256)) * (INLINE_MAX // 256 + 1)
        path = tmp_path / "fill"
        path.write_bytes(data)
        store.commit_slice("/k", "v1", 0, path, len(data), checksum=checksum.of(data))
        body = store.get_slice("/k", "v1", 0)
        assert body is not None and not isinstance(body, bytes)
        assert not path.exists() and store._batch.pending == {}  # placed before it was read
        store.commit()
        with body:
            assert os.pread(body.fileno(), len(data) + 1, 0) == data
            assert body.unchanged()  # nothing moved it under its reader
        path.write_bytes(data)  # a pending file whose bytes fail its checksum is never served
        store.commit_slice("/k", "v2", 0, path, len(data), checksum=checksum.of(data[1:]))
        assert store.get_slice("/k", "v2", 0) is None
        assert list(tmp_path.glob("fill*")) == []
        store.commit()
        assert not store.has_slice("/k", "v2", 0)
        assert [p.read_bytes() for p in (tmp_path / "cache").rglob("*.val")] == [data]
        other = tmp_path / "fill2"
        other.write_bytes(data)
        store.commit_slice("/j", "v1", 0, other, len(data), checksum=checksum.of(data))
        assert store.purge("/j") == 1
        assert store._batch.pending == {}
        # its row will never be written: nor will its file stay, under any name
        assert list(tmp_path.glob("fill*")) == []
        store.commit()
        assert not store.has_slice("/j", "v1", 0)
    finally:
        store.close()


async def test_a_batch_lost_to_a_storage_fault_leaves_no_slice_file_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit moves the file into place, then the transaction fails: no row names that
    file, so it goes (a full volume must not fill up with files nothing refers to)."""
    from edgeproxy.cache import batch, checksum
    from edgeproxy.cache.store import INLINE_MAX, CacheStore

    store = CacheStore(tmp_path / "cache", 1 << 30)
    try:
        data = b"y" * (INLINE_MAX + 1)
        path = tmp_path / "fill"
        path.write_bytes(data)
        store.commit_slice("/k", "v1", 0, path, len(data), checksum=checksum.of(data))
        # the insert fails after the file was moved (as a full or failing disk makes it)
        monkeypatch.setattr(batch, "_INSERT", "INSERT INTO NoSuchTable VALUES (?)")
        store.commit()
        assert store.faults == 1 and list(tmp_path.glob("fill*")) == []
        assert list((tmp_path / "cache").rglob("*.val")) == []
        monkeypatch.undo()
        assert not store.has_slice("/k", "v1", 0)
    finally:
        store.close()


def test_the_index_volume_is_read_at_most_once_a_period_unless_writes_may_pass_the_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeproxy.cache import evict

    clock = [100.0]
    monkeypatch.setattr("edgeproxy.cache.evict.time.monotonic", lambda: clock[0])

    class Index:
        reads = 0
        size = 4000

        def volume(self) -> int:
            self.reads += 1
            return self.size

    idx = Index()
    watch = evict.SizeWatch(lambda: idx, size_limit=10_000)
    assert not watch.over(100) and idx.reads == 1  # the first write reads it
    assert not watch.over(100) and not watch.over(5000) and idx.reads == 1  # estimated
    idx.size = 11_000  # another worker wrote too
    assert watch.over(1000) and idx.reads == 2  # the estimate passed the limit: read
    assert watch.over(10) and idx.reads == 3  # still over (not culled yet): read each time
    idx.size = 9000
    assert not watch.over(10) and idx.reads == 4
    assert not watch.over(10) and idx.reads == 4
    clock[0] += evict.VOLUME_PERIOD
    assert not watch.over(10) and idx.reads == 5  # a period later: read again


def test_bytes_and_none_bind_as_they_are_through_the_index_adapters() -> None:
    """`edgeproxy.cache.index` gives bytes and None an adapter that hands them on (Python
    3.11's sqlite3 otherwise formats an AttributeError for each one bound); what is stored
    and read back is unchanged."""
    from edgeproxy.cache import index

    assert sqlite3.adapters[(bytes, sqlite3.PrepareProtocol)] is bytes
    assert sqlite3.adapters[(type(None), sqlite3.PrepareProtocol)] is index._same
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE t (a BLOB, b, c TEXT)")
    con.execute("INSERT INTO t VALUES (?, ?, ?)", (b"\x00\xffsealed", None, "k"))
    assert con.execute("SELECT a, b, c, typeof(a), typeof(b) FROM t").fetchone() == \
        (b"\x00\xffsealed", None, "k", "blob", "null")
    con.close()


async def test_stored_slices_answers_like_has_slice_in_one_query(tmp_path: Path) -> None:
    """`CacheStore.stored_slices` (a fill's claims ask it once for a run of slices) says what
    `has_slice` says of each: pending in this process, committed for every process, another
    version not; beyond SQLite's parameter limit too; and nothing on a storage fault."""
    from edgeproxy.cache import checksum
    from edgeproxy.cache.store import CacheStore

    writer = CacheStore(tmp_path / "cache", 1 << 30)
    reader = CacheStore(tmp_path / "cache", 1 << 30)
    try:
        def put(i: int, version: str = "v1") -> None:
            data = b"%d" % i
            path = tmp_path / f"fill{i}{version}"
            path.write_bytes(data)
            writer.commit_slice("/k", version, i, path, len(data), checksum=checksum.of(data))

        for i in (0, 3, queries.IN_MAX + 7):
            put(i)
        put(5, "v2")
        run = range(0, queries.IN_MAX + 20)
        expected = frozenset({0, 3, queries.IN_MAX + 7})
        assert writer.stored_slices("/k", "v1", run) == expected  # pending here
        assert reader.stored_slices("/k", "v1", run) == frozenset()  # not yet committed
        writer.commit()
        for store in (writer, reader):
            got = store.stored_slices("/k", "v1", run)
            assert got == expected
            assert got == {i for i in run if store.has_slice("/k", "v1", i)}
        assert reader.stored_slices("/k", "v2", range(4, 6)) == {5}
        assert reader.stored_slices("/j", "v1", run) == frozenset()

        class Broken:
            def _sql(self, *args: object) -> None:
                raise sqlite3.OperationalError("disk I/O error")

        faults: list[BaseException] = []
        real, reader._cache = reader._cache, Broken()
        reader.fault = faults.append  # type: ignore[method-assign, assignment]
        try:
            assert reader.stored_slices("/k", "v1", run) == frozenset()  # "not stored"
        finally:
            reader._cache = real
        assert len(faults) == 1 and isinstance(faults[0], sqlite3.OperationalError)
    finally:
        writer.close()
        reader.close()


async def test_slice_files_go_to_256_folders_made_at_open_and_old_names_still_read(
        tmp_path: Path) -> None:
    """A slice file is placed one folder deep in folders made when the index opens (no
    ``mkdir`` on the event loop while filling), a purge leaves the folder in place, and a row
    written under diskcache's two-level names still reads."""
    from edgeproxy.cache import checksum
    from edgeproxy.cache.queries import sql
    from edgeproxy.cache.store import INLINE_MAX, CacheStore

    root = tmp_path / "cache"
    store = CacheStore(root, 1 << 30)
    try:
        folders = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "fills")
        assert folders == [f"{i:02x}" for i in range(256)]
        data = bytes(range(256)) * (INLINE_MAX // 256 + 1)
        for key in ("/a", "/b"):
            (tmp_path / "fill").write_bytes(data)
            store.commit_slice(key, "v1", 0, tmp_path / "fill", len(data),
                               checksum=checksum.of(data))
        store.commit()
        files = sorted(root.rglob("*.val"))
        assert len(files) == 2 and all(p.parent.parent == root for p in files)
        assert store.purge("/a") == 1
        store.commit()
        assert len(list(root.rglob("*.val"))) == 1
        assert sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "fills") \
            == folders
        # a row of the old layout: its file two folders deep, under the name the row records
        [(rowid, name)] = sql(store._cache)(
            "SELECT rowid, filename FROM Cache WHERE filename IS NOT NULL").fetchall()
        old = os.path.join("ab", "cd", os.path.basename(name))
        (root / "ab" / "cd").mkdir(parents=True)
        os.replace(root / name, root / old)
        sql(store._cache)("UPDATE Cache SET filename = ? WHERE rowid = ?", (old, rowid))
        body = store.get_slice("/b", "v1", 0)
        assert body is not None and not isinstance(body, bytes)
        with body:
            assert os.pread(body.fileno(), len(data) + 1, 0) == data
    finally:
        store.close()
    reopened = CacheStore(root, 1 << 30)  # the folders stay as they are; a reopen adds none
    try:
        now = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "fills")
        assert now == folders
    finally:
        reopened.close()


def test_a_large_object_s_facts_reach_other_workers_with_its_headers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests for it in other workers wait for its facts in the index (`foreign_facts`), so
    an object of many slices has them committed as its answer's headers come, not at the next
    group commit (within `batch.SOON_DELAY`, after its first bytes go out); a small object's
    stay in the group commit (its body comes with them)."""
    import httpx

    from edgeproxy.cache import create_app
    from edgeproxy.cache.store import CacheStore
    from tests.origins import TestOrigin, pattern
    from tests.servers import serve
    from tests.test_cache_node import SLICE, make_config

    monkeypatch.setattr(batch, "COMMIT_DELAY", 60.0)  # a group commit never comes in time
    origin = TestOrigin()
    origin.chunk_delay = 0.2  # the body takes a while after the headers
    origin.put("/g/large", pattern(4 * SLICE), headers={"cache-control": "max-age=60"})
    origin.put("/g/small", pattern(1000), headers={"cache-control": "max-age=60"})
    config = make_config(tmp_path)
    with serve(origin) as osrv, serve(create_app(config, "edge", upstream=osrv.url)) as edge:
        reader = CacheStore(config.cache_dir("edge"), 1 << 30)  # another worker's view
        try:
            with httpx.stream("GET", edge.url + "/g/large") as r:
                assert r.status_code == 200
                # headers in, most of the body not: committed within milliseconds
                deadline = time.monotonic() + 0.1
                while (stored := reader.get_meta("/g/large")) is None and \
                        time.monotonic() < deadline:
                    time.sleep(0.002)
                assert stored is not None and stored.length == 4 * SLICE
                assert r.read() == pattern(4 * SLICE)
            assert httpx.get(edge.url + "/g/small").content == pattern(1000)
            assert reader.get_meta("/g/small") is None  # pending in the group commit
        finally:
            reader.close()
