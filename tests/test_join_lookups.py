"""Which slices a hit asks the index about before its head (`joins.first_missing`,
`joins.missing`): none that a fill here is filling. A stampede's followers, all joining one
flight that fills every slice, each asked the index about the whole window (~0.3 ms apiece
before their first byte). Unit tests of the two rules, with the store and the coalescer
stubbed: the question is which slices reach the store's query."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from edgeproxy.cache import joins

SLICE = 1024
KEY = "/v/object"


class _Store:
    """Slices stored; records every query."""

    def __init__(self, stored: set[int]) -> None:
        self.stored = stored
        self.asked: list[list[int]] = []

    def stored_slices(self, key: str, version: str, indexes: Any) -> frozenset[int]:
        wanted = list(indexes)
        self.asked.append(wanted)
        return frozenset(i for i in wanted if i in self.stored)


def _case(slices: int, stored: set[int], filling: set[int]) -> tuple[Any, Any, Any, _Store]:
    store = _Store(stored)
    node = SimpleNamespace(store=store, coalescer=SimpleNamespace(
        fills={(KEY, i): object() for i in filling}))
    tx = SimpleNamespace(req=SimpleNamespace(key=KEY, ranges=None))
    meta = SimpleNamespace(length=slices * SLICE, slice_size=SLICE, version="v1", status=200)
    return node, tx, meta, store


@pytest.mark.parametrize(("stored", "filling", "missing", "asked"), [
    # a stampede's follower: one flight fills every slice, nothing asked
    (set(), set(range(8)), [], []),
    # an object stored whole: one query for the window
    (set(range(8)), set(), [], [list(range(1, 8))]),
    # partly filling, partly stored: only the others are asked about; slice 5 is missing
    ({1, 2, 3}, {0, 4, 6, 7}, [5], [[1, 2, 3, 5]]),
    # the first missing slice is the answer's next fetch
    ({1}, {0}, [2], [list(range(1, 8))]),
])
def test_first_missing_asks_only_about_slices_not_filling(
        stored: set[int], filling: set[int], missing: list[int],
        asked: list[list[int]]) -> None:
    node, tx, meta, store = _case(8, stored, filling)
    assert joins.first_missing(node, tx, meta, 0) == missing
    assert store.asked == asked


@pytest.mark.parametrize(("stored", "filling", "missing", "asked"), [
    (set(), set(range(4)), [], []),  # all filling: there, without a query
    (set(range(4)), set(), [], [[0, 1, 2, 3]]),
    ({0, 1}, {2}, [3], [[0, 1, 3]]),  # slice 3 is neither
    ({0}, set(), [1, 2, 3], [[0, 1, 2, 3]]),
    ({0, 3}, {1, 2}, [], [[0, 3]]),
])
def test_missing_asks_only_about_slices_not_filling(
        stored: set[int], filling: set[int], missing: list[int], asked: list[list[int]]) -> None:
    node, tx, meta, store = _case(4, stored, filling)
    assert joins.missing(node, tx, meta) == missing
    assert store.asked == asked
