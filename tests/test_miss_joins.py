"""The miss step joining a flight another request leads (`steps.miss`): the request follows
it, whatever it led before. A request back from another look (a wait for another worker, a
flight that ended) kept ``led`` from the flight it had led, joined another request's flight
as if it led that one too, skipped the follower's Vary check (`steps.fetch`), and was
answered with another variant's bytes (edge -> shield, 2 workers, Vary without validators:
~1 in 250 answers under an outside load run). Unit test of the step, the node stubbed."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from edgeproxy.cache import steps


def _node(running: Any, collapsed: list[str]) -> Any:
    counter = SimpleNamespace(inc=lambda: collapsed.append("collapsed"))
    return SimpleNamespace(slice_size=1024, tier="edge",
                           coalescer=SimpleNamespace(flight_for=lambda key: running),
                           metrics=SimpleNamespace(collapsed=SimpleNamespace(
                               labels=lambda tier: counter)))


@pytest.mark.parametrize("led_before", [True, False], ids=["led-before", "followed-before"])
def test_a_request_that_joins_a_running_flight_follows_it(led_before: bool) -> None:
    earlier, running = object(), object()
    collapsed: list[str] = []
    req = SimpleNamespace(key="/k", headers={"x-variant": "b"}, first_byte=lambda length: 0)
    tx: Any = SimpleNamespace(req=req, stale=None, known=None, whole=False, led=led_before,
                              flight=earlier)
    step = asyncio.run(steps.miss(_node(running, collapsed), tx))
    assert step is steps.fetch
    assert tx.flight is running and tx.led is False  # a follower: `fetch` checks its Vary
    assert collapsed == ["collapsed"]
