"""The metrics tick as one background task (reconcile/ticker.py), started and stopped with the operator;
it ticks only in the leader (handlers/leader.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import MutableMapping
from typing import Any

from greenserve.cluster.cache import CACHE
from greenserve.handlers.leader import leading
from greenserve.reconcile.loop import LoopDeps
from greenserve.reconcile.ticker import Ticker

log = logging.getLogger(__name__)


async def _loop(ticker: Ticker, interval_s: float, memo: MutableMapping[str, Any]) -> None:
    while True:
        # First sleep, then tick: kopf's watches fill the cache meanwhile.
        await asyncio.sleep(interval_s)
        if not leading(memo):
            continue
        try:
            await ticker.tick(time.time())
        except asyncio.CancelledError:
            raise
        except Exception:  # one bad tick must not end the loop; the next starts from the caches again
            log.exception("metrics tick failed")


async def start(memo: MutableMapping[str, Any]) -> None:
    deps: LoopDeps = memo["loop"]
    CACHE.enabled = True
    ticker = Ticker(deps, CACHE)
    memo["ticker"] = ticker
    memo["ticker_task"] = asyncio.create_task(_loop(ticker, max(1.0, deps.config.reconcile_interval_s), memo))


async def stop(memo: MutableMapping[str, Any]) -> None:
    task = memo.get("ticker_task")
    if isinstance(task, asyncio.Task):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
