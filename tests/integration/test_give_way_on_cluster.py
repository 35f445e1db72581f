"""Held replicas give way to a scale-up on the control plane (kwok nodes): the node is full, one
ModelService's stabilisation window holds replicas its load no longer asks for, another needs one more.
The held replica is released, and the scale-up takes its GPU once it has drained, on the same node
(policy/release.py, reconcile/give_way.py)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from greenserve.api import constants as c
from greenserve.cluster.client import DEPLOYMENTS, EVENTS, PODS, KubeClient
from support.fake_prometheus import FakePrometheus
from support.http import local_server
from support.kube import Kubectl, OperatorProcess, eventually, kwok_gpu_node, rbac_denials

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
PRODUCT = "TEST-GIVE-WAY"


@pytest.fixture
def node(kubectl: Kubectl) -> Iterator[str]:
    name = f"give-way-{secrets.token_hex(3)}"
    kubectl.apply(kwok_gpu_node(name, PRODUCT, 4))
    kubectl.run("wait", "--for=condition=Ready", f"node/{name}", "--timeout=60s")
    yield name
    kubectl.run("delete", "node", name, "--wait=false", check=False)


@pytest.fixture
async def prometheus(kube: KubeClient, namespace: str) -> AsyncIterator[tuple[FakePrometheus, str]]:
    fake = FakePrometheus(kube, namespace)
    app = web.Application()
    app.router.add_route("*", "/api/v1/query", fake.query)
    app.router.add_route("*", "/api/v1/query_range", fake.query_range)
    async with local_server(app) as port:
        yield fake, f"http://127.0.0.1:{port}"


def msvc(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": name, "storageUri": f"/models/{name}"},
            "gpu": {"count": 1, "product": PRODUCT, "sharing": "Exclusive"},
            # 10 req/s a replica; a replica held 60 s after its load left: less than a node takes.
            "scaling": {"minReplicas": 1, "maxReplicas": 4, "target": 10, "scaleDownDelaySeconds": 60},
        },
    }


async def pods_of(kube: KubeClient, ns: str, name: str) -> list[dict[str, Any]]:
    return await kube.list_objects(PODS, ns, label_selector=f"{c.LABEL_MODELSERVICE}={name}")


def running_on(pods: list[dict[str, Any]], node: str) -> int:
    return sum(
        1
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and p["spec"].get("nodeName") == node
        and (p.get("status") or {}).get("phase") == "Running"
    )


async def test_a_held_replica_gives_way_and_the_scale_up_lands_on_its_gpu(
    kube: KubeClient,
    kubectl: Kubectl,
    namespace: str,
    node: str,
    operator_kubeconfig: Path,
    operator_env: dict[str, str],
    tmp_path: Path,
    prometheus: tuple[FakePrometheus, str],
) -> None:
    fake, url = prometheus
    env = {
        **operator_env,
        "GREENSERVE_PROMETHEUS_URL": url,
        "GREENSERVE_METRICS_WINDOW": "60",
        "GREENSERVE_CONSOLIDATION": "true",  # its informers are the view of free GPUs
        "GREENSERVE_CONSOLIDATION_INTERVAL": "3",
    }
    proc = OperatorProcess(operator_kubeconfig, tmp_path, extra_env=env)
    proc.start()
    try:
        fake.rps = {"held": 25.0, "rising": 5.0}
        kubectl.apply(msvc("held", namespace))
        kubectl.apply(msvc("rising", namespace))

        async def full() -> bool:
            held, rising = await pods_of(kube, namespace, "held"), await pods_of(kube, namespace, "rising")
            return running_on(held, node) == 3 and running_on(rising, node) == 1

        await eventually(full, 120, 1.0, "3 + 1 replicas filling the node's 4 GPUs")
        fake.rps = {"held": 5.0, "rising": 15.0}  # held's load asks for 1 now, rising's for 2

        early: list[int] = []  # rising's count while a released replica still drains

        async def moved() -> bool:
            held, rising = await pods_of(kube, namespace, "held"), await pods_of(kube, namespace, "rising")
            dep = await kube.get(DEPLOYMENTS, "rising", namespace)
            if any(p["metadata"].get("deletionTimestamp") for p in held):
                early.append(int(dep["spec"]["replicas"]))
            return running_on(rising, node) == 2

        await eventually(moved, 150, 0.5, "rising's second replica on the GPU held's gave up")
        events = await kube.list_objects(EVENTS, namespace, field_selector="involvedObject.name=held")
        released = [e["message"] for e in events if "ReleasedForScaleUp" in (e.get("message") or "")]
        assert released, [e.get("message") for e in events]
        assert "Scaled from 3 to 2" in released[0]
        # The scale-up never ran ahead of a drain (kwok lets a deleted pod go at once, so this is seldom
        # sampled here; tests/unit/reconcile/test_give_way.py holds a drain open).
        assert set(early) <= {1}, early
        rising = await pods_of(kube, namespace, "rising")
        assert {p["spec"].get("nodeName") for p in rising} == {node}
    finally:
        proc.stop()
        logs = proc.logs()
        print(logs[-5000:])
        assert not rbac_denials(logs), rbac_denials(logs)[:3]
