"""Consolidation plans from a watch-fed view (cluster/informer.py), not from LISTs on every pass.

* The slimmed pods and nodes the informers keep give the same snapshot as the full objects.
* A pass that acts on nothing makes no LIST at all; one that starts a move reads fresh first (the
  validate step: the ModelServices for a move in flight, GETs of the source pod and target node).
* The informer lists in pages, follows the watch from the list's version, resumes from the last
  version seen (bookmarks included) and lists again only after a 410.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from greenserve.api import constants as c
from greenserve.cluster.cache import ClusterCache
from greenserve.cluster.client import MODELSERVICES, NODES, PODS, Resource
from greenserve.cluster.informer import Informer, WatchedView, slim_gpu_node, slim_gpu_pod
from greenserve.config import OperatorConfig
from greenserve.reconcile.consolidator import Consolidator, build_snapshot
from support.fake_kube import FakeKube

NS, NAME = "ns", "s"
T0 = 1_000_000.0
CONFIG = OperatorConfig(consolidation_interval_s=0.0)


def node(name: str, gpus: int = 8, **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "labels": {c.GPU_PRODUCT_LABEL: "L4"}, "annotations": extra.pop("annotations", {})}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": meta,
        "spec": extra,
        "status": {"allocatable": {c.GPU_RESOURCE: str(gpus), "cpu": "8"}},
    }


def pod(
    name: str, node_name: str, gpus: int = 1, svc: str | None = NAME, ready: bool = True, **ann: str
) -> dict[str, Any]:
    labels = {c.LABEL_MODELSERVICE: svc} if svc else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": labels,
            "annotations": ann,
            "creationTimestamp": "2020-01-01T00:00:00Z",
        },
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "s", "image": "i", "resources": {"limits": {c.GPU_RESOURCE: str(gpus)}}}],
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "True" if ready else "False"},
            ],
        },
    }


def msvc(name: str = NAME, desired: int = 1, move: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": f"{c.GROUP}/{c.VERSION}",
        "kind": "ModelService",
        "metadata": {"name": name, "namespace": NS, "generation": 1, "uid": f"u-{name}"},
        "spec": {
            "model": {"name": "m", "storageUri": "pvc://models/m"},
            "scaling": {"minReplicas": 1, "maxReplicas": 4},
        },
        "status": {"desiredReplicas": desired, "move": move},
    }


def status(kube: FakeKube) -> dict[str, Any]:
    obj = kube.peek(MODELSERVICES, NAME, NS)
    assert obj is not None
    return dict(obj.get("status") or {})


def test_the_slimmed_objects_give_the_same_snapshot() -> None:
    nodes = [
        node("a"),
        node("b", annotations={c.ANN_KARPENTER_DO_NOT_DISRUPT: "true"}),
        node("c", unschedulable=True),
        node("d", taints=[{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]),
        node("e", annotations={c.ANN_CA_SCALE_DOWN_DISABLED: "true"}),
    ]
    pinned = pod("pinned", "a", 1, **{c.ANN_KARPENTER_DO_NOT_DISRUPT: "5m"})
    pinned["status"]["startTime"] = "2026-01-01T00:00:00Z"
    selective = pod("selective", "b", 1)
    selective["spec"]["nodeSelector"] = {c.GPU_PRODUCT_LABEL: "L4"}
    gone = pod("gone", "a", 1)
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    pods = [
        pod("mine", "a", 2),
        pod("foreign", "a", 3, svc=None),
        pod("warming", "a", 1, ready=False),
        pinned,
        selective,
        gone,
        pod("other-svc", "c", 1, svc="frozen"),
    ]
    cpu_pod = pod("web", "a", 0, svc=None)
    cpu_node = {"metadata": {"name": "cpu"}, "spec": {}, "status": {"allocatable": {"cpu": "8"}}}
    assert slim_gpu_pod(cpu_pod) is None and slim_gpu_node(cpu_node) is None  # not held at all
    slim_pods = [p for p in (slim_gpu_pod(x) for x in pods) if p is not None]
    slim_nodes = [n for n in (slim_gpu_node(x) for x in nodes) if n is not None]
    now = time.time()
    full = build_snapshot([*nodes, cpu_node], [*pods, cpu_pod], {"ns/s"}, now)
    assert build_snapshot(slim_nodes, slim_pods, {"ns/s"}, now) == full
    assert len(full.replicas) == 5 and any(r.node_selector for r in full.replicas)


def _watched(kube: FakeKube) -> WatchedView:
    """The view as the watches would have filled it from what `kube` holds."""
    cache = ClusterCache()
    for (plural, _, _), obj in kube.objects.items():
        if plural == MODELSERVICES.plural:
            cache.observe_msvc(obj)
    pods, nodes = Informer(kube, PODS, slim_gpu_pod), Informer(kube, NODES, slim_gpu_node)  # type: ignore[arg-type]
    pods.replace_all([o for (p, _, _), o in kube.objects.items() if p == PODS.plural], "1")
    nodes.replace_all([o for (p, _, _), o in kube.objects.items() if p == NODES.plural], "1")
    return WatchedView(cache, pods, nodes)


async def test_a_pass_with_nothing_to_do_lists_nothing() -> None:
    kube = FakeKube()
    kube.put(NODES, node("a"))
    kube.put(PODS, pod("p1", "a"))
    kube.put(MODELSERVICES, msvc(desired=1))
    consolidator = Consolidator(kube, CONFIG, view=_watched(kube))
    for i in range(3):
        plan = await consolidator.run_once(T0 + i)
        assert plan is not None and plan.moves == ()
    assert [call for call in kube.calls if call[0] == "list"] == []
    # The LIST-based view, as before, lists all three every pass.
    kube.calls.clear()
    await Consolidator(kube, CONFIG).run_once(T0 + 10)
    assert {call[1] for call in kube.calls if call[0] == "list"} == {"modelservices", "pods", "nodes"}


async def test_a_move_starts_only_after_a_fresh_read() -> None:
    kube = FakeKube()
    for n in ("a", "b"):
        kube.put(NODES, node(n, gpus=2))
    kube.put(PODS, pod("p1", "a"))
    kube.put(PODS, pod("p2", "b"))
    kube.put(MODELSERVICES, msvc(desired=2))
    view = _watched(kube)
    # Another ModelService's move started after the view was filled: the fresh read sees it.
    moving = {"pod": "x", "fromNode": "c", "toNode": "d", "startedAt": T0}
    kube.put(MODELSERVICES, msvc("other", move=moving))
    plan = await Consolidator(kube, CONFIG, view=view).run_once(T0)
    assert plan is not None and plan.moves  # the view wanted a move ...
    assert status(kube).get("move") is None  # ... the fresh read refused it
    assert ("list", "modelservices", "") in kube.calls
    kube.remove(MODELSERVICES, "other", NS)
    kube.calls.clear()
    await Consolidator(kube, CONFIG, view=view).run_once(T0 + 1)
    assert status(kube)["move"] is not None
    assert ("get", "pods", status(kube)["move"]["pod"]) in kube.calls  # the source, read fresh
    assert ("get", "nodes", status(kube)["move"]["toNode"]) in kube.calls  # and the target


async def test_a_pass_starts_every_move_off_one_node_together() -> None:
    """Two ModelServices' replicas on the least-used node both start their surge in one pass (Karpenter
    replaces a node's pods together); another ModelService's move in flight still holds every start."""
    kube = FakeKube()
    kube.put(NODES, node("a", gpus=4))
    kube.put(NODES, node("b", gpus=4))
    kube.put(PODS, pod("s-0", "a", svc="s"))
    kube.put(PODS, pod("t-0", "a", svc="t"))
    for i in range(2):
        kube.put(PODS, pod(f"u-{i}", "b", svc="u"))
    for name in ("s", "t"):
        kube.put(MODELSERVICES, msvc(name))
    kube.put(MODELSERVICES, msvc("u", desired=2))
    moving = {"pod": "x", "fromNode": "c", "toNode": "d", "startedAt": T0}
    kube.put(MODELSERVICES, msvc("other", move=moving))
    consolidator = Consolidator(kube, CONFIG)
    plan = await consolidator.run_once(T0)
    assert plan is None  # another move is in flight: it finishes first, nothing new is planned

    def moves() -> dict[str, Any]:
        out = {}
        for name in ("s", "t", "u"):
            body = kube.peek(MODELSERVICES, name, NS)
            assert body is not None
            out[name] = (body.get("status") or {}).get("move")
        return out

    assert moves() == {"s": None, "t": None, "u": None}
    kube.remove(MODELSERVICES, "other", NS)
    kube.calls.clear()
    plan = await consolidator.run_once(T0 + 1)
    assert plan is not None and {m.from_node for m in plan.moves} == {"a"}
    # One fresh read of the moves in flight for the whole batch (only the Lease holder starts moves), on
    # top of the pass's own LIST-based view: not one per move.
    assert kube.calls.count(("list", "modelservices", "")) == 2
    started = moves()
    assert started["s"] and started["t"], "both replicas on node a start their move in the same pass"
    assert started["u"] is None
    assert {started[n]["pod"] for n in ("s", "t")} == {"s-0", "t-0"}
    assert {started[n]["toNode"] for n in ("s", "t")} == {"b"}
    assert consolidator.state.moves_started == 2


class _ScriptedKube:
    """A list in two pages, then scripted watches: the informer's protocol without a server."""

    def __init__(self, streams: list[list[dict[str, Any]]]) -> None:
        self.streams = streams
        self.watched_from: list[str] = []
        self.lists = 0

    async def list_page(
        self, res: Resource, namespace: str | None = None, limit: int = 500, cont: str | None = None
    ) -> tuple[list[dict[str, Any]], str, str | None]:
        self.lists += 1
        gpu = {"spec": {"containers": [{"resources": {"limits": {c.GPU_RESOURCE: "1"}}}]}}
        if cont is None:
            return (
                [{"metadata": {"name": "p1", "namespace": "x", "resourceVersion": "5"}, **gpu}],
                "10",
                "more",
            )
        return [{"metadata": {"name": "p2", "namespace": "x", "resourceVersion": "6"}, **gpu}], "11", None

    async def watch(
        self, res: Resource, resource_version: str, namespace: str | None = None, timeout_s: int = 300
    ) -> AsyncIterator[dict[str, Any]]:
        self.watched_from.append(resource_version)
        events = self.streams.pop(0) if self.streams else []
        for ev in events:
            yield ev
        if not self.streams and not events:
            await asyncio.Event().wait()  # an open watch with nothing new


async def _until(check: Any, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.01)


async def test_the_informer_resumes_from_the_last_version_and_relists_only_after_410() -> None:
    gpu = {"containers": [{"resources": {"limits": {c.GPU_RESOURCE: "1"}}}]}
    streams = [
        [
            {
                "type": "ADDED",
                "object": {
                    "metadata": {"name": "p3", "namespace": "x", "resourceVersion": "12"},
                    "spec": gpu,
                },
            },
            {
                "type": "DELETED",
                "object": {"metadata": {"name": "p1", "namespace": "x", "resourceVersion": "13"}},
            },
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}},
        ],  # the server ends this watch: resume from 20 without a list
        [
            {
                "type": "ERROR",
                "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"},
            }
        ],
        [],
    ]
    kube = _ScriptedKube(streams)
    informer = Informer(kube, PODS, slim_gpu_pod, retry_s=0.01)  # type: ignore[arg-type]
    task = asyncio.create_task(informer.run())
    try:
        await _until(lambda: len(kube.watched_from) >= 3)
        assert kube.watched_from == ["10", "20", "10"]  # list, resume at the bookmark, 410: list again
        assert kube.lists == 4  # two pages, twice
        assert sorted(n for _, n in informer.objects) == ["p1", "p2"]  # the relisted state
    finally:
        task.cancel()
    assert informer.synced.is_set()
