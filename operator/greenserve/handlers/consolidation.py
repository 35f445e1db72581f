"""The cluster-wide consolidation loop: one task, active only in the leader (handlers/leader.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import MutableMapping
from typing import Any

from greenserve.handlers.leader import leading
from greenserve.reconcile.consolidator import Consolidator
from greenserve.reconcile.loop import LoopDeps

log = logging.getLogger(__name__)


async def _loop(deps: LoopDeps, consolidator: Consolidator, memo: MutableMapping[str, Any]) -> None:
    interval = max(1.0, deps.config.consolidation_interval_s / 3)
    while True:
        try:
            if leading(memo):
                await consolidator.run_once(time.time())
        except asyncio.CancelledError:
            raise
        except Exception:  # one bad pass must not end the loop; the next pass starts from the live state
            log.exception("consolidation pass failed")
        await asyncio.sleep(interval)


async def start(memo: MutableMapping[str, Any]) -> None:
    """Called from startup.configure, after the shared dependencies exist."""
    deps: LoopDeps = memo["loop"]
    if not deps.config.consolidation_enabled:
        log.info("consolidation disabled by configuration")
        return
    consolidator = Consolidator(deps.kube, deps.config, metrics=deps.metrics)
    memo["consolidator"] = consolidator
    memo["consolidation_task"] = asyncio.create_task(_loop(deps, consolidator, memo))


async def stop(memo: MutableMapping[str, Any]) -> None:
    task = memo.get("consolidation_task")
    if isinstance(task, asyncio.Task):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
