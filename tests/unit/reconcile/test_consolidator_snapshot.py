from __future__ import annotations

from typing import Any

from greenserve.api import constants as c
from greenserve.reconcile.consolidator import build_snapshot, do_not_disrupt, movable_services


def node(name: str, gpus: int = 8, **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "labels": {c.GPU_PRODUCT_LABEL: "L4"}, "annotations": extra.pop("annotations", {})}
    return {"metadata": meta, "spec": extra, "status": {"allocatable": {c.GPU_RESOURCE: str(gpus)}}}


def pod(
    name: str, node_name: str, gpus: int, svc: str | None = "s", ready: bool = True, **ann: str
) -> dict[str, Any]:
    labels = {c.LABEL_MODELSERVICE: svc} if svc else {}
    return {
        "metadata": {"name": name, "namespace": "ns", "labels": labels, "annotations": ann},
        "spec": {
            "nodeName": node_name,
            "containers": [{"resources": {"limits": {c.GPU_RESOURCE: str(gpus)}}}],
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_snapshot_counts_every_pods_gpus_and_protects_what_must_not_move() -> None:
    nodes = [
        node("a"),
        node("b", annotations={c.ANN_KARPENTER_DO_NOT_DISRUPT: "true"}),
        node("c", unschedulable=True),
        node("d", taints=[{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]),
        {"metadata": {"name": "cpu"}, "spec": {}, "status": {"allocatable": {"cpu": "8"}}},
    ]
    pods = [
        pod("mine", "a", 2),
        pod("foreign", "a", 3, svc=None),
        pod("warming", "a", 1, ready=False),
        pod("pinned", "a", 1, **{c.ANN_KARPENTER_DO_NOT_DISRUPT: "5m"}),
        pod("other-svc", "a", 1, svc="frozen"),
    ]
    snap = build_snapshot(nodes, pods, movable_services={"ns/s"})
    views = {n.name: n for n in snap.nodes}
    assert set(views) == {"a", "b", "c", "d"}  # CPU-only nodes are not part of GPU consolidation
    assert views["a"].gpu_allocated == 8  # the foreign pod's GPUs count too
    assert views["b"].protected and views["c"].draining and views["d"].draining
    reps = {r.pod: r for r in snap.replicas}
    assert "foreign" not in reps
    assert not reps["mine"].protected and reps["mine"].node_selector == {}
    assert not reps["warming"].ready
    assert reps["pinned"].protected and reps["other-svc"].protected


def test_do_not_disrupt_duration_ends_after_pod_start() -> None:
    from datetime import datetime

    started = pod("p", "a", 1, **{c.ANN_KARPENTER_DO_NOT_DISRUPT: "1h30m"})
    started["status"]["startTime"] = "2026-01-01T00:00:00Z"
    t0 = datetime.fromisoformat("2026-01-01T00:00:00+00:00").timestamp()
    assert do_not_disrupt(started, t0 + 5399)
    assert not do_not_disrupt(started, t0 + 5401)
    for value, protected in (("true", True), ("false", False), ("", False), ("soon", True)):
        assert do_not_disrupt(pod("q", "a", 1, **{c.ANN_KARPENTER_DO_NOT_DISRUPT: value}), t0) is protected
    # The snapshot applies the same reading at its `now`.
    snap = build_snapshot([node("a")], [started], {"ns/s"}, now=t0 + 6000)
    assert not snap.replicas[0].protected


def test_only_steady_consolidating_services_are_movable() -> None:
    def msvc(name: str, desired: int | None, **energy: Any) -> dict[str, Any]:
        status = {"desiredReplicas": desired} if desired is not None else {}
        spec = {"model": {"name": "m", "storageUri": "pvc://models/m"}, "energy": energy}
        return {"metadata": {"name": name, "namespace": "ns"}, "spec": spec, "status": status}

    pods = [
        pod(f"{svc}-{i}", "a", 1, svc=svc)
        for svc, n in (("s", 2), ("shrink", 3), ("perf", 1))
        for i in range(n)
    ]
    dying = pod("shrink-9", "a", 1, svc="shrink")
    dying["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    msvcs = [
        msvc("s", 2),
        msvc("shrink", 1),  # 3 live replicas, 1 wanted: scale-in will empty nodes, no move needed
        msvc("perf", 1, policy="Performance"),
        msvc("off", None, consolidation=False),
        msvc("new", None),  # no decision yet: nothing says it is shrinking
    ]
    assert movable_services(msvcs, [*pods, dying]) == {"ns/s", "ns/new"}
    # A spec the operator cannot parse (stored before a validation rule existed) moves nothing.
    broken = msvc("broken", None)
    broken["spec"]["scaling"] = {"minReplicas": 3, "maxReplicas": 1}
    assert movable_services([broken], []) == set()
