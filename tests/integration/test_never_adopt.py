"""The operator never takes over, and so never deletes, what is not its own (issue 15): a ModelService
named like an unrelated Service, ConfigMap and Deployment leaves all three untouched, before and after it
is deleted, reports why it cannot proceed, and recovers once the conflict is gone."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from greenserve.api import conditions as cond
from greenserve.api import constants as c
from greenserve.cluster.client import CONFIGMAPS, DEPLOYMENTS, EVENTS, MODELSERVICES, SERVICES, KubeClient
from integration.test_modelservice import modelservice, ready_condition
from support.kube import Kubectl, OperatorProcess, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

NAME = "taken"


def unrelated(namespace: str) -> list[dict[str, Any]]:
    labels = {"app": "someone-else"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": NAME, "namespace": namespace, "labels": labels},
            "spec": {"selector": labels, "ports": [{"name": "web", "port": 80, "targetPort": 8080}]},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{NAME}-config", "namespace": namespace, "labels": labels},
            "data": {"precious": "their data"},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]},
                },
            },
        },
    ]


def intent(obj: dict[str, Any]) -> dict[str, Any]:
    """What a takeover would change: everything but the status and the server's bookkeeping of it."""
    out = copy.deepcopy(obj)
    out.pop("status", None)
    meta = out["metadata"]
    for volatile in ("resourceVersion", "managedFields"):
        meta.pop(volatile, None)
    meta["managers"] = sorted({m["manager"] for m in obj["metadata"].get("managedFields") or []})
    return out


async def snapshot(kube: KubeClient, namespace: str) -> dict[str, dict[str, Any]]:
    return {
        "service": intent(await kube.get(SERVICES, NAME, namespace)),
        "configmap": intent(await kube.get(CONFIGMAPS, f"{NAME}-config", namespace)),
        "deployment": intent(await kube.get(DEPLOYMENTS, NAME, namespace)),
    }


async def test_a_modelservice_never_adopts_objects_that_are_not_its_own(
    kube: KubeClient, kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    for obj in unrelated(namespace):
        kubectl.apply(obj)

    async def settled() -> bool:
        # The deployment controller stamps its revision annotation after the create; a snapshot taken
        # before that would blame the operator for kube-controller-manager's own write.
        dep = await kube.get(DEPLOYMENTS, NAME, namespace)
        observed = (dep.get("status") or {}).get("observedGeneration")
        annotations = dep["metadata"].get("annotations") or {}
        stamped = "deployment.kubernetes.io/revision" in annotations
        return observed == dep["metadata"]["generation"] and stamped

    await eventually(settled, 30, what="the deployment controller to observe their Deployment")
    before = await snapshot(kube, namespace)
    service_rv = (await kube.get(SERVICES, NAME, namespace))["metadata"]["resourceVersion"]
    kubectl.apply(modelservice(NAME, namespace, runtime={"batching": {"enabled": True}}))

    async def conflicted() -> dict[str, Any] | None:
        ready = await ready_condition(kube, namespace, NAME)
        return ready if ready and ready["reason"] == cond.REASON_CONFLICTING_OBJECT else None

    ready = await eventually(conflicted, 60, what="Ready=False/ConflictingObject")
    assert ready["status"] == "False" and f"{namespace}/" in ready["message"]
    await operator.wait_passes("resync", 3)  # it had every chance to touch them
    assert await snapshot(kube, namespace) == before
    assert (await kube.get(SERVICES, NAME, namespace))["metadata"]["resourceVersion"] == service_rv
    events = await kube.list_objects(EVENTS, namespace, field_selector=f"involvedObject.name={NAME}")
    warnings = [e for e in events if e["reason"] == cond.REASON_CONFLICTING_OBJECT]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"

    # Deleting the ModelService deletes nothing of theirs (no owner reference was ever added).
    kubectl.run("delete", "-n", namespace, f"msvc/{NAME}", "--wait=true", "--timeout=60s")

    async def gone() -> bool:
        return await kube.get_or_none(MODELSERVICES, NAME, namespace) is None

    await eventually(gone, 60, what="the ModelService deleted")
    await operator.wait_passes("resync", 2)
    assert await snapshot(kube, namespace) == before


async def test_the_conflict_clears_once_the_object_is_gone(
    kube: KubeClient, kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.apply(unrelated(namespace)[0])  # only the Service is in the way
    kubectl.apply(modelservice(NAME, namespace))

    async def reason() -> str | None:
        ready = await ready_condition(kube, namespace, NAME)
        return ready["reason"] if ready else None

    assert await eventually(reason, 60, what="a Ready condition") == cond.REASON_CONFLICTING_OBJECT
    assert await kube.get_or_none(DEPLOYMENTS, NAME, namespace) is None  # nothing was half-applied
    await kube.delete(SERVICES, NAME, namespace)

    async def recovered() -> str | None:
        got = await reason()
        return got if got not in (None, cond.REASON_CONFLICTING_OBJECT) else None

    await eventually(recovered, 90, what="the conflict cleared by itself")
    svc = await kube.get(SERVICES, NAME, namespace)
    assert svc["metadata"]["labels"][c.LABEL_MANAGED_BY] == c.MANAGED_BY  # now it is ours
