"""A request that waits for another worker's fetch (its claim on the slice) longer than
``fill_wait_timeout`` relays its own answer (`relay.pass_`), on every path that waits: a
long body of unknown length outlasts the wait, and its other requests were answered 504.
The miss step did so (761392d); a cold GET whose slice 0 was claimed by the other worker
between that look and its own claim (`steps.fetch_small`), and a hit on a validator-less
object whose missing slices the other worker fills (`joins.answered_elsewhere`), did not:
1 run in 10 of `test_growing_across_workers[longer-than-the-wait]` under CI-like load got
a 504. Unit tests of the steps, the node stubbed; the socket test is that one."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from edgeproxy.cache import joins, steps
from edgeproxy.cache.relay import pass_
from edgeproxy.errors import UpstreamTimeout


async def _outlasted(*args: object) -> None:
    raise UpstreamTimeout("the worker filling this object: nothing for 1s")


def test_a_cold_get_whose_slice_the_other_worker_claimed_first_relays_its_own() -> None:
    req = SimpleNamespace(key="/k", headers={}, raw_headers=[])
    coalescer = SimpleNamespace(fills={}, foreign_facts=_outlasted)
    node: Any = SimpleNamespace(spec=lambda req, **kw: None, coalescer=coalescer,
                                fetcher=SimpleNamespace(claim=lambda spec, **kw: None))
    tx: Any = SimpleNamespace(req=req, tries=0, stale=None, known=None)
    assert asyncio.run(steps.fetch_small(node, tx)) is pass_


def test_a_hit_waiting_for_the_other_workers_slices_relays_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(joins, "pin", lambda node, tx, meta: None)  # a slice is not at hand
    monkeypatch.setattr(joins, "answered_elsewhere", _outlasted)
    meta = SimpleNamespace(length=10 * 1024, status=200, unvalidated=True,
                           if_range_fails=lambda value: False)
    req = SimpleNamespace(key="/k", method="GET", headers={}, ranges=None,
                          first_byte=lambda length: 0)
    node: Any = SimpleNamespace(coalescer=SimpleNamespace(flight_for=lambda key: None))
    tx: Any = SimpleNamespace(req=req, meta=meta, tries=0, flight=None)
    assert asyncio.run(steps.hit(node, tx)) is pass_
