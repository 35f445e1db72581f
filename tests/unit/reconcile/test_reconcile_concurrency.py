"""A bulk create or a restart of many ModelServices reconciles at most `MAX_CONCURRENT` at once: the others
wait holding nothing but their event, so the operator's memory and the API server's queue stay bounded
(tests/harness/scale_bench.py measures the peak RSS at N = 1,000)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

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


async def test_a_change_gets_the_next_slot_before_the_ticks_bookkeeping() -> None:
    """The metrics tick's first looks at a bulk-created fleet queue for the slots all at once; a replica
    becoming Ready (an owned Deployment's event) must not wait behind all of them to show in status."""
    kube = FakeKube()
    bodies = [kube.put(MODELSERVICES, {"metadata": {"name": f"m{i}", "namespace": "ns"}}) for i in range(N)]
    change = kube.put(MODELSERVICES, {"metadata": {"name": "ready", "namespace": "ns"}})
    order: list[str] = []
    release, full = asyncio.Event(), asyncio.Event()

    async def step(live: Mapping[str, Any]) -> rec.Outcome:
        order.append(live["metadata"]["name"])
        if len(order) == rec.MAX_CONCURRENT:
            full.set()
        await release.wait()
        return rec.Outcome(True)

    tick = [asyncio.create_task(rec.under_lock(kube, b, step, rec.BOOKKEEPING)) for b in bodies]  # type: ignore[arg-type]
    await full.wait()  # every slot taken, the rest of the tick waiting
    urgent = asyncio.create_task(rec.under_lock(kube, change, step))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(urgent, *tick)
    assert order.index("ready") == rec.MAX_CONCURRENT  # the first slot to come free
    assert len(order) == N + 1


async def test_what_already_happened_is_reported_before_the_next_creation() -> None:
    """A replica that became Ready is written before creations waiting for a slot (each of which is ten
    requests), and creations before the tick's bookkeeping."""
    slots = rec.Slots(1)
    order: list[str] = []

    async def wait(name: str, priority: int) -> None:
        async with slots.hold(priority):
            order.append(name)

    async with slots.hold():
        tasks = [
            asyncio.create_task(wait("tick", rec.BOOKKEEPING)),
            asyncio.create_task(wait("create-1", rec.CHANGE)),
            asyncio.create_task(wait("create-2", rec.CHANGE)),
            asyncio.create_task(wait("ready", rec.OBSERVED)),
        ]
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["ready", "create-1", "create-2", "tick"]


async def test_a_cancelled_waiter_gives_its_slot_on() -> None:
    slots = rec.Slots(1)
    async with slots.hold():
        waiting = asyncio.create_task(_hold(slots, rec.BOOKKEEPING))
        after = asyncio.create_task(_hold(slots, rec.BOOKKEEPING))
        await asyncio.sleep(0)
        waiting.cancel()
    await asyncio.wait_for(after, 1.0)  # not stuck behind the cancelled one
    assert waiting.cancelled()


async def _hold(slots: rec.Slots, priority: int) -> None:
    async with slots.hold(priority):
        await asyncio.sleep(0)


@pytest.mark.parametrize("priority", [rec.BOOKKEEPING, rec.CHANGE])
async def test_the_tick_never_holds_a_lock_a_refresh_waits_for(priority: int) -> None:
    """The tick's look at a ModelService waits for a slot behind others (creations, at a bulk create);
    it must not hold that ModelService's lock meanwhile, or the refresh of a replica becoming Ready
    waits behind it (minutes at a bulk create). A look that finds the ModelService busy is skipped."""
    kube = FakeKube()
    busy = [kube.put(MODELSERVICES, {"metadata": {"name": f"c{i}", "namespace": "ns"}}) for i in range(N)]
    target = kube.put(MODELSERVICES, {"metadata": {"name": "x", "namespace": "ns"}})
    order: list[str] = []
    release, full = asyncio.Event(), asyncio.Event()

    async def step(live: Mapping[str, Any]) -> rec.Outcome:
        order.append(live["metadata"]["name"])
        if len(order) == rec.MAX_CONCURRENT:
            full.set()
        await release.wait()
        return rec.Outcome(True)

    creations = [asyncio.create_task(rec.under_lock(kube, b, step)) for b in busy]  # type: ignore[arg-type]
    await full.wait()  # every slot taken, creations queued
    look = asyncio.create_task(rec.under_lock(kube, target, step, priority, skip_busy=True))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    ready = asyncio.create_task(rec.under_lock(kube, target, step, rec.OBSERVED))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    release.set()
    outcomes = await asyncio.gather(look, ready, *creations)
    assert order.index("x") == rec.MAX_CONCURRENT  # the refresh took the first free slot
    assert order.count("x") == 2 or outcomes[0].reason == rec.BUSY
