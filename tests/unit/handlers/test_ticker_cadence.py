"""The metrics tick's cadence (handlers/ticker.py `_loop`): start to start, whatever a tick takes."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from greenserve.cluster.lease import LeaseLock
from greenserve.handlers import ticker


class Leading(LeaseLock):
    def __init__(self) -> None:  # no API client: held() is all the loop asks
        pass

    def held(self) -> bool:
        return True


class Clock:
    """Virtual time: sleeping and ticking move it; nothing waits for real."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


class SlowTicker:
    """Each tick takes the next of `durations` (then fails, with `fail`); with none left it stops."""

    def __init__(self, clock: Clock, durations: list[float], fail: bool = False) -> None:
        self.clock, self.durations, self.fail, self.starts = clock, durations, fail, list[float]()

    async def tick(self, _now: float) -> None:
        self.starts.append(self.clock.now)
        if not self.durations:
            raise asyncio.CancelledError  # the operator stopping: ends the loop
        self.clock.now += self.durations.pop(0)
        if self.fail:
            raise RuntimeError("metrics source down")


async def starts(durations: list[float], interval: float = 15.0, fail: bool = False) -> list[float]:
    clock = Clock()
    slow = SlowTicker(clock, durations, fail)
    memo = kopf.Memo()
    memo["leader"] = Leading()
    with pytest.raises(asyncio.CancelledError):
        await ticker._loop(slow, interval, memo, sleep=clock.sleep, clock=clock)  # type: ignore[arg-type]
    return slow.starts


async def test_ticks_start_an_interval_apart_however_long_each_takes() -> None:
    # Sleeping the whole interval after each tick starts them at 15, 35, 52, 73 (shown).
    assert await starts([5.0, 2.0, 6.0]) == [15.0, 30.0, 45.0, 60.0]


async def test_a_tick_that_overruns_is_followed_after_a_short_gap_never_overlapped() -> None:
    # The second tick takes 20 s: the third starts 3 s (a fifth of the interval) after it ended.
    assert await starts([1.0, 20.0, 1.0]) == [15.0, 30.0, 53.0, 68.0]


async def test_a_failing_tick_keeps_the_cadence(caplog: Any) -> None:
    assert await starts([4.0, 4.0], interval=10.0, fail=True) == [10.0, 20.0, 30.0]
    assert "metrics tick failed" in caplog.text
