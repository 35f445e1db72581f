"""ModelService status on the real control plane: what the operator writes survives the schema, Ready
means "can serve", faults name their cause, and deletion needs no operator."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenserve.api import conditions as cond
from greenserve.api import constants as c
from greenserve.api.v1alpha1 import (
    Addressable,
    FailureInfo,
    ModelServiceStatus,
    PlacementStatus,
    Routing,
    status_patch,
)
from greenserve.cluster.client import DEPLOYMENTS, EVENTS, MODELSERVICES, PODS, KubeClient
from support.kube import Kubectl, OperatorProcess, eventually, kwok_gpu_node, rbac_denials

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def modelservice(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"name": "resnet", "storageUri": "/models/resnet"},
        "scaling": {"minReplicas": 1, "maxReplicas": 4},
    }
    body.update(spec)
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


async def conditions_of(kube: KubeClient, ns: str, name: str) -> list[dict[str, Any]]:
    msvc = await kube.get_or_none(MODELSERVICES, name, ns)
    return list(((msvc or {}).get("status") or {}).get("conditions") or [])


async def condition(kube: KubeClient, ns: str, name: str, type_: str) -> dict[str, Any] | None:
    found = cond.get_condition(await conditions_of(kube, ns, name), type_)
    return dict(found) if found else None


async def events_of(kube: KubeClient, ns: str, name: str) -> list[dict[str, Any]]:
    return await kube.list_objects(
        EVENTS, ns, field_selector=f"involvedObject.name={name},involvedObject.kind={c.KIND}"
    )


def full_status() -> ModelServiceStatus:
    """Every status field set to a value of its type (what the operator writes over a lifetime)."""
    url = "http://resnet.ns.svc.cluster.local:8501"
    return ModelServiceStatus(
        observed_generation=1,
        url=url,
        address=Addressable(url=url),
        replicas=3,
        ready_replicas=2,
        desired_replicas=3,
        gpus=2,
        power_watts=212.5,
        energy_joules=12345.6,
        requests_per_second=41.5,
        inflight_requests=3.5,
        joules_per_request=5.125,
        grams_co2e=1.372,
        energy_counters={"resnet-abc": 100.5, "resnet-def": 200.25},
        metrics_simulated=True,
        last_scale_time="2026-01-01T00:00:00Z",
        last_failure_info=FailureInfo(
            reason="ModelLoadFailed",
            message="pod resnet-abc: container tfserving exited with code 1 (Error)",
            pod="resnet-abc",
            container="tfserving",
            exit_code=1,
            time="2026-01-01T00:00:00Z",
        ),
        move={"pod": "resnet-abc", "fromNode": "gpu-node-1", "toNode": "gpu-node-2", "startedAt": 1.0},
        placement=PlacementStatus(shared=True, pool="pool-h100", reason="FitsShared", message="0.02 GPU"),
        routing=Routing.ACTIVATOR,
        scaler={"recommendations": [[1.0, 3]], "lastNonZero": 2.0},
        conditions=cond.set_condition(
            [], cond.ConditionUpdate(cond.READY, True, "ReplicasAvailable", "2/3"), 1
        ),
    )


async def test_the_operators_status_patch_survives_the_schema(
    kube: KubeClient, kubectl: Kubectl, namespace: str
) -> None:
    """No operator: the test writes the operator's own patch (status_patch of the typed model) through
    the status subresource and reads every field back, so a field the CRD would prune fails here."""
    kubectl.apply(modelservice("st", namespace))
    written = full_status()
    patch = status_patch(written, {})
    assert set(patch) == {info.alias for info in ModelServiceStatus.model_fields.values()}
    await kube.patch_status(MODELSERVICES, "st", namespace, patch)
    stored = (await kube.get(MODELSERVICES, "st", namespace))["status"]
    assert stored == patch, json.dumps(
        {k: (patch[k], stored.get(k)) for k in patch if stored.get(k) != patch[k]}
    )
    printed = kubectl.run("get", "msvc", "st", "-n", namespace, "-o", "jsonpath={.status.gramsCO2e}").stdout
    assert printed == "1.372"

    # Cleared figures and replicas gone from the counters are removed, not zeroed or kept.
    cleared = ModelServiceStatus(power_watts=None, energy_counters={"resnet-def": 300.0})
    await kube.patch_status(MODELSERVICES, "st", namespace, status_patch(cleared, stored))
    again = (await kube.get(MODELSERVICES, "st", namespace))["status"]
    assert "powerWatts" not in again and again["energyCounters"] == {"resnet-def": 300.0}
    assert again["gramsCO2e"] == 1.372


async def test_operator_publishes_url_and_address(
    kube: KubeClient, kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.apply(modelservice("addr", namespace))

    async def published() -> dict[str, Any] | None:
        msvc = await kube.get_or_none(MODELSERVICES, "addr", namespace)
        st = (msvc or {}).get("status") or {}
        return st if st.get("url") and cond.is_true(st.get("conditions"), cond.READY) else None

    st = await eventually(published, 90, what="status.url and Ready")
    want = f"http://addr.{namespace}.svc.cluster.local:{c.TFS_REST_PORT}"
    assert st["url"] == want and st["address"] == {"url": want}
    assert {x["type"] for x in st["conditions"]} >= {
        cond.READY,
        cond.PROGRESSING,
        cond.DEGRADED,
        cond.WARNINGS,
    }


PRODUCT = "TEST-PROVISIONING"


def gpu_node(name: str) -> dict[str, Any]:
    return kwok_gpu_node(name, PRODUCT, 8)


@pytest.fixture
def node_names(kubectl: Kubectl) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    if names:
        kubectl.run("delete", "node", *names, "--wait=false", check=False)


async def test_scale_up_waiting_for_nodes_keeps_ready_true_with_normal_events(
    kube: KubeClient,
    kubectl: Kubectl,
    namespace: str,
    operator: OperatorProcess,
    node_names: list[str],
) -> None:
    """1 -> 3 replicas of a whole 8-GPU node each, where only one node has the product: two replicas wait
    for nodes, as they would while a node autoscaler provisions them. Ready stays True throughout."""
    suffix = secrets.token_hex(3)
    node_names.append(f"prov-a-{suffix}")
    kubectl.apply(gpu_node(node_names[0]))
    gpu = {"count": 8, "product": PRODUCT}
    kubectl.apply(modelservice("grow", namespace, gpu=gpu, scaling={"minReplicas": 1, "maxReplicas": 3}))

    async def ready() -> dict[str, Any] | None:
        found = await condition(kube, namespace, "grow", cond.READY)
        return found if found and found["status"] == "True" else None

    await eventually(ready, 90, what="grow Ready=True with one replica")

    # The scale-up: minReplicas 1 -> 3 moves the autoscaler's count to 3 on its next pass.
    kubectl.apply(modelservice("grow", namespace, gpu=gpu, scaling={"minReplicas": 3, "maxReplicas": 3}))
    seen_ready: list[str] = []

    async def scaling_up() -> dict[str, Any] | None:
        conds = await conditions_of(kube, namespace, "grow")
        r = cond.get_condition(conds, cond.READY)
        seen_ready.append(f"{r and r['status']}/{r and r['reason']}")
        s = cond.get_condition(conds, cond.SCALING)
        p = cond.get_condition(conds, cond.PROGRESSING)
        pods = await kube.list_objects(PODS, namespace, label_selector=f"{c.LABEL_MODELSERVICE}=grow")
        pending = [x for x in pods if (x.get("status") or {}).get("phase") == "Pending"]
        ok = (
            s
            and s["status"] == "True"
            and s["reason"] == cond.REASON_SCALE_UP
            and p
            and p["status"] == "True"
        )
        return {"scaling": s, "progressing": p} if ok and len(pending) == 2 else None

    seen = await eventually(scaling_up, 60, what="Scaling=True/ScaleUp with two pods pending")
    assert "1 -> 3" in seen["scaling"]["message"]
    # Watch the pending state over several resync passes: Ready never leaves True.
    start = operator.passes("resync")
    while operator.passes("resync") < start + 3:
        await scaling_up()
        await asyncio.sleep(0.3)
    degraded = await condition(kube, namespace, "grow", cond.DEGRADED)
    assert degraded is not None and degraded["status"] == "False"

    # The nodes arrive: the pending replicas schedule, the scale-up completes.
    node_names.extend([f"prov-b-{suffix}", f"prov-c-{suffix}"])
    for n in node_names[1:]:
        kubectl.apply(gpu_node(n))

    async def reached() -> dict[str, Any] | None:
        conds = await conditions_of(kube, namespace, "grow")
        r = cond.get_condition(conds, cond.READY)
        seen_ready.append(f"{r and r['status']}/{r and r['reason']}")
        s = cond.get_condition(conds, cond.SCALING)
        p = cond.get_condition(conds, cond.PROGRESSING)
        done = s and s["status"] == "False" and p and p["status"] == "False"
        msvc = await kube.get(MODELSERVICES, "grow", namespace)
        return msvc if done and msvc["status"].get("readyReplicas") == 3 else None

    msvc = await eventually(
        reached, 90, what="Scaling=False, Progressing=False, 3 ready with the nodes there"
    )
    assert set(seen_ready) == {f"True/{cond.REASON_AVAILABLE}"}, seen_ready
    events = await events_of(kube, namespace, "grow")
    # The made-up product has no power figures: that spec warning once, and nothing from the wait.
    assert [e["reason"] for e in events if e["type"] != "Normal"] == ["UnknownGpuProduct"]
    rescales = [e for e in events if e["reason"] == cond.EVENT_RESCALE]
    assert len(rescales) == 1 and "from 1 to 3" in rescales[0]["message"]
    assert msvc["status"]["lastScaleTime"]


@pytest.fixture
def restricted_namespace(kubectl: Kubectl, namespace: str) -> str:
    kubectl.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    return namespace


async def test_pod_security_rejection_is_ready_false_with_its_reason(
    kube: KubeClient, kubectl: Kubectl, restricted_namespace: str, operator: OperatorProcess
) -> None:
    """greenserve's own pods pass `restricted` (tests/integration/test_pod_security.py); a spec that asks
    for the model server as root (runtime.securityContext runAsUser 0, legal in the schema) does not, so
    Pod Security admission refuses every replica and the ReplicaSet reports FailedCreate."""
    ns = restricted_namespace
    kubectl.apply(modelservice("psa", ns, runtime={"securityContext": {"runAsUser": 0}}))

    async def rejected() -> dict[str, Any] | None:
        found = await condition(kube, ns, "psa", cond.READY)
        return found if found and found["reason"] == cond.REASON_POD_SECURITY else None

    async def replica_failure() -> dict[str, Any] | None:
        dep = await kube.get_or_none(DEPLOYMENTS, "psa", ns)
        for x in ((dep or {}).get("status") or {}).get("conditions") or []:
            if x["type"] == "ReplicaFailure" and x["status"] == "True":
                return dict(x)
        return None

    failure = await eventually(replica_failure, 60, what="the ReplicaSet's FailedCreate on the Deployment")
    assert "violates PodSecurity" in failure["message"]
    # Within one reconcile of the failure: the Deployment's change triggers one at once; the periodic
    # resync (3 s in tests) is the latest it can come.
    started = time.monotonic()
    ready = await eventually(rejected, 10, interval=0.2, what="Ready=False/PodSecurityRejected")
    print(f"PodSecurityRejected {time.monotonic() - started:.1f} s after the Deployment showed FailedCreate")
    assert ready["status"] == "False" and 'PodSecurity "restricted' in ready["message"]
    msvc = await kube.get(MODELSERVICES, "psa", ns)
    assert msvc["status"]["lastFailureInfo"]["reason"] == cond.REASON_POD_SECURITY
    await operator.wait_passes("resync", 3)  # looked again three times: still one Warning, not one per pass
    warnings = [e for e in await events_of(kube, ns, "psa") if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == [cond.REASON_POD_SECURITY]

    # Lifting the restriction recovers by itself (the ReplicaSet retries its creates).
    kubectl.run("label", "namespace", ns, "pod-security.kubernetes.io/enforce-", check=True)

    async def recovered() -> dict[str, Any] | None:
        found = await condition(kube, ns, "psa", cond.READY)
        return found if found and found["status"] == "True" else None

    await eventually(recovered, 90, what="Ready=True once the namespace admits the pods")


def crash_status(pod: dict[str, Any], message: str) -> dict[str, Any]:
    """What kubelet reports for a model server that exits at start (kwok runs no containers)."""
    started = "2026-01-01T00:00:00Z"
    return {
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
                {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"},
                {"type": "PodScheduled", "status": "True"},
            ],
            "containerStatuses": [
                {
                    "name": "tfserving",
                    "image": pod["spec"]["containers"][0]["image"],
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 4,
                    "state": {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": "back-off 1m20s restarting failed container=tfserving",
                        }
                    },
                    "lastState": {
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "message": message,
                            "startedAt": started,
                            "finishedAt": started,
                        }
                    },
                }
            ],
        }
    }


async def test_a_crashing_model_server_says_why(
    kube: KubeClient, kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.apply(modelservice("crash", namespace, model={"name": "m", "storageUri": "/models/nope"}))

    async def running_pod() -> dict[str, Any] | None:
        pods = await kube.list_objects(PODS, namespace, label_selector=f"{c.LABEL_MODELSERVICE}=crash")
        ready = [
            p
            for p in pods
            if any(
                x["type"] == "Ready" and x["status"] == "True" for x in p["status"].get("conditions") or []
            )
        ]
        return ready[0] if ready else None

    pod = await eventually(running_pod, 90, what="the crash pod running (kwok)")
    name = pod["metadata"]["name"]
    message = "Could not find base path /models/nope for servable m"
    # kwok set the pod Running once; it leaves a pod that already has an IP alone, so this status stays.
    await kube.patch(PODS, name, crash_status(pod, message), namespace, sub="status")

    async def reported() -> dict[str, Any] | None:
        found = await condition(kube, namespace, "crash", cond.READY)
        return found if found and found["reason"] == cond.REASON_MODEL_LOAD_FAILED else None

    ready = await eventually(reported, 15, interval=0.2, what="Ready=False/ModelLoadFailed")
    assert ready["status"] == "False" and message in ready["message"] and "code 1" in ready["message"]
    live = await kube.get(PODS, name, namespace)
    assert (
        live["status"]["containerStatuses"][0]["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"
    )
    info = (await kube.get(MODELSERVICES, "crash", namespace))["status"]["lastFailureInfo"]
    assert (info["reason"], info["exitCode"], info["pod"]) == (cond.REASON_MODEL_LOAD_FAILED, 1, name)
    await operator.wait_passes("resync", 3)
    warnings = [e for e in await events_of(kube, namespace, "crash") if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == [cond.REASON_MODEL_LOAD_FAILED]


async def test_risky_spec_and_gpu_cap_warn_once(
    kube: KubeClient,
    kubectl: Kubectl,
    namespace: str,
    operator_kubeconfig: Path,
    operator_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """An operator with maxGpusPerModelService=4 (the chart's value) and a spec asking for 5 x 2 GPUs
    with a toleration of every taint: both are said once, and the cap holds."""
    capped_env = {**operator_env, "GREENSERVE_MAX_GPUS_PER_MODELSERVICE": "4"}
    operator = OperatorProcess(operator_kubeconfig, tmp_path, extra_env=capped_env)
    operator.start()
    try:
        await _risky(kube, kubectl, namespace, operator)
    finally:
        operator.stop()
    assert rbac_denials(operator.logs()) == []


async def _risky(kube: KubeClient, kubectl: Kubectl, namespace: str, operator: OperatorProcess) -> None:
    spec = {
        "gpu": {"count": 2, "tolerations": [{"operator": "Exists"}]},
        "scaling": {"minReplicas": 5, "maxReplicas": 5},
    }
    kubectl.apply(modelservice("risky", namespace, **spec))

    async def warned() -> dict[str, Any] | None:
        found = await condition(kube, namespace, "risky", cond.WARNINGS)
        return found if found and found["status"] == "True" else None

    found = await eventually(warned, 60, what="Warnings=True")
    assert "WildcardToleration" in found["message"] and cond.REASON_GPU_CAP in found["message"]

    async def capped() -> dict[str, Any] | None:
        dep = await kube.get_or_none(DEPLOYMENTS, "risky", namespace)
        s = await condition(kube, namespace, "risky", cond.SCALING)
        return (
            s if dep and dep["spec"]["replicas"] == 2 and s and s["reason"] == cond.REASON_GPU_CAP else None
        )

    await eventually(capped, 60, what="2 replicas (4 GPUs) and Scaling reason GpuCapReached")
    await operator.wait_passes("resync", 3)
    dep = await kube.get(DEPLOYMENTS, "risky", namespace)
    assert dep["spec"]["replicas"] == 2, "the cap holds across passes"
    warnings = sorted(
        e["reason"] for e in await events_of(kube, namespace, "risky") if e["type"] == "Warning"
    )
    assert warnings == sorted([cond.REASON_GPU_CAP, "WildcardToleration"])


async def test_deletion_while_the_operator_is_stopped(
    kube: KubeClient, kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.apply(modelservice("bye", namespace))

    async def handled() -> dict[str, Any] | None:
        msvc = await kube.get_or_none(MODELSERVICES, "bye", namespace)
        return (
            msvc if cond.is_true(((msvc or {}).get("status") or {}).get("conditions"), cond.READY) else None
        )

    msvc = await eventually(handled, 90, what="bye Ready=True")
    assert msvc["metadata"].get("finalizers") in (None, [])
    operator.stop()
    assert not operator.alive
    kubectl.run("delete", "msvc", "bye", "-n", namespace, "--timeout=30s")

    async def gone() -> bool:
        return await kube.get_or_none(MODELSERVICES, "bye", namespace) is None

    await eventually(gone, 30, what="the ModelService gone with no operator running")


async def test_a_finalizer_from_an_older_version_is_removed(
    kube: KubeClient, kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    """Objects an older greenserve marked with greenserve.io/finalizer are freed on upgrade."""
    operator.stop()
    body = modelservice("old", namespace)
    body["metadata"]["finalizers"] = [f"{c.GROUP}/finalizer"]
    kubectl.apply(body)
    operator.start()

    async def freed() -> bool:
        msvc = await kube.get_or_none(MODELSERVICES, "old", namespace)
        return msvc is not None and not msvc["metadata"].get("finalizers")

    await eventually(freed, 60, what="the old finalizer removed")
