"""The key filter the workers of a node share (`edgeproxy.cache.presence`): a key never written
to the index is known absent without a query; one written by any worker is asked about; the
filter is built from the index when it is missing, and a node without one asks the index."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy.cache.keys import meta_key
from edgeproxy.cache.meta import ObjectMeta
from edgeproxy.cache.policy import Freshness
from edgeproxy.cache.presence import MIN_SLOTS, NAME, open_presence, slots_for
from edgeproxy.cache.store import CacheStore
from tests.nodes import NodeProcess
from tests.origins import TestOrigin, pattern
from tests.servers import free_port, serve

KEYS = [meta_key(f"/v/t1/{i:064x}") for i in range(200)]


def test_a_key_is_held_once_added_and_another_worker_sees_it(tmp_path: Path) -> None:
    first = open_presence(tmp_path, MIN_SLOTS, lambda: [])
    second = open_presence(tmp_path, MIN_SLOTS, lambda: ["never read: the file is there"])
    assert first is not None and second is not None
    assert not any(first.may_hold(k) or second.may_hold(k) for k in KEYS)
    for key in KEYS[:100]:
        first.add(key)
    assert all(second.may_hold(k) for k in KEYS[:100])  # one file, mapped by both
    # 100 keys in 64 Ki slots: a false positive among the others is ~1e-9 likely
    assert not any(second.may_hold(k) for k in KEYS[100:])
    first.close()
    second.close()


def test_a_missing_filter_is_built_from_the_index_keys(tmp_path: Path) -> None:
    built = open_presence(tmp_path, MIN_SLOTS, lambda: iter(KEYS[:50]))
    assert built is not None
    assert (tmp_path / NAME).stat().st_size == MIN_SLOTS
    assert all(built.may_hold(k) for k in KEYS[:50])
    assert not list(tmp_path.glob(f"{NAME}.*"))  # the temp file was renamed into place
    built.close()


def test_a_filter_cut_short_is_built_again(tmp_path: Path) -> None:
    (tmp_path / NAME).write_bytes(b"\1" * 100)
    built = open_presence(tmp_path, MIN_SLOTS, lambda: KEYS[:3])
    assert built is not None and built.slots == MIN_SLOTS
    assert built.may_hold(KEYS[0]) and not built.may_hold(KEYS[3])
    built.close()


def test_no_room_for_the_filter_leaves_lookups_to_the_index(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    assert open_presence(tmp_path, MIN_SLOTS, lambda: KEYS) is None
    assert list(tmp_path.iterdir()) == []  # no file half made


@pytest.mark.parametrize(("size_limit", "slots"), [
    (0, MIN_SLOTS),  # a tiny test cache still gets a usable filter
    (64 * 1024**3, 8 * 1024**2),  # 64 GiB: 1 Mi objects of 64 KiB at ~3 % false positives
    (4 * 1024**4, 8 * 1024**2),  # capped: 8 MiB of shared memory per node
])
def test_the_filter_s_size_follows_the_cache_s(size_limit: int, slots: int) -> None:
    assert slots_for(size_limit) == slots


META = ObjectMeta(200, 5, None, None, None, (), Freshness(0.0, 0.0, 60.0), "x", "v1", 5)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[CacheStore, CacheStore]]:
    writer = CacheStore(tmp_path / "cache", 1 << 30)
    reader = CacheStore(tmp_path / "cache", 1 << 30)  # another worker's view of the index
    yield writer, reader
    writer.close()
    reader.close()


def _count_queries(store: CacheStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    asked: list[str] = []
    real = store._cache.get

    def get(key: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(key)
        return real(key, *args, **kwargs)

    monkeypatch.setattr(store._cache, "get", get)
    return asked


def test_a_miss_is_known_without_a_query_and_a_stored_object_is_found(
        stores: tuple[CacheStore, CacheStore], monkeypatch: pytest.MonkeyPatch) -> None:
    writer, reader = stores
    asked = _count_queries(reader, monkeypatch)
    assert reader.get_meta("/never") is None
    assert asked == []  # known absent: SQLite was not asked
    writer.set_meta("/stored", META)
    writer.commit()
    assert reader.get_meta("/stored") == META  # written by another worker: asked, found
    assert asked == [meta_key("/stored")]


def test_a_filter_lost_is_rebuilt_from_the_index_at_the_next_start(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "cache", 1 << 30)
    store.set_meta("/kept", META)
    store.close()
    (tmp_path / "cache" / NAME).unlink()
    reopened = CacheStore(tmp_path / "cache", 1 << 30)
    try:
        assert reopened.presence is not None and reopened.presence.may_hold(meta_key("/kept"))
        assert reopened.get_meta("/kept") == META
        assert reopened.get_meta("/other") is None
    finally:
        reopened.close()


OBJECTS = {f"/v/{i}": pattern(3000 + i, seed=i) for i in range(16)}


def test_two_workers_fetch_each_object_once_and_a_restart_rebuilds_the_filter(
        tmp_path: Path) -> None:
    """Over sockets: a two-worker edge, fresh connections spread over both workers; every
    object is fetched from the origin once, whichever worker stored it."""
    app = TestOrigin()
    for path, body in OBJECTS.items():
        app.put(path, body, headers={"cache-control": "max-age=600"})
    port = free_port()
    config = tmp_path / "edge.yaml"
    config.write_text(f"data_dir: {tmp_path / 'var'}\nlog_level: warning\n"
                      f"edge: {{port: {port}, workers: 2}}\n")
    with serve(app) as origin:
        edge = NodeProcess(config, "edge", f"http://127.0.0.1:{port}", upstream=origin.url)
        with edge:
            for _round in range(4):
                for path, body in OBJECTS.items():
                    with httpx.Client(timeout=30) as http:  # a new connection each time
                        assert http.get(edge.url + path).content == body
        assert all(app.count(path) == 1 for path in OBJECTS), [app.count(p) for p in OBJECTS]
        filter_file = tmp_path / "var" / "edge" / "cache" / NAME
        assert filter_file.exists()
        os.unlink(filter_file)
        with edge, httpx.Client(timeout=30) as http:  # built again from the index: all hits
            for path, body in OBJECTS.items():
                r = http.get(edge.url + path)
                assert r.content == body and r.headers["x-cache"] == "HIT from edge"
        assert all(app.count(path) == 1 for path in OBJECTS)
        assert filter_file.exists()
