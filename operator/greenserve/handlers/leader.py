"""One Lease held by one operator at a time: the fleet-wide loops (the metrics tick, the consolidation
pass) run only in the operator that holds it (cluster/lease.py says why kopf's peering is not enough).

The Lease is renewed by a task of its own, every third of its duration, so a long consolidation pass
cannot let it lapse. Its identity is the pod's name where the chart sets POD_NAME: a container restarted in
the same pod takes its Lease back at once instead of waiting the duration out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import MutableMapping
from typing import Any

from greenserve.cluster.lease import LeaseLock
from greenserve.reconcile.loop import LoopDeps

log = logging.getLogger(__name__)
LEASE_NAME = "greenserve-leader"
# client-go's defaults for controllers: a 15 s lease, renewed well inside it.
LEASE_DURATION_S = 15


def identity() -> str:
    pod = os.environ.get("POD_NAME")
    return pod if pod else f"{socket.gethostname()}-{os.getpid()}"


def leader(memo: MutableMapping[str, Any]) -> LeaseLock | None:
    lock = memo.get("leader")
    return lock if isinstance(lock, LeaseLock) else None


def leading(memo: MutableMapping[str, Any]) -> bool:
    lock = leader(memo)
    return lock is not None and lock.held()


async def _renew(lock: LeaseLock) -> None:
    was = False
    while True:
        try:
            now = await lock.try_acquire()
        except asyncio.CancelledError:
            raise
        except Exception:  # the API server away: not leading until a renew succeeds again
            log.exception("leader lease renewal failed")
            now = False
        if now != was:
            log.info("leader lease %s: %s", LEASE_NAME, "acquired" if now else "not held")
            was = now
        await asyncio.sleep(LEASE_DURATION_S / 3)


async def start(memo: MutableMapping[str, Any]) -> None:
    deps: LoopDeps = memo["loop"]
    lock = LeaseLock(deps.kube, LEASE_NAME, deps.config.lease_namespace, identity(), LEASE_DURATION_S)
    memo["leader"] = lock
    memo["leader_task"] = asyncio.create_task(_renew(lock))


async def stop(memo: MutableMapping[str, Any]) -> None:
    task = memo.get("leader_task")
    if isinstance(task, asyncio.Task):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    lock = leader(memo)
    if lock is not None:
        with contextlib.suppress(Exception):  # hand over at once; otherwise the next one waits 15 s
            await lock.release()
