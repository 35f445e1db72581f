"""The per-ModelService reconcile lock: mutual exclusion per name, independence across names, and no
entry left behind once nobody holds or awaits it."""

from __future__ import annotations

import asyncio

from greenserve.reconcile import modelservice as rec


async def test_one_task_at_a_time_per_modelservice_and_no_leftover_entries() -> None:
    inside: dict[str, int] = {"a": 0, "b": 0}
    peak: dict[str, int] = {"a": 0, "b": 0}

    async def step(name: str) -> None:
        async with rec.locked("ns", name):
            inside[name] += 1
            peak[name] = max(peak[name], inside[name])
            await asyncio.sleep(0.01)
            inside[name] -= 1

    both = asyncio.gather(*(step(n) for n in ("a", "b") for _ in range(5)))
    await asyncio.sleep(0.005)
    assert rec.locks_in_use() == 2  # one entry per ModelService with waiters, not per task
    await both
    assert peak == {"a": 1, "b": 1}
    assert rec.locks_in_use() == 0


async def test_an_error_inside_releases_the_entry() -> None:
    try:
        async with rec.locked("ns", "boom"):
            raise RuntimeError("reconcile failed")
    except RuntimeError:
        pass
    assert rec.locks_in_use() == 0
    async with rec.locked("ns", "boom"):  # and the next reconcile can take it
        assert rec.locks_in_use() == 1
