"""Held replicas give way to a scale-up on a full node, and the scale-up waits for the GPUs they free
(reconcile/give_way.py through the metrics tick, reconcile/ticker.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from greenserve.api import constants as c
from greenserve.cluster.cache import CACHE
from greenserve.cluster.client import DEPLOYMENTS, MODELSERVICES
from greenserve.config import OperatorConfig
from greenserve.metrics.types import PodRef, ServiceMetrics
from greenserve.policy import release
from greenserve.reconcile import give_way
from greenserve.reconcile.loop import LoopDeps
from greenserve.reconcile.ticker import Ticker, TickState
from support.fake_kube import FakeKube

NS = "ml"
T0 = 2_000_000.0
pytestmark = pytest.mark.usefixtures("fresh_cache")


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node(name: str, gpus: int = 4, product: str = "L4", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {c.GPU_PRODUCT_LABEL: product}},
        "spec": spec,
        "status": {"allocatable": {c.GPU_RESOURCE: gpus}},
    }


def pod(name: str, service: str, node_name: str | None, deleting_at: float | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "labels": {c.LABEL_MODELSERVICE: service}}
    if deleting_at is not None:
        meta["deletionTimestamp"] = _stamp(deleting_at)
    return {
        "metadata": meta,
        "spec": {
            "nodeName": node_name,
            "nodeSelector": {c.GPU_PRODUCT_LABEL: "L4"},
            "containers": [{"resources": {"limits": {c.GPU_RESOURCE: 1}}}],
        },
        "status": {"phase": "Running" if node_name else "Pending"},
    }


def test_free_gpus_count_terminating_pods_as_held_and_pending_ones_as_taken() -> None:
    nodes = [node("n1"), node("n2", unschedulable=True), node("n3", product="T4")]
    pods = [
        pod("a", "x", "n1"),
        pod("b", "x", "n1", deleting_at=T0 + 30),  # draining: still holds its GPU, frees it soon
        pod("c", "x", "n1", deleting_at=T0 - 5),  # past its grace period: nothing to wait for
        pod("p", "x", None),  # pending for an L4 node: takes the last free GPU first
    ]
    gpus = give_way.gpus_for({c.GPU_PRODUCT_LABEL: "L4"}, nodes, pods, T0)
    assert (gpus.free, gpus.freeing, gpus.pending) == ([1], [1], [1])
    # The pending pod takes the last free GPU first; the draining one's is free later.
    assert release.shortfall([release.ScaleUp("y", 1, 2, 1)], gpus.free, gpus.pending) == [1]
    assert release.shortfall([release.ScaleUp("y", 1, 2, 1)], gpus.later, gpus.pending) == []
    # The cordoned node and the T4 node are not free GPUs for an L4 replica.
    gpus = give_way.gpus_for({c.GPU_PRODUCT_LABEL: "L4"}, nodes, pods[:1], T0)
    assert (gpus.free, gpus.freeing, gpus.pending) == ([3], [0], [])


def test_a_replica_of_two_gpus_needs_them_on_one_node_and_only_a_release_that_makes_room_happens() -> None:
    """A replica's GPUs are all on one node: free GPUs are counted per node, and a held replica is released
    only where its own GPUs take a short replica (which of a model's replicas its ReplicaSet removes, and
    so on which node, is not ours to choose)."""
    sel = {c.GPU_PRODUCT_LABEL: "L4"}

    def entry(name: str, current: int, desired: int, gpus: int, wanted: int | None = None) -> give_way.Entry:
        held_until = T0 + 60 if wanted is not None else None
        return give_way.Entry((NS, name), current, desired, current, gpus, sel, wanted, held_until)

    def two(name: str, service: str, node_name: str) -> dict[str, Any]:
        p = pod(name, service, node_name)
        p["spec"]["containers"][0]["resources"]["limits"][c.GPU_RESOURCE] = 2
        return p

    big = entry("big", 1, 2, gpus=2)
    # One GPU free in all: a released one-GPU replica frees one more, on n1 or n2; only on n1 would the
    # two-GPU replica fit. Nothing is released; the scale-up goes (its node autoscaler adds a node).
    nodes = [node("n1", gpus=2), node("n2", gpus=1), node("n3", gpus=2)]
    pods = [pod("a", "small", "n1"), pod("b", "small", "n2"), two("big-0", "big", "n3")]
    assert give_way.give_way([big, entry("small", 2, 2, gpus=1, wanted=1)], nodes, pods, T0) == {}
    # Two GPUs free in all, one on each node: a two-GPU replica fits on neither, and a held replica of
    # two GPUs makes room. The scale-up waits for it to drain rather than go pending.
    nodes = [node("n1", gpus=4), node("n2", gpus=4), node("n3", gpus=2)]
    pods = [two("p0", "pair", "n1"), pod("a", "small", "n1"), two("p1", "pair", "n2")]
    pods += [pod("b", "small", "n2"), two("big-0", "big", "n3")]
    assert give_way.give_way([big, entry("pair", 2, 2, gpus=2, wanted=1)], nodes, pods, T0) == {
        (NS, "pair"): 1,
        (NS, "big"): 1,
    }
    # The same nodes take two replicas of one GPU each without any release.
    one = entry("one", 1, 3, gpus=1)
    assert give_way.give_way([one, entry("pair", 2, 2, gpus=2, wanted=1)], nodes, pods, T0) == {}


def test_load_seen_waiting_for_a_node_takes_replicas_held_as_rise_headroom() -> None:
    """Replicas that another ModelService holds only as rise headroom (above what its load seen asks
    for, `bare`) give way to pods that the load seen asks for and that no node holds: served now
    instead of after a node's provisioning. Headroom is never taken for headroom, nor below `bare`."""
    sel = {c.GPU_PRODUCT_LABEL: "L4"}

    def entry(name: str, current: int, desired: int, ready: int, bare: int | None) -> give_way.Entry:
        return give_way.Entry((NS, name), current, desired, ready, 1, sel, None, None, bare)

    nodes = [node("n1", gpus=4)]
    spare = entry("spare", 3, 3, 3, bare=1)  # two of its three replicas are headroom
    pods = [pod(f"s{i}", "spare", "n1") for i in range(3)] + [pod("b0", "busy", "n1")]
    pods += [pod("b1", "busy", None), pod("b2", "busy", None), pod("b3", "busy", None)]
    # busy's load asks for 4, one on a node and three pending: the headroom's two give way.
    assert give_way.give_way([spare, entry("busy", 4, 4, 1, bare=4)], nodes, pods, T0) == {(NS, "spare"): 1}
    # busy's pods pending for its own headroom only (its load seen asks for 1): nothing gives way.
    assert give_way.give_way([spare, entry("busy", 4, 4, 1, bare=1)], nodes, pods, T0) == {}
    # Without a reading (bare None) a ModelService neither takes nor gives.
    assert give_way.give_way([spare, entry("busy", 4, 4, 1, bare=None)], nodes, pods, T0) == {}
    assert (
        give_way.give_way([entry("spare", 3, 3, 3, None), entry("busy", 4, 4, 1, 4)], nodes, pods, T0) == {}
    )
    assert give_way.may_ask(entry("busy", 4, 4, 1, bare=4)) and not give_way.may_ask(spare)


def msvc(name: str, desired: int, ready: int, recommendations: list[list[float]]) -> dict[str, Any]:
    return {
        "apiVersion": f"{c.GROUP}/{c.VERSION}",
        "kind": "ModelService",
        "metadata": {"name": name, "namespace": NS, "generation": 1, "uid": f"u-{name}"},
        "spec": {
            "model": {"name": name, "storageUri": f"pvc://models/{name}"},
            "gpu": {"count": 1, "product": "L4", "sharing": "Exclusive"},
            "scaling": {"minReplicas": 1, "maxReplicas": 8, "target": 10},
            "slo": {"latencyP95Ms": 500},
        },
        "status": {
            "desiredReplicas": desired,
            "readyReplicas": ready,
            "scaler": {"recommendations": recommendations, "decidedAt": T0 - 15},
        },
    }


class Source:
    def __init__(self, rps: Mapping[str, float]) -> None:
        self.rps, self.now = dict(rps), T0

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
                gpu_utilization=0.1,
                requests_per_s=self.rps[name],
                inflight_requests=0.0,
                rate_history=(self.rps[name],) * 3,
                replicas_reporting=1,
                gpus=1,
                window_s=60.0,
                sampled_at=self.now,
                stale=False,
            )
            for ns, name in services
        }

    async def pooled_metrics(self, pooled: Mapping[Any, Any]) -> dict[Any, Any]:
        return {}

    async def rate_history(self, keys: Mapping[Any, Any], until: float, span_s: float) -> dict[Any, Any]:
        return {}

    async def close(self) -> None:
        return None


class View:
    """The informers' answer, as data (cluster/informer.py WatchedView)."""

    def __init__(self, nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> None:
        self.node_list, self.pod_list = nodes, pods

    async def modelservices(self) -> list[dict[str, Any]]:
        return []

    async def pods(self) -> list[dict[str, Any]]:
        return self.pod_list

    async def nodes(self) -> list[dict[str, Any]]:
        return self.node_list


def running() -> TickState:
    """A tick that has run a while: each ModelService's window in memory as its status has it (a first
    tick re-stamps what it loads from status to its own time: reconcile/ticker.py `restamped`)."""
    state = TickState()
    for name, recs in (("held", [[T0 - 200, 3]]), ("rising", [[T0 - 60, 1]])):
        state.scaler[(NS, name)] = {"recommendations": recs, "decidedAt": T0 - 15}
        state.last_write[(NS, name)] = T0 - 15
        state.next_resync[(NS, name)] = T0 + 3600
    return state


def replicas(kube: FakeKube, name: str) -> int | None:
    dep = kube.peek(DEPLOYMENTS, name, NS)
    return None if dep is None else int(dep["spec"]["replicas"])


async def tick(ticker: Ticker, kube: FakeKube, source: Source, at: float) -> None:
    for name in ("held", "rising"):
        body = kube.peek(MODELSERVICES, name, NS)
        assert body is not None
        # Every replica applied is ready by the next tick (the fake runs no Deployment controller).
        body["status"]["readyReplicas"] = body["status"]["desiredReplicas"]
        CACHE.observe_msvc(body)
    source.now = at
    await ticker.tick(at)


async def test_a_held_replica_gives_way_and_the_scale_up_takes_its_gpu_once_it_is_free() -> None:
    kube = FakeKube()
    # "held" fell to a trickle 200 s ago: its window holds 3 replicas for 100 s more, less than a new
    # node takes (policy/profile.py NODE_PROVISION_S). "rising" needs a second replica.
    kube.put(MODELSERVICES, msvc("held", 3, 3, [[T0 - 200, 3]]))
    kube.put(MODELSERVICES, msvc("rising", 1, 1, [[T0 - 60, 1]]))
    source = Source({"held": 0.5, "rising": 9.0})
    view = View(
        [node("n1")],
        [
            pod("held-0", "held", "n1"),
            pod("held-1", "held", "n1"),
            pod("held-2", "held", "n1"),
            pod("rising-0", "rising", "n1"),
        ],
    )
    deps = LoopDeps(kube=kube, config=OperatorConfig(), source=source, clock=lambda: source.now)  # type: ignore[arg-type]
    ticker = Ticker(deps, CACHE, view=view, state=running())  # type: ignore[arg-type]

    await tick(ticker, kube, source, T0)
    # The node is full: one held replica goes, and "rising" waits for its GPU instead of a new node.
    assert replicas(kube, "held") == 2
    assert replicas(kube, "rising") == 1
    status = (kube.peek(MODELSERVICES, "held", NS) or {}).get("status") or {}
    assert status["desiredReplicas"] == 2
    scaling = next(x for x in status["conditions"] if x["type"] == "Scaling")
    assert scaling["reason"] == "ScaleDown" and "ReleasedForScaleUp" in scaling["message"]

    # Still draining: the scale-up keeps waiting, and nothing more is released for it.
    view.pod_list[2] = pod("held-2", "held", "n1", deleting_at=T0 + 40)
    await tick(ticker, kube, source, T0 + 15)
    assert replicas(kube, "held") == 2 and replicas(kube, "rising") == 1

    # Gone: the scale-up takes the GPU it freed.
    del view.pod_list[2]
    await tick(ticker, kube, source, T0 + 30)
    assert replicas(kube, "rising") == 2
    assert replicas(kube, "held") == 2


async def test_a_hold_that_outlasts_a_new_nodes_provisioning_is_kept() -> None:
    kube = FakeKube()
    kube.put(MODELSERVICES, msvc("held", 3, 3, [[T0 - 60, 3]]))  # held 240 s more: beyond a new node
    kube.put(MODELSERVICES, msvc("rising", 1, 1, [[T0 - 60, 1]]))
    source = Source({"held": 0.5, "rising": 9.0})
    view = View(
        [node("n1")], [pod(f"held-{i}", "held", "n1") for i in range(3)] + [pod("rising-0", "rising", "n1")]
    )
    deps = LoopDeps(kube=kube, config=OperatorConfig(), source=source, clock=lambda: source.now)  # type: ignore[arg-type]
    state = running()
    state.scaler[(NS, "held")]["recommendations"] = [[T0 - 60, 3]]
    await tick(Ticker(deps, CACHE, view=view, state=state), kube, source, T0)  # type: ignore[arg-type]
    assert replicas(kube, "held") in (None, 3)  # kept: a node added now serves the scale-up
    assert replicas(kube, "rising") == 2


async def test_without_a_shortfall_the_window_holds_and_the_scale_up_goes_at_once() -> None:
    kube = FakeKube()
    kube.put(MODELSERVICES, msvc("held", 3, 3, [[T0 - 60, 3]]))
    kube.put(MODELSERVICES, msvc("rising", 1, 1, [[T0 - 60, 1]]))
    source = Source({"held": 0.5, "rising": 9.0})
    view = View(
        [node("n1", gpus=8)],
        [pod(f"held-{i}", "held", "n1") for i in range(3)] + [pod("rising-0", "rising", "n1")],
    )
    deps = LoopDeps(kube=kube, config=OperatorConfig(), source=source, clock=lambda: source.now)  # type: ignore[arg-type]
    await tick(Ticker(deps, CACHE, view=view, state=running()), kube, source, T0)  # type: ignore[arg-type]
    assert replicas(kube, "held") in (None, 3)  # unchanged: the window holds
    assert replicas(kube, "rising") == 2
