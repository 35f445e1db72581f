"""The leader Lease (cluster/lease.py, handlers/leader.py) between two operators on one in-memory API
(tests/support/fake_kube.py) with a fake monotonic clock: one leads at a time, a renew is a single PUT,
a holder that stops renewing stops leading before anyone else may take over, and a release hands over
at once."""

from __future__ import annotations

import datetime as dt

from greenserve.cluster.client import LEASES
from greenserve.cluster.lease import LeaseLock
from greenserve.handlers import leader
from support.fake_kube import FakeKube

NS = "greenserve"
T0 = dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def pair(kube: FakeKube, clock: Clock) -> tuple[LeaseLock, LeaseLock]:
    def lock(who: str) -> LeaseLock:
        return LeaseLock(kube, leader.LEASE_NAME, NS, who, leader.LEASE_DURATION_S, clock=clock)

    return lock("a"), lock("b")


async def test_one_leads_and_a_renew_is_one_put() -> None:
    kube, clock = FakeKube(), Clock()
    a, b = pair(kube, clock)
    assert await a.try_acquire(T0) and a.held()
    assert not await b.try_acquire(T0) and not b.held()
    kube.calls.clear()
    clock.t += 5
    assert await a.try_acquire(T0 + dt.timedelta(seconds=5)) and a.held()
    assert kube.calls == [("put", "leases", leader.LEASE_NAME)]
    stored = kube.peek(LEASES, leader.LEASE_NAME, NS)
    assert stored is not None and stored["spec"]["holderIdentity"] == "a"
    assert stored["spec"]["renewTime"].startswith("2026-12-02T09:00:05")


async def test_a_holder_that_stops_renewing_stops_leading_before_it_can_be_taken() -> None:
    kube, clock = FakeKube(), Clock()
    a, b = pair(kube, clock)
    assert await a.try_acquire(T0)
    # No renew (the API server was away, or the process stalled): a stops counting itself leader at the
    # renew deadline, two thirds of the duration, while b must wait out the whole duration.
    clock.t += leader.LEASE_DURATION_S * 2 / 3 + 0.1
    assert not a.held()
    assert not await b.try_acquire(T0 + dt.timedelta(seconds=leader.LEASE_DURATION_S - 1))
    assert await b.try_acquire(T0 + dt.timedelta(seconds=leader.LEASE_DURATION_S + 1)) and b.held()
    # a comes back: its renew from the old resourceVersion conflicts, and a fresh read finds b leading.
    assert not await a.try_acquire(T0 + dt.timedelta(seconds=leader.LEASE_DURATION_S + 2))
    assert not a.held() and b.held()


async def test_release_hands_over_at_once() -> None:
    kube, clock = FakeKube(), Clock()
    a, b = pair(kube, clock)
    assert await a.try_acquire(T0)
    await a.release()
    assert not a.held()
    assert await b.try_acquire(T0 + dt.timedelta(seconds=1)) and b.held()


async def test_the_loops_follow_the_lease() -> None:
    kube, clock = FakeKube(), Clock()
    a, b = pair(kube, clock)
    memo_a: dict[str, object] = {"leader": a}
    memo_b: dict[str, object] = {"leader": b}
    assert not leader.leading(memo_a) and not leader.leading({})
    await a.try_acquire(T0)
    await b.try_acquire(T0)
    assert leader.leading(memo_a) and not leader.leading(memo_b)
