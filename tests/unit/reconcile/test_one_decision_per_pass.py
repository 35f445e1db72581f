"""A metrics tick that acts decides once: the step under the lock reuses the tick's decision when the
live ModelService is the version the tick decided on, so the fleet's price is set once per pass too."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from greenserve.api import constants as c
from greenserve.cluster.cache import CACHE
from greenserve.cluster.client import MODELSERVICES
from greenserve.config import OperatorConfig
from greenserve.metrics.types import PodRef, ServiceMetrics
from greenserve.reconcile import autoscale
from greenserve.reconcile.loop import LoopDeps
from greenserve.reconcile.ticker import Ticker
from support.fake_kube import FakeKube

NS, NAME = "ml", "svc"
T0 = 2_000_000.0


# Each test starts from an empty, enabled cache (conftest.py).
pytestmark = pytest.mark.usefixtures("fresh_cache")


class Source:
    def __init__(self) -> None:
        self.rps, self.now = 10.0, T0

    async def fleet_metrics(
        self, services: Mapping[tuple[str, str], Sequence[PodRef]]
    ) -> dict[tuple[str, str], ServiceMetrics]:
        return {
            (ns, name): ServiceMetrics(
                ns,
                name,
                power_w=60.0,
                energy_j=1000.0,
                energy_window_j=600.0,
                requests_per_s=self.rps,
                gpu_utilization=0.1,
                inflight_requests=0.0,
                rate_history=(self.rps, self.rps, self.rps),
                replicas_reporting=1,
                gpus=1,
                window_s=60.0,
                sampled_at=self.now,
                stale=False,
            )
            for ns, name in services
        }

    async def close(self) -> None:
        return None


def msvc() -> dict[str, Any]:
    return {
        "apiVersion": f"{c.GROUP}/{c.VERSION}",
        "kind": "ModelService",
        "metadata": {"name": NAME, "namespace": NS, "generation": 1, "uid": "u1"},
        "spec": {
            "model": {"name": "m", "storageUri": "pvc://models/m"},
            "scaling": {"minReplicas": 1, "maxReplicas": 8, "target": 50},
            "slo": {"latencyP95Ms": 500},
        },
    }


async def test_a_tick_that_acts_decides_and_prices_the_fleet_once(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = FakeKube()
    kube.put(MODELSERVICES, msvc())
    source = Source()
    deps = LoopDeps(kube=kube, config=OperatorConfig(), source=source, clock=lambda: source.now)  # type: ignore[arg-type]
    ticker = Ticker(deps, CACHE)
    decisions: list[float] = []
    prices: list[float] = []
    decide, price = autoscale.decide, autoscale.FleetBook.price

    def counted_decide(*args: Any, **kwargs: Any) -> autoscale.Decision:
        decisions.append(source.now)
        return decide(*args, **kwargs)

    def counted_price(self: autoscale.FleetBook, *args: Any, **kwargs: Any) -> float:
        prices.append(source.now)
        return price(self, *args, **kwargs)

    monkeypatch.setattr(autoscale, "decide", counted_decide)
    monkeypatch.setattr(autoscale.FleetBook, "price", counted_price)
    for i, rps in enumerate((10.0, 300.0, 600.0)):  # every tick changes the decision: each one acts
        body = kube.peek(MODELSERVICES, NAME, NS)
        assert body is not None
        CACHE.observe_msvc(body)  # the watch caught up with the last write
        source.rps, source.now = rps, T0 + 15 * i
        kube.calls.clear()
        await ticker.tick(source.now)
        assert ("patch/status", "modelservices", NAME) in kube.calls, f"tick {i} did not act"
    assert decisions == [T0, T0 + 15, T0 + 30]
    assert prices == [T0, T0 + 15, T0 + 30]
