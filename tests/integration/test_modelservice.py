"""ModelService lifecycle on the real control plane: etcd, apiserver, controller-manager, scheduler, kwok."""

from __future__ import annotations

from typing import Any

import pytest

from greenserve.api import conditions as cond
from greenserve.api import constants as c
from greenserve.cluster.client import (
    DEPLOYMENTS,
    EVENTS,
    MODELSERVICES,
    NODES,
    PDBS,
    PODS,
    REPLICASETS,
    SERVICES,
    KubeClient,
)
from support.kube import Kubectl, OperatorProcess, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def modelservice(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"name": "resnet", "storageUri": "/models/resnet"},
        "scaling": {"minReplicas": 2, "maxReplicas": 4},
    }
    body.update(spec)
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


async def ready_condition(kube: KubeClient, ns: str, name: str) -> dict[str, Any] | None:
    msvc = await kube.get_or_none(MODELSERVICES, name, ns)
    found = cond.get_condition((msvc or {}).get("status", {}).get("conditions"), cond.READY)
    return dict(found) if found else None


async def wait_ready(kube: KubeClient, ns: str, name: str, timeout: float = 90) -> dict[str, Any]:
    """Ready (it serves the current spec) and fully rolled out: Progressing=False, every replica ready."""

    async def probe() -> dict[str, Any] | None:
        msvc = await kube.get_or_none(MODELSERVICES, name, ns)
        if msvc is None:
            return None
        st = msvc.get("status", {})
        ready = cond.get_condition(st.get("conditions"), cond.READY)
        progressing = cond.get_condition(st.get("conditions"), cond.PROGRESSING)
        gen_ok = st.get("observedGeneration") == msvc["metadata"]["generation"]
        done = progressing is not None and progressing["status"] == "False"
        all_ready = st.get("readyReplicas") == st.get("desiredReplicas")
        return msvc if ready and ready["status"] == "True" and gen_ok and done and all_ready else None

    return await eventually(probe, timeout, what=f"{ns}/{name} Ready=True and rolled out")


async def live_pods(kube: KubeClient, ns: str, name: str) -> list[dict[str, Any]]:
    pods = await kube.list_objects(PODS, ns, label_selector=f"{c.LABEL_MODELSERVICE}={name}")
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


async def test_modelservice_becomes_ready_on_gpu_nodes(
    kube: KubeClient, kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.apply(modelservice("resnet", namespace, gpu={"count": 2}))
    msvc = await wait_ready(kube, namespace, "resnet")
    status = msvc["status"]
    assert (status["readyReplicas"], status["desiredReplicas"], status["gpus"]) == (2, 2, 4)

    dep = await kube.get(DEPLOYMENTS, "resnet", namespace)
    svc = await kube.get(SERVICES, "resnet", namespace)
    pdb = await kube.get(PDBS, "resnet", namespace)
    for obj in (dep, svc, pdb):
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref["uid"] == msvc["metadata"]["uid"] and ref["controller"] is True
    # gRPC (with TF Serving's model-management API) only when spec.runtime.grpc is true.
    assert {p["port"] for p in svc["spec"]["ports"]} == {8501}

    pods = await live_pods(kube, namespace, "resnet")
    assert len(pods) == 2
    for pod in pods:
        node = await kube.get(NODES, pod["spec"]["nodeName"])
        assert node["status"]["allocatable"].get(c.GPU_RESOURCE), (
            f"{pod['metadata']['name']} on a non-GPU node"
        )
        assert pod["spec"]["containers"][0]["resources"]["limits"][c.GPU_RESOURCE] == "2"
        ready = [x for x in pod["status"]["conditions"] if x["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"

    # Printer columns as a user sees them.
    table = kubectl.run("get", "msvc", "resnet", "-n", namespace).stdout
    header, row = table.strip().splitlines()
    assert header.split() == ["NAME", "READY", "REASON", "REPLICAS", "MIN", "MAX", "METRIC", "TARGET", "AGE"]
    cells = row.split()
    assert cells[:2] == ["resnet", "True"] and cells[3:8] == ["2", "2", "4", "requestsPerSecond", "50"]

    events = await kube.list_objects(EVENTS, namespace, field_selector="involvedObject.name=resnet")
    assert any(e["reason"] == cond.REASON_AVAILABLE for e in events)


async def test_spec_change_rolls_out_without_losing_replicas(
    kube: KubeClient, kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.apply(modelservice("roll", namespace))
    await wait_ready(kube, namespace, "roll")
    before = await kube.get(DEPLOYMENTS, "roll", namespace)
    old_hash = before["spec"]["template"]["metadata"]["annotations"][c.ANN_SPEC_HASH]

    kubectl.apply(
        modelservice("roll", namespace, runtime={"batching": {"enabled": True, "maxBatchSize": 16}})
    )

    min_ready = 99

    async def rolled() -> dict[str, Any] | None:
        nonlocal min_ready
        dep = await kube.get(DEPLOYMENTS, "roll", namespace)
        min_ready = min(min_ready, int(dep["status"].get("readyReplicas") or 0))
        pods = await live_pods(kube, namespace, "roll")
        hashes = {p["metadata"]["annotations"][c.ANN_SPEC_HASH] for p in pods}
        ok = len(pods) == 2 and old_hash not in hashes and dep["status"].get("updatedReplicas") == 2
        return dep if ok else None

    dep = await eventually(rolled, 90, interval=0.2, what="rollout of the new spec")
    assert "--enable_batching=true" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert min_ready >= 2, "the rollout dropped below the desired ready replicas"
    msvc = await wait_ready(kube, namespace, "roll")
    assert msvc["status"]["observedGeneration"] == 2
    # The creation and the change were handled without a write to the ModelService itself: kopf keeps
    # the last handled spec in memory (handlers/diffbase.py), not in an annotation (issue 15).
    annotations = msvc["metadata"].get("annotations") or {}
    assert not [k for k in annotations if k.startswith(f"{c.GROUP}/")], annotations
    fields = msvc["metadata"].get("managedFields") or []
    writers = {str(m.get("manager")) for m in fields if m.get("subresource") != "status"}
    assert all(w.startswith("kubectl") for w in writers), writers  # the user's applies only
    replicasets = await kube.list_objects(
        REPLICASETS, namespace, label_selector=f"{c.LABEL_MODELSERVICE}=roll"
    )
    assert len(replicasets) == 2


async def test_deletion_garbage_collects_owned_objects(
    kube: KubeClient, kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.apply(modelservice("gone", namespace))
    await wait_ready(kube, namespace, "gone")
    kubectl.run("delete", "msvc", "gone", "-n", namespace)

    async def cleaned() -> bool:
        left = [await kube.get_or_none(r, "gone", namespace) for r in (DEPLOYMENTS, SERVICES, PDBS)]
        return all(x is None for x in left) and not await live_pods(kube, namespace, "gone")

    await eventually(cleaned, 60, what="garbage collection of owned objects")


async def test_unsupported_storage_is_reported_not_retried(
    kube: KubeClient, kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.apply(modelservice("hdfs", namespace, model={"name": "m", "storageUri": "hdfs://nn/models/m"}))

    async def reported() -> dict[str, Any] | None:
        ready = await ready_condition(kube, namespace, "hdfs")
        return ready if ready and ready["reason"] == cond.REASON_UNSUPPORTED_STORAGE else None

    ready = await eventually(reported, 60, what="Ready=False/UnsupportedStorageUri")
    assert ready["status"] == "False" and "hdfs" in ready["message"]
    assert await kube.get_or_none(DEPLOYMENTS, "hdfs", namespace) is None
    # Several resync passes later: the operator is alive and posted the warning once, not on every pass.
    await operator.wait_passes("resync", 3)
    assert operator.alive
    events = await kube.list_objects(EVENTS, namespace, field_selector="involvedObject.name=hdfs")
    warnings = [e for e in events if e["reason"] == cond.REASON_UNSUPPORTED_STORAGE]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"

    # Fixing the spec recovers without intervention.
    kubectl.apply(modelservice("hdfs", namespace, model={"name": "m", "storageUri": "gs://bucket/m"}))
    await wait_ready(kube, namespace, "hdfs")


async def test_unschedulable_replicas_are_reported(
    kube: KubeClient, kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.apply(
        modelservice("huge", namespace, gpu={"count": 16}, scaling={"minReplicas": 1, "maxReplicas": 1})
    )

    async def reported() -> dict[str, Any] | None:
        ready = await ready_condition(kube, namespace, "huge")
        return ready if ready and ready["reason"] == cond.REASON_UNSCHEDULABLE else None

    ready = await eventually(reported, 60, what="Ready=False/Unschedulable")
    assert "nvidia.com/gpu" in ready["message"]


async def test_drift_is_repaired(
    kube: KubeClient, kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.apply(modelservice("drift", namespace))
    await wait_ready(kube, namespace, "drift")
    kubectl.run("delete", "service", "drift", "-n", namespace)
    kubectl.run("scale", "deployment", "drift", "-n", namespace, "--replicas=5")

    async def repaired() -> bool:
        svc = await kube.get_or_none(SERVICES, "drift", namespace)
        dep = await kube.get(DEPLOYMENTS, "drift", namespace)
        return svc is not None and dep["spec"]["replicas"] == 2

    await eventually(repaired, 30, what="re-created Service and restored replicas")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"scaling": {"minReplicas": 5, "maxReplicas": 2}},
            "minReplicas must be less than or equal to maxReplicas",
        ),
        ({"scaling": {"metric": "gpuUtilization", "target": 250}}, "target is a percentage"),
        ({"scaling": {"metric": "latency"}}, 'Unsupported value: "latency"'),
        ({"model": {"name": "m", "storageUri": "models/m"}}, "spec.model.storageUri"),
        ({"model": {"name": "bad name", "storageUri": "/m"}}, "spec.model.name"),
        ({"gpu": {"count": -1}}, "spec.gpu.count"),
        ({"energy": {"policy": "Greedy"}}, 'Unsupported value: "Greedy"'),
    ],
)
def test_invalid_specs_are_rejected_by_the_api_server(
    kubectl: Kubectl, namespace: str, spec: dict[str, Any], message: str
) -> None:
    result = kubectl.apply(modelservice("bad", namespace, **spec), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_missing_model_is_rejected(kubectl: Kubectl, namespace: str) -> None:
    body = {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": "x", "namespace": namespace},
        "spec": {"gpu": {"count": 1}},
    }
    result = kubectl.apply(body, check=False)
    assert result.returncode != 0 and "spec.model: Required value" in result.stderr


def test_defaults_are_applied_by_the_api_server(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(modelservice("defaults", namespace))
    import json

    stored = json.loads(kubectl.run("get", "msvc", "defaults", "-n", namespace, "-o", "json").stdout)["spec"]
    assert stored["runtime"]["image"] == c.DEFAULT_SERVING_IMAGE
    assert stored["runtime"]["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    # No default toleration in the spec: the operator adds the GPU one to the user's (manifests/builders.py).
    assert stored["gpu"] == {"count": 1}
    assert stored["scaling"]["scaleDownDelaySeconds"] == 300
    assert stored["energy"] == {"consolidation": True, "policy": "Balanced"}


async def test_operator_restart_converges_without_duplicates(
    kube: KubeClient, kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.apply(modelservice("first", namespace))
    await wait_ready(kube, namespace, "first")
    # Kill mid-flight: right after a spec change is accepted, before it can be fully handled.
    kubectl.apply(modelservice("first", namespace, scaling={"minReplicas": 3, "maxReplicas": 4}))
    operator.kill()
    # Changes while no operator runs.
    kubectl.apply(modelservice("second", namespace))
    kubectl.run("delete", "pdb", "first", "-n", namespace)
    operator.start()

    for name, replicas in (("first", 3), ("second", 2)):
        msvc = await wait_ready(kube, namespace, name)
        assert msvc["status"]["readyReplicas"] == replicas
        deployments = await kube.list_objects(
            DEPLOYMENTS, namespace, label_selector=f"{c.LABEL_MODELSERVICE}={name}"
        )
        assert len(deployments) == 1
        assert len(await live_pods(kube, namespace, name)) == replicas
        assert await kube.get_or_none(PDBS, name, namespace) is not None
    # The restarted operator keeps no handler bookkeeping in status.
    msvc = await kube.get(MODELSERVICES, "first", namespace)
    assert all(not k.startswith("kopf") for k in msvc["status"])


async def test_no_metrics_holds_replicas_and_says_so(
    kube: KubeClient, kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    """Without a metrics source the loop still runs, reports why, and never scales anything down."""
    kubectl.apply(modelservice("blind", namespace, scaling={"minReplicas": 0, "maxReplicas": 4}))

    async def reported() -> dict[str, Any] | None:
        msvc = await kube.get_or_none(MODELSERVICES, "blind", namespace)
        conds = (msvc or {}).get("status", {}).get("conditions")
        metrics = cond.get_condition(conds, "MetricsAvailable")
        scaling = cond.get_condition(conds, cond.SCALING)
        return msvc if metrics and scaling else None

    msvc = await eventually(reported, 30, what="MetricsAvailable and Scaling conditions")
    conds = msvc["status"]["conditions"]
    metrics = cond.get_condition(conds, "MetricsAvailable")
    scaling = cond.get_condition(conds, cond.SCALING)
    assert metrics is not None and metrics["status"] == "False"
    assert scaling is not None and scaling["reason"] == "HoldMetricsMissing"
    assert msvc["status"].get("powerWatts") is None  # unknown is blank, never 0
    await operator.wait_passes("resync", 3)  # looked again three times: still one replica, min 0 or not
    dep = await kube.get(DEPLOYMENTS, "blind", namespace)
    assert dep["spec"]["replicas"] == 1
