"""The key filter kept useful (`edgeproxy.cache.filterkeeper`): a filter filled up by the keys
of objects long evicted is built anew from the index, the workers move to it, and no key
stored meanwhile (by any worker) goes missing from it. Real index files and filter mappings:
two `CacheStore`s on one directory are two workers' views of one node's cache."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeproxy.cache import filterkeeper
from edgeproxy.cache.filterkeeper import RENEW_AT, FilterKeeper
from edgeproxy.cache.keys import meta_key
from edgeproxy.cache.meta import ObjectMeta
from edgeproxy.cache.policy import Freshness
from edgeproxy.cache.presence import NAME
from edgeproxy.cache.store import CacheStore

META = ObjectMeta(200, 5, None, None, None, (), Freshness(0.0, 0.0, 60.0), "x", "v1", 5)
KEPT = [f"/kept/{i}" for i in range(50)]
GONE = [meta_key(f"/gone/{i}") for i in range(60_000)]  # 3 of 128 Ki slots each: 75 % set


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[CacheStore]]:
    monkeypatch.setattr(filterkeeper, "SWITCH_EVERY", 0.05)
    both = [CacheStore(tmp_path / "cache", 1 << 30), CacheStore(tmp_path / "cache", 1 << 30)]
    yield both
    for store in both:
        store.close()


def _churned(store: CacheStore) -> None:
    """Objects stored and evicted long ago left their slots; these are still stored."""
    assert store.presence is not None
    for key in GONE:
        store.presence.add(key)
    for path in KEPT:
        store.set_meta(path, META)
    store.commit()


def test_a_full_filter_is_built_anew_and_keeps_what_another_worker_stored_meanwhile(
        stores: list[CacheStore]) -> None:
    builder, other = stores
    _churned(builder)
    old = builder.presence
    assert old is not None and old.fill() >= RENEW_AT
    assert other.presence is not None and other.presence.ino == old.ino  # one file

    async def scenario() -> bool:
        renewal = asyncio.create_task(FilterKeeper(builder).renew())
        while builder.presence is old:  # until the new filter is in place
            await asyncio.sleep(0.005)
        # the other worker has not switched yet: it stores into the old filter
        other.set_meta("/late", META)
        other.commit()
        return await renewal

    assert asyncio.run(scenario())
    fresh = builder.presence
    assert fresh is not None and fresh.ino != old.ino
    assert fresh.fill() < 0.01
    assert all(fresh.may_hold(meta_key(path)) for path in KEPT)
    assert not any(fresh.may_hold(key) for key in GONE[:5000])  # misses known again
    assert fresh.may_hold(meta_key("/late"))  # added after the build, found all the same
    assert FilterKeeper(other).switch()
    assert other.presence is not None and other.presence.ino == fresh.ino
    assert other.get_meta("/late") == META and other.get_meta(KEPT[0]) == META
    assert not FilterKeeper(other).switch()  # already on the file there is


def test_a_second_worker_does_not_build_again_what_the_first_built(
        stores: list[CacheStore]) -> None:
    first, second = stores
    _churned(first)
    assert asyncio.run(FilterKeeper(first).renew())
    # the second still has the old mapping, full: its own renewal finds the file replaced
    assert second.presence is not None and second.presence.fill() >= RENEW_AT
    assert not asyncio.run(FilterKeeper(second).renew())
    assert FilterKeeper(second).switch()
    assert second.presence is not None and second.presence.fill() < 0.01


def test_the_keeper_renews_once_the_filter_is_full_and_a_removed_file_is_made_again(
        stores: list[CacheStore], monkeypatch: pytest.MonkeyPatch) -> None:
    store = stores[0]
    monkeypatch.setattr(filterkeeper, "CHECK_EVERY", 0.0)

    async def scenario() -> None:
        keeper = FilterKeeper(store)
        keeper.start()
        try:
            await asyncio.sleep(0.2)
            assert keeper.renewals == 0  # not full: nothing to do
            _churned(store)
            for _ in range(200):
                if keeper.renewals:
                    break
                await asyncio.sleep(0.05)
            assert keeper.renewals == 1
            assert store.presence is not None and store.presence.fill() < 0.01
            before = store.presence.ino
            (store.directory / NAME).unlink()  # an operator's cleanup, say
            for _ in range(200):
                if store.presence.ino != before:
                    break
                await asyncio.sleep(0.05)
            assert store.presence.ino != before  # made again from the index, and used
            assert store.presence.may_hold(meta_key(KEPT[0]))
        finally:
            await keeper.stop()

    asyncio.run(scenario())
