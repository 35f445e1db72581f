"""Held replicas give way to a scale-up on the control plane (kwok nodes): the node is full, one
ModelService's stabilisation window holds replicas its load no longer asks for, another needs one more.
The held replica is released, and the scale-up takes its GPU once it has drained, on the same node
(policy/release.py, reconcile/give_way.py)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenserve.api import constants as c
from greenserve.cluster.client import DEPLOYMENTS, EVENTS, PODS, KubeClient
from support.fake_prometheus import FakePrometheus
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
    fake_prometheus: tuple[FakePrometheus, str],
) -> None:
    fake, url = fake_prometheus
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


@pytest.fixture
def three_nodes(kubectl: Kubectl) -> Iterator[list[str]]:
    """Two nodes of 4 GPUs and one of 2, of their own product."""
    suffix = secrets.token_hex(3)
    names = [f"give-way-a-{suffix}", f"give-way-b-{suffix}", f"give-way-c-{suffix}"]
    for name, gpus in zip(names, (4, 4, 2), strict=True):
        kubectl.apply(kwok_gpu_node(name, PAIR_PRODUCT, gpus))
        kubectl.run("wait", "--for=condition=Ready", f"node/{name}", "--timeout=60s")
    yield names
    for name in names:
        kubectl.run("delete", "node", name, "--wait=false", check=False)


PAIR_PRODUCT = "TEST-GIVE-WAY-PAIR"


def pair_msvc(name: str, namespace: str, gpus: int, delay_s: int) -> dict[str, Any]:
    body = msvc(name, namespace)
    body["spec"]["gpu"] = {"count": gpus, "product": PAIR_PRODUCT, "sharing": "Exclusive"}
    body["spec"]["scaling"]["scaleDownDelaySeconds"] = delay_s
    return body


async def test_a_replica_of_two_gpus_takes_a_held_pair_not_the_one_gpu_free_on_each_of_two_nodes(
    kube: KubeClient,
    kubectl: Kubectl,
    namespace: str,
    three_nodes: list[str],
    operator_kubeconfig: Path,
    operator_env: dict[str, str],
    tmp_path: Path,
    fake_prometheus: tuple[FakePrometheus, str],
) -> None:
    """Nodes a and b each hold a replica of `pair` (2 GPUs) and one of `one` (1 GPU), so each has 1 GPU
    free; node c holds `rising`'s replica of 2. `rising` asks for a second: 2 GPUs free in sum, but on no
    one node, so counted per node it is short, and `pair`, whose window alone holds its second replica,
    gives it way (released, its node has 3 free). Counted in sum, nothing was short: `rising` waited
    pending for `pair`'s window to end."""
    a, b, node_c = three_nodes
    fake, url = fake_prometheus
    env = {
        **operator_env,
        "GREENSERVE_PROMETHEUS_URL": url,
        "GREENSERVE_METRICS_WINDOW": "60",
        "GREENSERVE_CONSOLIDATION": "true",
        "GREENSERVE_CONSOLIDATION_INTERVAL": "3",
    }

    async def placed(name: str, node: str, count: int) -> None:
        async def there() -> bool:
            return running_on(await pods_of(kube, namespace, name), node) == count

        await eventually(there, 120, 1.0, f"{count} of {name}'s replicas running on {node}")

    def only(node: str) -> None:
        """New pods go to `node` alone: the others are cordoned (placement is the test's, not the
        scheduler's spreading)."""
        for n in three_nodes:
            kubectl.run("uncordon" if n == node else "cordon", n)

    proc = OperatorProcess(operator_kubeconfig, tmp_path, extra_env=env)
    proc.start()
    try:
        only(a)
        fake.rps = {"pair": 5.0, "one": 5.0}
        # pair's window (100 s) ends before a node asked for now would be ready (120 s): it may give way.
        kubectl.apply(pair_msvc("pair", namespace, 2, 100))
        kubectl.apply(pair_msvc("one", namespace, 1, 600))
        await placed("pair", a, 1)
        await placed("one", a, 1)
        only(b)
        fake.rps = {"pair": 15.0, "one": 15.0}  # 2 replicas each
        await placed("pair", b, 1)
        await placed("one", b, 1)
        only(node_c)
        fake.rps["rising"] = 5.0
        kubectl.apply(pair_msvc("rising", namespace, 2, 600))
        await placed("rising", node_c, 1)
        for n in three_nodes:
            kubectl.run("uncordon", n)

        fake.rps = {"pair": 5.0, "one": 15.0, "rising": 15.0}  # pair's load asks for 1, rising's for 2

        async def landed() -> bool:
            pods = await pods_of(kube, namespace, "rising")
            return running_on(pods, a) + running_on(pods, b) == 1

        await eventually(landed, 90, 0.5, "rising's second replica where pair's released replica was")
        events = await kube.list_objects(EVENTS, namespace, field_selector="involvedObject.name=pair")
        released = [e["message"] for e in events if "ReleasedForScaleUp" in (e.get("message") or "")]
        assert released, [e.get("message") for e in events]
        # `one` kept both replicas: a replica of 1 GPU would not have made room.
        events = await kube.list_objects(EVENTS, namespace, field_selector="involvedObject.name=one")
        assert not [e for e in events if "ReleasedForScaleUp" in (e.get("message") or "")]
        one = await pods_of(kube, namespace, "one")
        assert sum(running_on(one, n) for n in three_nodes) == 2, [e.get("message") for e in events]
    finally:
        proc.stop()
        logs = proc.logs()
        print(logs[-5000:])
        assert not rbac_denials(logs), rbac_denials(logs)[:3]
