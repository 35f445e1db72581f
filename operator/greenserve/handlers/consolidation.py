"""The cluster-wide consolidation loop: one task, active only in the leader (handlers/leader.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import MutableMapping
from typing import Any

from greenserve.cluster.cache import CACHE
from greenserve.cluster.informer import WatchedView, gpu_informers
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
    # Passes read the watch-fed view, not LISTs: ModelServices from kopf's watch, GPU pods and nodes
    # from two cluster-wide informers (cluster/informer.py).
    pods, nodes = gpu_informers(deps.kube)
    view = WatchedView(CACHE, pods, nodes)
    consolidator = Consolidator(deps.kube, deps.config, metrics=deps.metrics, view=view)
    memo["consolidator"] = consolidator
    memo["consolidation_tasks"] = [
        asyncio.create_task(pods.run()),
        asyncio.create_task(nodes.run()),
        asyncio.create_task(_loop(deps, consolidator, memo)),
    ]


async def stop(memo: MutableMapping[str, Any]) -> None:
    for task in memo.get("consolidation_tasks") or []:
        if isinstance(task, asyncio.Task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
