"""A bulk create or a restart of many ModelServices reconciles at most `MAX_CONCURRENT` at once: the others
wait holding nothing but their event, so the operator's memory and the API server's queue stay bounded
(tests/harness/scale_bench.py measures the peak RSS at N = 1,000)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from greenserve.cluster.client import MODELSERVICES
from greenserve.reconcile import modelservice as rec
from support.fake_kube import FakeKube

N = 4 * rec.MAX_CONCURRENT


async def test_at_most_max_concurrent_reconciles_work_at_once() -> None:
    kube = FakeKube()
    bodies = [kube.put(MODELSERVICES, {"metadata": {"name": f"m{i}", "namespace": "ns"}}) for i in range(N)]
    working = peak = done = 0

    async def step(live: Mapping[str, Any]) -> rec.Outcome:
        nonlocal working, peak, done
        working += 1
        peak = max(peak, working)
        await asyncio.sleep(0.01)  # its requests to the API server
        working -= 1
        done += 1
        return rec.Outcome(True)

    await asyncio.gather(*(rec.under_lock(kube, b, step) for b in bodies))  # type: ignore[arg-type]
    assert done == N
    assert peak == rec.MAX_CONCURRENT
