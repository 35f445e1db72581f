"""The cluster-wide consolidation loop: one background task, active only while holding the Lease."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import MutableMapping
from typing import Any

from greenserve.cluster.lease import LeaseLock
from greenserve.reconcile.consolidator import Consolidator
from greenserve.reconcile.loop import LoopDeps

log = logging.getLogger(__name__)
LEASE_NAME = "greenserve-consolidation"


async def _loop(deps: LoopDeps, consolidator: Consolidator, lock: LeaseLock) -> None:
    interval = max(1.0, deps.config.consolidation_interval_s / 3)
    while True:
        try:
            if await lock.try_acquire():
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
    identity = f"{socket.gethostname()}-{os.getpid()}"
    lock = LeaseLock(
        deps.kube,
        LEASE_NAME,
        deps.config.lease_namespace,
        identity,
        duration_s=int(max(15, deps.config.consolidation_interval_s * 2)),
    )
    consolidator = Consolidator(deps.kube, deps.config, metrics=deps.metrics)
    memo["consolidator"] = consolidator
    memo["consolidation_task"] = asyncio.create_task(_loop(deps, consolidator, lock))
    memo["consolidation_lock"] = lock


async def stop(memo: MutableMapping[str, Any]) -> None:
    task = memo.get("consolidation_task")
    if isinstance(task, asyncio.Task):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    lock = memo.get("consolidation_lock")
    if isinstance(lock, LeaseLock):
        with contextlib.suppress(Exception):
            await lock.release()
