"""Consolidation on the real control plane: a replica moves off a lightly used GPU node, surge first."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenserve.api import constants as c
from greenserve.cluster.client import EVENTS, MODELSERVICES, NODES, PODS, KubeClient
from greenserve.reconcile.consolidator import TAINT_KEY
from support.kube import Kubectl, OperatorProcess, eventually, kwok_gpu_node, rbac_denials

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
PRODUCT = "TEST-CONSOLIDATION"


def gpu_node(name: str) -> dict[str, Any]:
    return kwok_gpu_node(name, PRODUCT, 8)


def msvc(name: str, ns: str, replicas: int, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "model": {"name": name, "storageUri": f"/models/{name}"},
            "gpu": {"count": gpus, "product": PRODUCT},
            "scaling": {"minReplicas": replicas, "maxReplicas": replicas},
        },
    }


@pytest.fixture
def nodes(kubectl: Kubectl) -> Iterator[tuple[str, str]]:
    suffix = secrets.token_hex(3)
    names = (f"consol-x-{suffix}", f"consol-y-{suffix}")
    for n in names:
        kubectl.apply(gpu_node(n))
    kubectl.run("wait", "--for=condition=Ready", *(f"node/{n}" for n in names), "--timeout=60s")
    yield names
    kubectl.run("delete", "node", *names, "--wait=false", check=False)


@pytest.fixture
def consolidating_operator(
    kubeconfig: Path, tmp_path: Path, crd_installed: None
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(
        kubeconfig,
        tmp_path,
        extra_env={
            "GREENSERVE_CONSOLIDATION": "true",
            "GREENSERVE_CONSOLIDATION_INTERVAL": "3",
            "GREENSERVE_LEASE_NAMESPACE": "default",
        },
    )
    proc.start()
    yield proc
    proc.stop()
    logs = proc.logs()
    print(logs[-6000:])
    assert rbac_denials(logs) == [], "the chart's RBAC lacks a permission the operator used"


async def pods_of(kube: KubeClient, ns: str, name: str) -> list[dict[str, Any]]:
    pods = await kube.list_objects(PODS, ns, label_selector=f"{c.LABEL_MODELSERVICE}={name}")
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    return any(
        x["type"] == "Ready" and x["status"] == "True" for x in pod.get("status", {}).get("conditions", [])
    )


HOLD_TAINT = {"key": "test.greenserve.io/hold", "value": "1", "effect": "NoSchedule"}


async def fill_one_node(
    kube: KubeClient, kubectl: Kubectl, namespace: str, nodes: tuple[str, str]
) -> tuple[str, str]:
    """ "big" (2 x 4 GPUs) fills one node; returns (that node, the other)."""
    kubectl.apply(msvc("big", namespace, 2, 4))

    async def big_placed() -> set[str] | None:
        pods = await pods_of(kube, namespace, "big")
        hosts = {p["spec"].get("nodeName") for p in pods if ready(p)}
        return hosts if len(pods) == 2 and None not in hosts and len(hosts) == 1 else None

    (full,) = await eventually(big_placed, 60, what="big packed on one node")
    return full, next(n for n in nodes if n != full)


async def fragment(
    kube: KubeClient, kubectl: Kubectl, namespace: str, nodes: tuple[str, str], hold: bool = False
) -> tuple[str, str, dict[str, Any]]:
    """Fragment on purpose: "big" fills one node (2 x 4 GPUs), "small" lands on the other; then big
    shrinks, so moving small's replica onto the full node empties the other. Returns (full, other, the
    small replica to be moved)."""
    full, other = await fill_one_node(kube, kubectl, namespace, nodes)
    kubectl.apply(msvc("small", namespace, 1, 2))

    async def small_on_other() -> dict[str, Any] | None:
        pods = await pods_of(kube, namespace, "small")
        return (
            pods[0]
            if len(pods) == 1 and ready(pods[0]) and pods[0]["spec"].get("nodeName") == other
            else None
        )

    source_pod = await eventually(small_on_other, 60, what="small on the other node")
    if hold:  # the replacement will stay Pending on the target until the taint goes: a move in flight
        await kube.patch(
            NODES, full, {"spec": {"taints": [*_taints(await kube.get(NODES, full)), HOLD_TAINT]}}
        )
    kubectl.apply(msvc("big", namespace, 1, 4))  # frees 4 GPUs on the full node
    return full, other, source_pod


def _taints(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in node["spec"].get("taints") or [] if t["key"] != HOLD_TAINT["key"]]


class MoveWatch:
    """Samples small's replicas while a move runs: the fewest ready and the most pods seen."""

    def __init__(self, kube: KubeClient, namespace: str, full: str, other: str) -> None:
        self.kube, self.namespace, self.full, self.other = kube, namespace, full, other
        self.min_ready, self.max_pods = 99, 0

    async def moved(self) -> bool:
        pods = await pods_of(self.kube, self.namespace, "small")
        self.min_ready = min(self.min_ready, sum(ready(p) for p in pods))
        self.max_pods = max(self.max_pods, len(pods))
        node = await self.kube.get(NODES, self.other)
        closed = any(t["key"] == TAINT_KEY for t in node["spec"].get("taints", []))
        return len(pods) == 1 and ready(pods[0]) and pods[0]["spec"]["nodeName"] == self.full and closed

    async def other_node_empty(self) -> bool:
        remaining = [
            p
            for p in await self.kube.list_objects(PODS, field_selector=f"spec.nodeName={self.other}")
            if not p["metadata"].get("deletionTimestamp")
        ]
        return remaining == []


async def test_replica_moves_off_the_lightly_used_node_without_losing_capacity(
    kube: KubeClient,
    kubectl: Kubectl,
    namespace: str,
    nodes: tuple[str, str],
    consolidating_operator: OperatorProcess,
) -> None:
    full, other, source_pod = await fragment(kube, kubectl, namespace, nodes)
    # The move: small's replica should end up on the full node, the other node empty and closed.
    watch = MoveWatch(kube, namespace, full, other)
    await eventually(watch.moved, 120, interval=0.2, what="small moved onto the full node")
    assert watch.min_ready >= 1, "the move dropped the service below its ready replicas"
    assert watch.max_pods == 2, "the replacement must start before the old replica is removed"
    assert await watch.other_node_empty()

    async def source_gone() -> bool:
        # Retired gracefully (preStop drain, grace period): the object goes once the kubelet (kwok) lets go.
        return await kube.get_or_none(PODS, source_pod["metadata"]["name"], namespace) is None

    await eventually(source_gone, 90, what="the retired source pod removed")

    async def recorded() -> set[str] | None:
        events = await kube.list_objects(EVENTS, namespace, field_selector="involvedObject.name=small")
        reasons = {e["reason"] for e in events}
        return reasons if {"ConsolidationMove", "ReplicaMoved"} <= reasons else None

    await eventually(recorded, 30, what="ConsolidationMove and ReplicaMoved events")
    # The move is closed in status; a later pass plans nothing more for these nodes (idempotent).
    await consolidating_operator.wait_passes("consolidation", 3)
    pods = await pods_of(kube, namespace, "small")
    assert len(pods) == 1 and pods[0]["spec"]["nodeName"] == full
    assert consolidating_operator.alive


async def test_operator_killed_mid_move_finishes_it_after_restart(
    kube: KubeClient,
    kubectl: Kubectl,
    namespace: str,
    nodes: tuple[str, str],
    consolidating_operator: OperatorProcess,
) -> None:
    # The target node holds the replacement Pending, so the kill lands while the move is in flight.
    full, other, source_pod = await fragment(kube, kubectl, namespace, nodes, hold=True)

    async def move_recorded() -> dict[str, Any] | None:
        body = await kube.get(MODELSERVICES, "small", namespace)
        move: dict[str, Any] | None = (body.get("status") or {}).get("move")
        return move

    move = await eventually(move_recorded, 60, interval=0.1, what="a move recorded in status")
    consolidating_operator.kill()  # SIGKILL mid-move: no cleanup
    assert move["pod"] == source_pod["metadata"]["name"]
    watch = MoveWatch(kube, namespace, full, other)
    for _ in range(10):  # while no operator runs, nothing more is started or removed
        await watch.moved()
        await asyncio.sleep(0.3)
    assert watch.max_pods <= 2 and watch.min_ready >= 1
    assert await kube.get_or_none(PODS, source_pod["metadata"]["name"], namespace) is not None
    await kube.patch(NODES, full, {"spec": {"taints": _taints(await kube.get(NODES, full))}})
    consolidating_operator.start()
    await eventually(watch.moved, 120, interval=0.2, what="the move finished by the restarted operator")
    assert watch.min_ready >= 1, "the restart dropped the service below its ready replicas"
    assert watch.max_pods == 2, "a restart must not start a second replacement"
    assert await watch.other_node_empty()
    await consolidating_operator.wait_passes("consolidation", 3)  # converged: one replica, no move left
    pods = await pods_of(kube, namespace, "small")
    assert len(pods) == 1 and pods[0]["spec"]["nodeName"] == full
    assert (await kube.get(MODELSERVICES, "small", namespace))["status"].get("move") is None


async def test_a_nodes_replicas_move_together_each_surge_first(
    kube: KubeClient,
    kubectl: Kubectl,
    namespace: str,
    nodes: tuple[str, str],
    consolidating_operator: OperatorProcess,
) -> None:
    """Two ModelServices' replicas on the lightly used node start their moves in one pass, as Karpenter
    replaces a node's pods together: the node empties in one replacement's start-up, not two."""
    full, other = await fill_one_node(kube, kubectl, namespace, nodes)
    # One GPU each: with 2 GPUs allocated, their node is the cheaper to empty once big leaves 4 on its
    # own (with 4 and 4, the plan would move big's remaining replica instead, by node name).
    for name in ("small-a", "small-b"):
        kubectl.apply(msvc(name, namespace, 1, 1))

    async def smalls_on_other() -> bool:
        pods = [p for name in ("small-a", "small-b") for p in await pods_of(kube, namespace, name)]
        return len(pods) == 2 and all(ready(p) and p["spec"].get("nodeName") == other for p in pods)

    await eventually(smalls_on_other, 60, what="both smalls on the other node")
    # The target holds the replacements Pending, so both moves are seen in flight at once.
    await kube.patch(NODES, full, {"spec": {"taints": [*_taints(await kube.get(NODES, full)), HOLD_TAINT]}})
    kubectl.apply(msvc("big", namespace, 1, 4))  # frees 4 GPUs on the full node: room for both

    async def both_moving() -> list[dict[str, Any]] | None:
        bodies = [await kube.get(MODELSERVICES, n, namespace) for n in ("small-a", "small-b")]
        moves = [(b.get("status") or {}).get("move") for b in bodies]
        return moves if all(moves) else None

    moves = await eventually(both_moving, 60, interval=0.1, what="both moves in flight together")
    assert {m["fromNode"] for m in moves} == {other}
    watches = {n: MoveWatch(kube, namespace, full, other) for n in ("small-a", "small-b")}

    async def sample() -> None:
        for name, w in watches.items():
            pods = await pods_of(kube, namespace, name)
            w.min_ready = min(w.min_ready, sum(ready(p) for p in pods))
            w.max_pods = max(w.max_pods, len(pods))

    await sample()
    await kube.patch(NODES, full, {"spec": {"taints": _taints(await kube.get(NODES, full))}})

    async def moved() -> bool:
        await sample()
        pods = [p for name in ("small-a", "small-b") for p in await pods_of(kube, namespace, name)]
        return len(pods) == 2 and all(ready(p) and p["spec"]["nodeName"] == full for p in pods)

    await eventually(moved, 120, interval=0.2, what="both smalls moved onto the full node")
    for name, w in watches.items():
        assert w.min_ready >= 1, f"{name}'s move dropped it below its ready replicas"
        assert w.max_pods == 2, f"{name}'s replacement must start before its old replica is removed"
    await eventually(watches["small-a"].other_node_empty, 90, what="the other node empty")
    assert consolidating_operator.alive
