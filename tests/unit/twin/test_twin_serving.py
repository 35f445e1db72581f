"""The digital twin's serving model (pure: pod and node objects in, metrics out; no API server)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from greenserve import contract as k
from greenserve.api import constants as c
from harness.twin import Schedule, Twin, TwinCollector

SVC = "ml/svc"
CAP = {SVC: 100.0}  # req/s per replica at 100% utilization


def pod(name: str, node: str = "n1") -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ml", "name": name, "labels": {c.LABEL_MODELSERVICE: "svc"}},
        "spec": {
            "nodeName": node,
            "containers": [{"resources": {"limits": {c.GPU_RESOURCE: "1"}}}],
            "nodeSelector": {c.GPU_PRODUCT_LABEL: "NVIDIA-L4"},
        },
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


NODES = [
    {
        "metadata": {"name": "n1", "labels": {c.GPU_PRODUCT_LABEL: "NVIDIA-L4"}},
        "status": {"allocatable": {c.GPU_RESOURCE: "8"}},
    }
]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def run(twin: Twin, clock: Clock, pods: list[dict[str, Any]], seconds: int) -> None:
    for _ in range(seconds):
        twin.step(pods, NODES, CAP)
        clock.t += 1.0
    twin.step(pods, NODES, CAP)


def test_without_queueing_every_request_is_served_at_once() -> None:
    clock = Clock()
    twin = Twin({SVC: Schedule((0.0,), (300.0,))}, clock=clock)
    run(twin, clock, [pod("a")], 10)
    st = twin.pods["ml/a"]
    assert st.requests == pytest.approx(3000.0)  # 3x its capacity, all counted
    assert st.utilization == 1.0 and st.inflight == pytest.approx(3.0)


def test_queueing_serves_capacity_and_holds_the_rest_in_flight() -> None:
    clock = Clock()
    twin = Twin({SVC: Schedule((0.0,), (300.0,))}, clock=clock, queueing=True, max_wait_s=60.0)
    pods = [pod("a"), pod("b")]
    run(twin, clock, pods, 10)
    a, b = twin.pods["ml/a"], twin.pods["ml/b"]
    # Two replicas complete 200 req/s; 100 req/s more arrive than they serve, for 10 s.
    assert a.requests + b.requests == pytest.approx(2000.0)
    assert twin.queues[SVC] == pytest.approx(1000.0)
    # In flight per pod: half the queue plus one request in service (Little's law at full load).
    assert a.inflight == pytest.approx(501.0)
    # Two more replicas: 400 req/s of capacity drain the queue at 100 req/s, in 10 s.
    pods += [pod("c"), pod("d")]
    run(twin, clock, pods, 15)
    assert twin.queues[SVC] == pytest.approx(0.0)
    assert twin.pods["ml/d"].inflight == pytest.approx(0.75)  # 300 req/s over 4 x 100: 0.75 in service
    assert twin.cluster.dropped_requests == 0.0


def test_clients_give_up_beyond_the_maximum_wait() -> None:
    clock = Clock()
    twin = Twin({SVC: Schedule((0.0,), (200.0,))}, clock=clock, queueing=True, max_wait_s=5.0)
    run(twin, clock, [pod("a")], 20)
    assert twin.queues[SVC] == pytest.approx(500.0)  # 5 s of the replica's 100 req/s
    assert twin.cluster.dropped_requests == pytest.approx(20 * 100.0 - 500.0)
    # The load stopping does not drop the queue: the replica works it off.
    twin.schedules = {SVC: Schedule((0.0,), (0.0,))}
    run(twin, clock, [pod("a")], 6)
    assert twin.queues[SVC] == pytest.approx(0.0) and twin.pods["ml/a"].requests > 2000.0
    assert twin.cluster.dropped_requests == pytest.approx(1500.0)


def test_in_flight_gauge_is_exported_under_the_agents_name() -> None:
    clock = Clock()
    twin = Twin({SVC: Schedule((0.0,), (50.0,))}, clock=clock, queueing=True)
    run(twin, clock, [pod("a")], 3)
    registry = CollectorRegistry()
    registry.register(TwinCollector(twin))
    text = generate_latest(registry).decode()
    line = next(x for x in text.splitlines() if x.startswith(k.AGENT_INFLIGHT.name + "{"))
    assert 'pod="a"' in line and float(line.rsplit(" ", 1)[1]) == pytest.approx(0.5)
    assert "greenserve_twin_requests_dropped_total 0.0" in text
