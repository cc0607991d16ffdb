"""`HeadDeadline`: one lazy timer per connection, firing only at the latest armed time.

On a loop with a clock of its own (no real sleeps, so a loaded machine cannot make it flaky);
the protocols' behaviour on real sockets is in `test_fault_slowloris` and `test_guard`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgeproxy.headtimeout import HeadDeadline


class _Handle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class _Clock:
    """The loop's clock and timers, as `HeadDeadline` uses them, with time moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.handles: list[_Handle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle(when, callback)
        self.handles.append(handle)
        return handle

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Handle:
        return self.call_at(self.now + delay, callback)

    def live(self) -> list[_Handle]:
        return [h for h in self.handles if not h.cancelled and h.callback is not None]

    def advance(self, seconds: float) -> None:
        """Move the clock, running each timer that comes due, in order."""
        end = self.now + seconds
        while True:
            due = sorted((h for h in self.live() if h.when <= end), key=lambda h: h.when)
            if not due:
                break
            handle = due[0]
            self.now = max(self.now, handle.when)
            callback, handle.callback = handle.callback, None  # type: ignore[assignment]
            callback()
        self.now = end


def _deadline(clock: _Clock, fired: list[float]) -> HeadDeadline:
    loop: Any = clock
    return HeadDeadline(loop, 10.0, lambda: fired.append(clock.now))


def test_rearming_moves_the_deadline_without_a_new_timer() -> None:
    clock, fired = _Clock(), list[float]()
    deadline = _deadline(clock, fired)
    deadline.arm()  # t=0: the first head is due at 10
    clock.advance(4)
    deadline.cancel()  # a head arrived
    deadline.arm()  # its answer ended at 4: the next head is due at 14
    assert len(clock.handles) == 1  # no timer made per request
    clock.advance(7)  # t=11: the timer woke at 10 and slept on
    assert fired == [] and len(clock.live()) == 1
    clock.advance(4)  # t=15
    assert fired == [14.0]  # once, at the latest armed time
    clock.advance(30)
    assert fired == [14.0] and clock.live() == []


def test_a_cancelled_deadline_never_fires_and_close_drops_the_timer() -> None:
    clock, fired = _Clock(), list[float]()
    deadline = _deadline(clock, fired)
    deadline.arm()
    deadline.cancel()
    clock.advance(30)
    assert fired == [] and deadline.timer is None  # woke, found nothing awaited
    deadline.arm()  # t=30: a timer of its own again, due at 40
    deadline.close()  # the connection is gone
    assert deadline.timer is None and clock.live() == []
    clock.advance(30)
    assert fired == []
    deadline.arm()  # t=60: due at 70
    clock.advance(10)
    assert fired == [70.0]


def test_idle_bound_asks_first_and_the_head_deadline_still_holds() -> None:
    """Between requests the keep-alive bound comes first: ``on_idle`` closes an idle
    connection (and nothing else fires); one whose next head has begun is left to the head
    deadline."""
    clock, fired, asked = _Clock(), list[float](), list[float]()

    def idle(closes: bool) -> Any:
        def on_idle() -> bool:
            asked.append(clock.now)
            return closes
        return on_idle

    deadline = HeadDeadline(clock, 10.0, lambda: fired.append(clock.now), idle(True))  # type: ignore[arg-type]
    deadline.arm(idle=3.0)  # an answer ended at 0
    clock.advance(20)
    assert asked == [3.0] and fired == [] and clock.live() == []

    deadline = HeadDeadline(clock, 10.0, lambda: fired.append(clock.now), idle(False))  # type: ignore[arg-type]
    deadline.arm(idle=3.0)  # t=20: bytes of a head will have come by 23
    clock.advance(20)
    assert asked == [3.0, 23.0] and fired == [30.0]


def test_a_shorter_bound_after_a_longer_one_takes_a_timer_that_fires_in_time() -> None:
    clock, fired, asked = _Clock(), list[float](), list[float]()

    def closes() -> bool:
        asked.append(clock.now)
        return True

    deadline = HeadDeadline(clock, 10.0, lambda: fired.append(clock.now), closes)  # type: ignore[arg-type]
    deadline.arm()  # connection opened at 0: head due at 10, a timer at 10
    clock.advance(1)
    deadline.cancel()
    deadline.arm(idle=3.0)  # t=1: the idle bound is at 4, before the timer's 10
    clock.advance(5)
    assert asked == [4.0] and fired == []
    deadline.arm(idle=3.0)  # t=6
    deadline.arm(idle=3.0)  # re-armed at once: still one timer
    assert len(clock.live()) == 1
    clock.advance(1)
    deadline.arm(idle=3.0)  # t=7: the timer at 9 wakes, sleeps on to 10
    clock.advance(10)
    assert asked == [4.0, 10.0] and fired == []


def test_postponed_from_on_idle_both_bounds_count_from_then() -> None:
    """A client still reading the last answer: ``on_idle`` postpones, and is asked again a
    keep-alive bound later; the head deadline moves with it; one timer throughout."""
    clock, fired, asked = _Clock(), list[float](), list[float]()
    deadline: HeadDeadline

    def on_idle() -> bool:
        asked.append(clock.now)
        if len(asked) < 3:
            deadline.postpone(3.0)  # still taking bytes
            return False
        return True  # idle now: closed

    deadline = HeadDeadline(clock, 10.0, lambda: fired.append(clock.now), on_idle)  # type: ignore[arg-type]
    deadline.arm(idle=3.0)
    clock.advance(30)
    assert asked == [3.0, 6.0, 9.0] and fired == [] and clock.live() == []
