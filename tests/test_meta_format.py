"""How an object's facts are stored in the index (`meta.encode` / `meta.decode`)."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.cache.keys import meta_key
from edgeproxy.cache.meta import ObjectMeta, decode, encode
from edgeproxy.cache.policy import Freshness
from edgeproxy.cache.store import CacheStore

text = st.text(max_size=40)
maybe_text = st.none() | text
fresh = st.builds(Freshness, st.floats(allow_nan=False), st.floats(allow_nan=False),
                  st.floats(allow_nan=False), st.booleans(), st.floats(allow_nan=False),
                  st.floats(allow_nan=False))
facts = st.builds(
    ObjectMeta, st.integers(100, 999), st.none() | st.integers(0, 2**62), maybe_text,
    maybe_text, maybe_text, st.lists(st.tuples(text, text), max_size=8).map(tuple), fresh,
    text, text, st.integers(1, 2**40), upstream_cache=maybe_text,
    vary=st.lists(text, max_size=3).map(tuple),
    vary_values=st.none() | st.lists(text, max_size=3).map(tuple), verified=st.booleans(),
    vouching=st.booleans(), stored_at=st.floats(allow_nan=False))


@given(facts)
def test_facts_read_back_as_stored(meta: ObjectMeta) -> None:
    back = decode(encode(meta))
    assert back == meta
    assert back is not None and back.freshness == meta.freshness
    assert back.with_length(7).length == 7  # a frozen dataclass like any other


@given(st.binary(max_size=64))
def test_anything_else_reads_as_not_stored(junk: bytes) -> None:
    if not junk.startswith(b"F1"):
        assert decode(junk) is None
    else:  # garbage after the tag: never an exception, perhaps facts if it happens to parse
        result = decode(junk)
        assert result is None or isinstance(result, ObjectMeta)


def test_facts_pickled_by_an_older_version_are_fetched_again(tmp_path: Path) -> None:
    meta = ObjectMeta(200, 3, None, None, None, (), Freshness(0.0, 0.0, 60.0), "x", "v1", 1024)
    store = CacheStore(tmp_path / "cache", 1 << 30)
    try:
        store._cache.set(meta_key("/old"), meta)  # as diskcache pickled facts before
        store._cache.set(meta_key("/cut"), encode(meta)[:-3])
        assert store.get_meta("/old") is None and store.get_meta("/cut") is None
        store.set_meta("/new", meta)
        assert store.get_meta("/new") == meta  # pending in the group commit
        store.commit()
        assert store._cache.get(meta_key("/new")) == encode(meta)
        assert store.get_meta("/new") == meta
    finally:
        store.close()
    assert pickle.loads(pickle.dumps(meta)) == meta  # still picklable (admin, tests)


def test_evolve_is_dataclasses_replace() -> None:
    meta = ObjectMeta(200, 3, None, None, None, (), Freshness(0.0, 0.0, 60.0), "x", "v1", 1024)
    for changes in ({"verified": True}, {"verified": False, "vouching": False},
                    {"length": 7}, {}):
        evolved = meta.evolve(**changes)
        assert evolved == dataclasses.replace(meta, **changes)
        assert evolved.stored_at == meta.stored_at and evolved is not meta
    assert meta.verified is False  # the original is untouched
    with pytest.raises(TypeError, match="no field"):
        meta.evolve(verifed=True)
