"""A 304 refreshes the facts it revalidated, never facts another worker stored since.

Two workers share one index. One revalidates its stale copy of version 1 and gets a 304 while
the other has already stored version 2 (the object changed at the origin): writing the
refreshed v1 facts put the old version back over the new one (RFC 9111 §4.3.4 updates the
stored response *selected* by the validator, not whatever is stored under the key), and the
next requests refetched slices and cut answers. A purge meanwhile must not be undone either.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgeproxy.cache.beresp import BeResp
from edgeproxy.cache.facts import Facts
from edgeproxy.cache.meta import ObjectMeta
from edgeproxy.cache.policy import Freshness
from edgeproxy.cache.store import CacheStore
from edgeproxy.config import load_config

V1 = ObjectMeta(200, 10, '"v1"', None, None, (("etag", '"v1"'),), Freshness(0.0, 0.0, 60.0),
                "x", '"v1"', 10)
V2 = dataclasses.replace(V1, etag='"v2"', headers=(("etag", '"v2"'),), version='"v2"')


def _not_modified(etag: str) -> BeResp:
    return BeResp(304, [("etag", etag), ("cache-control", "max-age=600")], None, None, etag,
                  None, None, 100.0, 100.0)


def _workers(tmp_path: Path) -> tuple[CacheStore, CacheStore]:
    return CacheStore(tmp_path / "cache", 1 << 30), CacheStore(tmp_path / "cache", 1 << 30)


def test_a_304_for_v1_leaves_v2_stored_by_another_worker(tmp_path: Path) -> None:
    one, two = _workers(tmp_path)
    try:
        one.set_meta("/k", V1)
        one.commit()
        two.set_meta("/k", V2)  # the other worker fetched the changed object
        two.commit()
        told: list[tuple[str, bool]] = []
        one.on_facts = lambda key, written: told.append((key, written))
        refreshed = Facts(load_config(None), "edge", one).revalidated("/k", V1,
                                                                      _not_modified('"v1"'))
        assert refreshed.version == '"v1"'  # (this answer is still served refreshed)
        one.commit()
        for worker in (one, two):
            stored = worker.get_meta("/k")
            assert stored is not None and stored.version == '"v2"'
        assert told == [("/k", False)]  # (its memory lets go of the refreshed v1)
    finally:
        one.close()
        two.close()


def test_a_304_refreshes_its_own_version_and_does_not_undo_a_purge(tmp_path: Path) -> None:
    one, two = _workers(tmp_path)
    facts = Facts(load_config(None), "edge", one)
    try:
        one.set_meta("/k", V1)
        one.commit()
        facts.revalidated("/k", V1, _not_modified('"v1"'))
        one.commit()
        stored = two.get_meta("/k")
        assert stored is not None and stored.freshness.response_time == 100.0  # refreshed
        two.purge("/k")
        facts.revalidated("/k", V1, _not_modified('"v1"'))
        one.commit()
        assert two.get_meta("/k") is None and one.get_meta("/k") is None
    finally:
        one.close()
        two.close()


async def test_a_pending_write_of_this_worker_decides_at_once(tmp_path: Path) -> None:
    one, _two = _workers(tmp_path)
    try:
        one.set_meta("/k", V2)  # pending, not committed yet
        assert _two.get_meta("/k") is None  # (a running loop holds it for the group commit)
        told: list[tuple[str, bool]] = []
        one.on_facts = lambda key, written: told.append((key, written))
        Facts(load_config(None), "edge", one).revalidated("/k", V1, _not_modified('"v1"'))
        stored = one.get_meta("/k")
        assert stored is not None and stored.version == '"v2"'
        one.commit()
        stored = one.get_meta("/k")
        assert stored is not None and stored.version == '"v2"'
        assert told == [("/k", False), ("/k", True)]
    finally:
        one.close()
        _two.close()


async def test_two_refreshes_in_one_commit_keep_the_later_and_its_condition(
        tmp_path: Path) -> None:
    """Two 304s for v1 before the group commit: the later refresh goes in (it was refused,
    tested against the first one's pending conditional write instead of its facts), and
    still only if v1 is what the index holds when it is committed."""
    one, two = _workers(tmp_path)
    facts = Facts(load_config(None), "edge", one)
    try:
        one.set_meta("/k", V1)
        one.commit()
        first, later = _not_modified('"v1"'), _not_modified('"v1"')
        later = dataclasses.replace(later, response_time=200.0, request_time=200.0)
        told: list[tuple[str, bool]] = []
        one.on_facts = lambda key, written: told.append((key, written))
        facts.revalidated("/k", V1, first)
        facts.revalidated("/k", V1, later)  # both pending under a running loop
        assert told == []
        one.commit()
        stored = two.get_meta("/k")
        assert stored is not None and stored.freshness.response_time == 200.0
        assert told == [("/k", True)]
        # the condition stays with the merged write: v2 stored meanwhile is kept
        facts.revalidated("/k", V1, first)
        facts.revalidated("/k", V1, later)
        two.set_meta("/k", V2)
        two.commit()
        one.commit()
        stored = two.get_meta("/k")
        assert stored is not None and stored.version == '"v2"'
    finally:
        one.close()
        two.close()
