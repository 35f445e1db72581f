"""The metrics tick as one background task (reconcile/ticker.py), started and stopped with the operator;
it ticks only in the leader (handlers/leader.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from greenserve.cluster.cache import CACHE
from greenserve.handlers.leader import leading
from greenserve.reconcile.loop import LoopDeps
from greenserve.reconcile.ticker import Ticker

log = logging.getLogger(__name__)


#: A tick that overruns its interval is followed after this share of the interval, not at once: the
#: rest of the operator (watch events, spec changes) gets the event loop between two ticks.
OVERRUN_GAP = 0.2


async def _loop(
    ticker: Ticker,
    interval_s: float,
    memo: MutableMapping[str, Any],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Ticks `interval_s` apart, start to start: the interval is the cadence of scale decisions however
    long a tick takes (at 1,000 ModelServices on 2 cores an idle tick took about 5 s and a loaded one
    up to 15 s; sleeping the whole interval after each made the decisions come every 20-30 s). Ticks
    never overlap."""
    next_at = clock() + interval_s
    while True:
        # First sleep, then tick: kopf's watches fill the cache meanwhile.
        await sleep(max(0.0, next_at - clock()))
        started = clock()
        try:
            if leading(memo):
                await ticker.tick(time.time())
        except asyncio.CancelledError:
            raise
        except Exception:  # one bad tick must not end the loop; the next starts from the caches again
            log.exception("metrics tick failed")
        next_at = max(started + interval_s, clock() + OVERRUN_GAP * interval_s)


async def start(memo: MutableMapping[str, Any]) -> None:
    deps: LoopDeps = memo["loop"]
    CACHE.enabled = True
    consolidator = memo.get("consolidator")
    ticker = Ticker(deps, CACHE, view=consolidator.view if consolidator is not None else None)
    memo["ticker"] = ticker
    memo["ticker_task"] = asyncio.create_task(_loop(ticker, max(1.0, deps.config.reconcile_interval_s), memo))


async def stop(memo: MutableMapping[str, Any]) -> None:
    task = memo.get("ticker_task")
    if isinstance(task, asyncio.Task):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
