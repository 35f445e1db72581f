"""The consolidator's move state machine against an in-memory API (tests/support/fake_kube.py) and a fake
clock: a move completes make-before-break, the source disappearing closes it, a move times out, an operator
restarted at each state takes the same step, and a taint written by someone else survives our taint patch."""

from __future__ import annotations

from typing import Any

import pytest

from greenserve.api import constants as c
from greenserve.cluster.client import DEPLOYMENTS, EVENTS, MODELSERVICES, NODES, PODS
from greenserve.config import OperatorConfig
from greenserve.metrics.operator_metrics import OperatorMetrics
from greenserve.policy import consolidation as pc
from greenserve.reconcile.consolidator import (
    MOVE_TIMEOUT_S,
    TAINT_KEY,
    Consolidator,
    MoveRecord,
    MoveStep,
    next_step,
)
from support.fake_kube import FakeKube

NS, NAME = "ml", "svc"
T0 = 1_000_000.0
CONFIG = OperatorConfig(consolidation_interval_s=0.0)


def node(name: str, gpus: int = 8) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {c.GPU_PRODUCT_LABEL: "L4"}},
        "spec": {},
        "status": {"allocatable": {c.GPU_RESOURCE: str(gpus)}},
    }


def pod(name: str, node_name: str, ready: bool = True, svc: str = NAME) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {c.LABEL_MODELSERVICE: svc},
            "annotations": {},
            "creationTimestamp": "2020-01-01T00:00:00Z",
        },
        "spec": {"nodeName": node_name, "containers": [{"resources": {"limits": {c.GPU_RESOURCE: "1"}}}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def msvc(move: MoveRecord | None, desired: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": f"{c.GROUP}/{c.VERSION}",
        "kind": "ModelService",
        "metadata": {"name": NAME, "namespace": NS, "generation": 1, "uid": "u1"},
        "spec": {
            "model": {"name": "m", "storageUri": "pvc://models/m"},
            "scaling": {"minReplicas": 1, "maxReplicas": 4},
        },
        "status": {"desiredReplicas": desired, "move": None if move is None else move.to_status()},
    }


MOVE = MoveRecord(pod="src", from_node="a", to_node="b", started_at=T0)


def cluster(move: MoveRecord | None = MOVE, replacement_ready: bool | None = False) -> FakeKube:
    kube = FakeKube()
    for n in ("a", "b"):
        kube.put(NODES, node(n))
    kube.put(PODS, pod("src", "a"))
    if replacement_ready is not None:
        kube.put(PODS, pod("new", "b", ready=replacement_ready))
    kube.put(MODELSERVICES, msvc(move))
    return kube


def status(kube: FakeKube) -> dict[str, Any]:
    obj = kube.peek(MODELSERVICES, NAME, NS)
    assert obj is not None
    return dict(obj.get("status") or {})


def cost(kube: FakeKube, name: str) -> str | None:
    obj = kube.peek(PODS, name, NS)
    assert obj is not None
    return (obj["metadata"].get("annotations") or {}).get(c.ANN_POD_DELETION_COST)


def events(kube: FakeKube) -> list[tuple[str, str]]:
    return [(o["type"], o["reason"]) for (plural, _, _), o in kube.objects.items() if plural == EVENTS.plural]


def set_ready(kube: FakeKube, name: str) -> None:
    obj = kube.peek(PODS, name, NS)
    assert obj is not None
    obj["status"]["conditions"] = [{"type": "Ready", "status": "True"}]


async def progress(kube: FakeKube, now: float, metrics: OperatorMetrics | None = None) -> bool:
    """One pass's step for our ModelService, by a fresh Consolidator: nothing in memory carries over, as
    after an operator restart."""
    body = kube.peek(MODELSERVICES, NAME, NS)
    assert body is not None
    return await Consolidator(kube, CONFIG, metrics=metrics)._progress(body, now)


# --- the pure step function --------------------------------------------------------------------------


def test_next_step_is_make_before_break() -> None:
    src, new = pod("src", "a"), pod("new", "b", ready=False)
    assert next_step(MOVE, [src, new], 1, T0 + 1) is MoveStep.WAIT
    assert next_step(MOVE, [src, pod("new", "b")], 1, T0 + 1) is MoveStep.RETIRE
    assert next_step(MOVE, [new], 1, T0 + 1) is MoveStep.SOURCE_GONE
    assert next_step(MOVE, [src, new], 1, T0 + MOVE_TIMEOUT_S + 1) is MoveStep.TIMED_OUT
    # A terminating replica does not count as the replacement, and a terminating source is gone.
    leaving = pod("new", "b")
    leaving["metadata"]["deletionTimestamp"] = "2020-01-01T00:00:00Z"
    assert next_step(MOVE, [src, leaving], 1, T0 + 1) is MoveStep.WAIT
    gone = pod("src", "a")
    gone["metadata"]["deletionTimestamp"] = "2020-01-01T00:00:00Z"
    assert next_step(MOVE, [gone, new], 1, T0 + 1) is MoveStep.SOURCE_GONE


# --- orchestration against the in-memory API ---------------------------------------------------------


async def test_a_move_completes_only_once_the_replacement_is_ready() -> None:
    kube, metrics = cluster(), OperatorMetrics()
    assert await progress(kube, T0 + 5, metrics) is True  # replacement not Ready: keep the surge
    assert status(kube)["move"] == MOVE.to_status() and cost(kube, "src") is None
    set_ready(kube, "new")
    assert await progress(kube, T0 + 10, metrics) is False
    assert status(kube).get("move") is None
    assert cost(kube, "src") == str(pc.DRAIN_DELETION_COST)  # the ReplicaSet retires exactly the source
    assert cost(kube, "new") is None
    assert ("Normal", "ReplicaMoved") in events(kube)
    assert metrics.moves.labels(NS, NAME, "consolidation")._value.get() == 1.0
    consolidating = next(x for x in status(kube)["conditions"] if x["type"] == "Consolidating")
    assert consolidating["status"] == "False"


async def test_the_source_disappearing_closes_the_move_without_retiring_anything() -> None:
    kube = cluster()
    kube.remove(PODS, "src", NS)
    assert await progress(kube, T0 + 5) is False
    assert status(kube).get("move") is None
    assert cost(kube, "new") is None
    assert ("Normal", "ReplicaMoved") not in events(kube)


async def test_a_move_times_out_and_the_source_stays() -> None:
    kube = cluster()
    assert await progress(kube, T0 + MOVE_TIMEOUT_S - 1) is True
    assert await progress(kube, T0 + MOVE_TIMEOUT_S + 1) is False
    assert status(kube).get("move") is None
    assert cost(kube, "src") is None  # never retired without a Ready replacement
    assert ("Warning", "MoveTimedOut") in events(kube)


async def test_a_move_whose_surge_was_never_applied_applies_it() -> None:
    """The pass that wrote status.move failed before its reconcile applied the surge (kopf does not react
    to status changes): the next pass applies it, rather than wait for the move to time out."""
    kube = cluster(replacement_ready=None)
    assert kube.peek(DEPLOYMENTS, NAME, NS) is None
    assert await progress(kube, T0 + 5) is True
    dep = kube.peek(DEPLOYMENTS, NAME, NS)
    assert dep is not None and dep["spec"]["replicas"] == 2  # desired 1 + the surge
    assert status(kube)["move"] == MOVE.to_status()
    kube.calls.clear()
    kube.put(PODS, pod("new", "b", ready=False))  # the surge runs: waiting costs no write
    assert await progress(kube, T0 + 10) is True
    assert [call for call in kube.calls if call[0] not in ("get", "list")] == []


@pytest.mark.parametrize("state", ["started", "replacement_ready", "retired_not_closed"])
async def test_a_restart_at_each_state_takes_the_same_step(state: str) -> None:
    kube = cluster(replacement_ready=state != "started")
    if state == "retired_not_closed":
        # Killed after writing the source's deletion cost, before clearing status.move.
        src = kube.peek(PODS, "src", NS)
        assert src is not None
        src["metadata"]["annotations"][c.ANN_POD_DELETION_COST] = str(pc.DRAIN_DELETION_COST)
    # The restarted operator runs a whole pass: it must finish this move, never start a second one.
    await Consolidator(kube, CONFIG).run_once(T0 + 10)
    if state == "started":
        assert status(kube)["move"] == MOVE.to_status()
        assert cost(kube, "src") is None
    else:
        assert status(kube).get("move") is None
        assert cost(kube, "src") == str(pc.DRAIN_DELETION_COST)
        assert cost(kube, "new") is None
        assert [e for e in events(kube) if e[1] == "ReplicaMoved"] == [("Normal", "ReplicaMoved")]
    assert ("Normal", "ConsolidationMove") not in events(kube)


async def test_a_new_move_is_rechecked_against_a_fresh_read() -> None:
    # Two half-empty nodes: the plan moves one replica to the other node; but the source stops being
    # Ready between the pass's list and the move (the fresh read), so no move starts.
    kube = FakeKube()
    for n in ("a", "b"):
        kube.put(NODES, node(n, gpus=2))
    kube.put(PODS, pod("p1", "a"))
    kube.put(PODS, pod("p2", "b"))
    kube.put(MODELSERVICES, msvc(None, desired=2))
    consolidator = Consolidator(kube, CONFIG)
    original = kube.get_or_none

    async def flaky(res: Any, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        obj = await original(res, name, namespace)
        if obj is not None and res is PODS:
            obj["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
        return obj

    kube.get_or_none = flaky  # type: ignore[method-assign]
    plan = await consolidator.run_once(T0)
    assert plan is not None and plan.moves  # the plan wanted a move ...
    assert status(kube).get("move") is None  # ... the fresh read refused it
    kube.get_or_none = original  # type: ignore[method-assign]
    await Consolidator(kube, CONFIG).run_once(T0 + 1)
    assert status(kube)["move"] is not None  # with a Ready source it starts


async def test_taint_patch_keeps_a_taint_added_between_read_and_write() -> None:
    kube = FakeKube()
    kube.put(NODES, node("a"))
    added = False

    def karpenter_taints(res: Any, name: str) -> None:
        nonlocal added
        if res is NODES and not added:
            added = True
            obj = kube.peek(NODES, name)
            assert obj is not None
            obj["spec"]["taints"] = [{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]
            kube.put(NODES, obj)

    kube.before_patch = karpenter_taints
    stale = kube.peek(NODES, "a")
    assert stale is not None
    await Consolidator(kube, CONFIG)._taint(stale, on=True)
    live = kube.peek(NODES, "a")
    assert live is not None
    keys = sorted(t["key"] for t in live["spec"]["taints"])
    assert keys == sorted(["karpenter.sh/disrupted", TAINT_KEY])


async def test_a_namespaced_operator_sees_other_tenants_gpu_pods() -> None:
    """Namespaced (`GREENSERVE_NAMESPACES`), node b looks fuller than a through our two replicas, but
    another tenant's six GPU pods fill it: no move onto b, and the tenant's pods get no deletion cost."""
    kube = FakeKube()
    for n in ("a", "b"):
        kube.put(NODES, node(n))
    kube.put(PODS, pod("src", "a"))
    kube.put(PODS, pod("b1", "b"))
    kube.put(PODS, pod("b2", "b"))
    for i in range(6):
        other = pod(f"t{i}", "b", svc="theirs")
        other["metadata"]["namespace"] = "tenant"
        kube.put(PODS, other)
    kube.put(MODELSERVICES, msvc(None, desired=3))
    config = OperatorConfig(consolidation_interval_s=0.0, namespaces=(NS,))
    plan = await Consolidator(kube, config).run_once(T0)
    assert plan is not None and plan.moves == ()
    assert not (status(kube).get("move"))
    tenant = kube.peek(PODS, "t0", "tenant")
    assert tenant is not None and c.ANN_POD_DELETION_COST not in tenant["metadata"]["annotations"]
