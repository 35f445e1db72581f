"""Scale to zero and back on the local control plane: the Service's routing switches (selector off and the
operator's EndpointSlice to the activator, back make-before-break) and the activator's demand mark waking
the ModelService, with the chart's RBAC and admission policies for both the operator and the activator.

kwok runs the chart's activator pod (a Ready pod with an address, no process), which is all the routing
needs; the activator's own requests are sent from here as its ServiceAccount (activator/kube.py
KubeCluster), so its RBAC and admission policy are the chart's. The policy's decision to park an idle
model is unit-tested (tests/unit/policy/test_scale_to_zero_policy.py); here the count goes to zero the way the
autoscaler writes it, in status.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from greenserve.activator.kube import KubeCluster
from greenserve.api import conditions as cond
from greenserve.api import constants as c
from greenserve.cluster.client import (
    DEPLOYMENTS,
    ENDPOINTSLICES,
    EVENTS,
    MODELSERVICES,
    SERVICES,
    ApiError,
    KubeClient,
    load_kubeconfig,
)
from greenserve.manifests.builders import private_service_name
from support.chart import chart_operator_env, helm, release_name, service_account_kubeconfig
from support.fixtures import OPERATOR_NAMESPACE
from support.kube import Kubectl, OperatorProcess, eventually, harness_bin

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def activator_names(kubectl: Kubectl) -> tuple[str, str]:
    """(ServiceAccount, Service) of the chart's activator in the operator's release."""
    manifest = helm(
        harness_bin() / "helm",
        "get",
        "manifest",
        release_name(OPERATOR_NAMESPACE),
        "--namespace",
        OPERATOR_NAMESPACE,
        kubeconfig=kubectl.kubeconfig,
    ).stdout
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    component = "app.kubernetes.io/component"
    ours = [d for d in docs if d["metadata"].get("labels", {}).get(component) == "activator"]
    (account,) = [d["metadata"]["name"] for d in ours if d["kind"] == "ServiceAccount"]
    (service,) = [d["metadata"]["name"] for d in ours if d["kind"] == "Service"]
    return account, service


@pytest.fixture
def activator_operator(
    operator_kubeconfig: Path, kubectl: Kubectl, tmp_path: Path
) -> Iterator[OperatorProcess]:
    _, service = activator_names(kubectl)
    env = {
        **chart_operator_env(OPERATOR_NAMESPACE),
        "GREENSERVE_ACTIVATOR_SERVICE": f"{OPERATOR_NAMESPACE}/{service}",
        "GREENSERVE_RECONCILE_INTERVAL": "2",
    }
    proc = OperatorProcess(operator_kubeconfig, tmp_path, extra_env=env)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
async def as_activator(kubectl: Kubectl, tmp_path: Path) -> Any:
    account, _ = activator_names(kubectl)
    path = service_account_kubeconfig(kubectl, OPERATOR_NAMESPACE, account, tmp_path / "activator.kubeconfig")
    client = KubeClient(load_kubeconfig(path))
    yield client
    await client.close()


def modelservice(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": "resnet", "storageUri": "/models/resnet"},
            "gpu": {"count": 0},
            "scaling": {"minReplicas": 0, "maxReplicas": 2, "scaleToZeroAfterSeconds": 30},
        },
    }


async def activator_addresses(kube: KubeClient, service: str) -> list[str] | None:
    slices = await kube.list_objects(
        ENDPOINTSLICES, OPERATOR_NAMESPACE, label_selector=f"{c.LABEL_SERVICE_NAME}={service}"
    )
    found = [a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]]
    return found or None


async def test_routes_to_the_activator_at_zero_and_back_on_demand(
    kube: KubeClient,
    kubectl: Kubectl,
    namespace: str,
    activator_operator: OperatorProcess,
    as_activator: KubeClient,
) -> None:
    _, activator_service = activator_names(kubectl)
    activator_ips = await eventually(
        lambda: activator_addresses(kube, activator_service), 90, what="kwok to run the chart's activator pod"
    )
    kubectl.apply(modelservice("m", namespace))

    async def serving() -> dict[str, Any] | None:
        msvc = await kube.get(MODELSERVICES, "m", namespace)
        st = msvc.get("status") or {}
        return st if st.get("readyReplicas") == 1 and st.get("routing") == "Replicas" else None

    await eventually(serving, 90, what="one ready replica, routed to it")
    svc = await kube.get(SERVICES, "m", namespace)
    assert svc["spec"]["selector"] == {c.LABEL_MODELSERVICE: "m"}
    private = await kube.get(SERVICES, private_service_name("m"), namespace)
    assert private["spec"]["selector"] == {c.LABEL_MODELSERVICE: "m"}
    assert private["spec"]["clusterIP"] == "None"

    # The autoscaler parks it (the decision it writes to status; the policy is unit-tested).
    await kube.patch_status(MODELSERVICES, "m", namespace, {"desiredReplicas": 0})

    async def at_zero() -> dict[str, Any] | None:
        svc = await kube.get(SERVICES, "m", namespace)
        eps = await kube.get_or_none(ENDPOINTSLICES, "m-activator", namespace)
        msvc = await kube.get(MODELSERVICES, "m", namespace)
        ready = cond.get_condition((msvc.get("status") or {}).get("conditions"), cond.READY) or {}
        routed = "selector" not in svc["spec"] and eps is not None and eps["endpoints"]
        # status.routing records the route once it is applied: the status write follows the Service's.
        recorded = (msvc.get("status") or {}).get("routing") == "Activator"
        return msvc if routed and recorded and ready.get("reason") == cond.REASON_SCALED_TO_ZERO else None

    await eventually(at_zero, 60, what="the Service routed to the activator at zero, and status saying so")
    dep = await kube.get(DEPLOYMENTS, "m", namespace)
    assert dep["spec"]["replicas"] == 0
    eps = await kube.get(ENDPOINTSLICES, "m-activator", namespace)
    labels = eps["metadata"]["labels"]
    assert labels[c.LABEL_ENDPOINTSLICE_MANAGED_BY] == c.ENDPOINTSLICE_MANAGER
    assert labels[c.LABEL_SERVICE_NAME] == "m"
    assert sorted(a for e in eps["endpoints"] for a in e["addresses"]) == sorted(activator_ips)
    assert eps["ports"][0]["name"] == "http" and eps["ports"][0]["port"] == 8012

    assert (await kube.get(ENDPOINTSLICES, "m-activator", namespace))["endpoints"] == eps["endpoints"]

    # The activator, with its own ServiceAccount: nothing ready behind the private Service, so it marks
    # demand; a write beyond that annotation is refused by the chart's admission policy.
    cluster = KubeCluster(as_activator)
    assert await cluster.ready_endpoints(namespace, "m") == []
    with pytest.raises(ApiError) as refused:
        await as_activator.patch(MODELSERVICES, "m", {"spec": {"scaling": {"maxReplicas": 1}}}, namespace)
    assert refused.value.status in (403, 422)
    assert await cluster.service_by_ip(svc["spec"]["clusterIP"]) == (namespace, "m")
    marked_at = time.time()
    assert await cluster.mark_demand(namespace, "m", marked_at) is not None

    async def woken() -> dict[str, Any] | None:
        msvc = await kube.get(MODELSERVICES, "m", namespace)
        return msvc if (msvc.get("status") or {}).get("desiredReplicas") == 1 else None

    await eventually(woken, 30, what="the demand mark to wake the ModelService")

    async def rescaled() -> list[str] | None:
        events = await kube.list_objects(EVENTS, namespace, field_selector="involvedObject.name=m")
        found = [e["message"] for e in events if e.get("reason") == cond.EVENT_RESCALE]
        return [m for m in found if "0 to 1" in m and "ActivatorDemand" in m] or None

    await eventually(rescaled, 30, what="the rescale Event naming the activator's demand")

    async def back() -> dict[str, Any] | None:
        svc = await kube.get(SERVICES, "m", namespace)
        eps = await kube.get(ENDPOINTSLICES, "m-activator", namespace)
        msvc = await kube.get(MODELSERVICES, "m", namespace)
        st = msvc.get("status") or {}
        done = svc["spec"].get("selector") and not eps.get("endpoints") and st.get("routing") == "Replicas"
        return msvc if done else None

    await eventually(back, 90, what="the Service back on its replicas, the activator's slice emptied")
    ready = await cluster.ready_endpoints(namespace, "m")
    assert len(ready) == 1 and ready[0].port == 8501
