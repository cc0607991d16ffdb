"""A request whose slice went away before its head was out (`FillLost`) looks up once more
(Varnish's ``restart``) instead of answering 502: under eviction churn on a 2-worker edge
in front of nginx, joins lost the slice's claim to the other worker on every attempt
(`Coalescer.join`, "could not be joined") and a whole GET was answered 502 (the CI failure
of `test_unlinked_slices`'s churn test, ~1 answer in 30,000 in the oracle's churn runs).
A fill that failed (an upstream error, bytes that failed their check) is the answer's
502 as before, and so is a second loss. Unit tests of the loop and of the join, the node
stubbed; the socket tests are the churn tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edgeproxy.cache import steps
from edgeproxy.cache.coalesce import JOIN_ATTEMPTS, Coalescer
from edgeproxy.cache.store import CacheStore
from edgeproxy.cache.verdict import Verdict
from edgeproxy.errors import FillAborted, FillLost


class _Held:
    closed = False

    def close(self) -> None:
        self.closed = True


def _tx(**fields: Any) -> Any:
    return SimpleNamespace(req=SimpleNamespace(key="/k"), responded=False, restarted=False,
                           direct=None, ready={}, meta=None, stale=None, known=None,
                           flight=None, led=False, verdict=Verdict.HIT, **fields)


def _loop_with(monkeypatch: pytest.MonkeyPatch, failures: list[BaseException],
               responded: bool = False) -> list[str]:
    """`steps.run` over a first step that raises ``failures`` in turn (after answering,
    with ``responded``), each time from the top or from a lookup."""
    walked: list[str] = []

    async def failing(node: Any, tx: Any) -> Any:
        walked.append("step")
        tx.responded = responded
        if failures:
            raise failures.pop(0)
        return None

    async def lookup(node: Any, tx: Any) -> Any:
        walked.append("lookup")
        return failing

    monkeypatch.setattr(steps, "recv", failing)
    monkeypatch.setattr(steps, "lookup", lookup)
    return walked


def test_a_lost_slice_before_the_head_looks_up_again_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    walked = _loop_with(monkeypatch, [FillLost("slice 3 of /k could not be joined")])
    held = _Held()
    tx = _tx()
    tx.ready[3] = held
    asyncio.run(steps.run(None, tx))  # type: ignore[arg-type]
    assert walked == ["step", "lookup", "step"]
    assert tx.restarted and held.closed and tx.ready == {}
    assert tx.meta is None and tx.flight is None and tx.verdict is Verdict.MISS


@pytest.mark.parametrize(("failures", "responded"), [
    ([FillLost("lost"), FillLost("lost again")], False),  # once per request
    ([FillAborted("integrity check failed: body SHA-256 ...")], False),  # the bytes: a 502
    ([FillLost("lost")], True),  # the head is out: cut short, never a second head
], ids=["lost-twice", "failed-fill", "after-the-head"])
def test_anything_else_is_the_answers_error(monkeypatch: pytest.MonkeyPatch,
                                            failures: list[BaseException],
                                            responded: bool) -> None:
    last = failures[-1]
    _loop_with(monkeypatch, failures, responded)
    with pytest.raises(FillAborted) as raised:
        asyncio.run(steps.run(None, _tx()))  # type: ignore[arg-type]
    assert raised.value is last


def test_a_join_that_loses_every_claim_is_a_lost_slice(tmp_path: Path) -> None:
    """The other worker takes the claim between each look and ours (and is done with it
    before the next look): after `JOIN_ATTEMPTS` the join gives up with `FillLost`."""
    coalescer = Coalescer(CacheStore(tmp_path / "cache", 1 << 30), 5.0)
    leads: list[int] = []

    def lead(index: int) -> None:
        leads.append(index)  # the claim was taken elsewhere: no flight of ours

    with pytest.raises(FillLost):
        asyncio.run(coalescer.join("/k", 2, "v1", lead))
    assert leads == [2] * JOIN_ATTEMPTS
