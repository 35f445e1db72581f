"""The local control plane can test what users run (issue 17): it holds 1,000 ModelServices with their
Services (kube-apiserver's default Service range, 10.0.0.0/24, stopped at 254), and it restarts
kube-controller-manager and kube-scheduler when they exit (tests/harness/cluster.sh)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from greenserve.api import constants as c
from greenserve.api.v1alpha1 import parse_spec
from greenserve.cluster.client import DEPLOYMENTS, MODELSERVICES, PODS, SERVICES, KubeClient
from greenserve.manifests import builders
from support.kube import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 1000
SERVICE_CIDR = ipaddress.ip_network(os.environ.get("GREENSERVE_SERVICE_CIDR", "10.96.0.0/16"))


def _msvc(name: str, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "model": {"name": name, "storageUri": f"/models/{name}"},
            "scaling": {"minReplicas": 1, "maxReplicas": 2},
        },
    }


@pytest.mark.timeout(300)
async def test_the_cluster_holds_a_thousand_modelservices_with_their_services(
    kube: KubeClient, namespace: str
) -> None:
    """Created without the operator (its own scale is measured elsewhere): each ModelService and the
    Service the operator would give it, owned by it. Every Service gets its own cluster IP."""
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        name = f"m{i:04d}"
        async with gate:
            created = await kube.create(MODELSERVICES, _msvc(name, namespace), namespace)
            owner = builders.Owner(name, namespace, created["metadata"]["uid"])
            spec = parse_spec(created["spec"])
            await kube.create(SERVICES, builders.service(owner, spec), namespace)

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(N)))
    elapsed = time.monotonic() - t0
    msvcs = await kube.list_objects(MODELSERVICES, namespace)
    services = await kube.list_objects(SERVICES, namespace, label_selector=c.LABEL_MODELSERVICE)
    print(f"{N} ModelServices and {N} Services created in {elapsed:.1f} s")
    assert len(msvcs) == N and len(services) == N
    uids = {m["metadata"]["uid"] for m in msvcs}
    ips = set()
    for svc in services:
        assert svc["metadata"]["ownerReferences"][0]["uid"] in uids
        ip = ipaddress.ip_address(svc["spec"]["clusterIP"])
        assert ip in SERVICE_CIDR
        ips.add(ip)
    assert len(ips) == N

    # Leave nothing behind: a thousand ModelServices still draining from a terminating namespace would
    # flood the next test's operator with events, and its own object would wait behind them.
    await kube.request("DELETE", MODELSERVICES.path(namespace))  # deletecollection

    async def drained() -> bool:
        return not await kube.list_objects(MODELSERVICES, namespace)

    await eventually(drained, 120, interval=1.0, what="the thousand ModelServices deleted")


def _cluster_dir(kubeconfig: Path) -> Path:
    # kwokctl names the context kwok-<cluster> and keeps the cluster's pids under its workdir.
    context = yaml.safe_load(kubeconfig.read_text())["current-context"]
    assert context.startswith("kwok-"), context
    workdir = Path(os.environ.get("KWOK_WORKDIR", Path.home() / ".kwok"))
    return workdir / "clusters" / context.removeprefix("kwok-")


def _pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


@pytest.mark.timeout(180)
async def test_controller_manager_and_scheduler_come_back_after_they_exit(
    kube: KubeClient, namespace: str, kubeconfig: Path
) -> None:
    pids = _cluster_dir(kubeconfig) / "pids"
    old = {}
    for component in ("kube-controller-manager", "kube-scheduler"):
        pid = _pid(pids / f"{component}.pid")
        assert pid is not None, f"{component} is not running"
        old[component] = pid
        os.kill(pid, 15)  # as when they lose leader election while kube-apiserver is away

    async def restarted() -> dict[str, int] | None:
        now = {comp: _pid(pids / f"{comp}.pid") for comp in old}
        fresh = {comp: pid for comp, pid in now.items() if pid is not None and pid != old[comp]}
        return fresh if len(fresh) == len(old) else None

    await eventually(restarted, 60, interval=1, what="kube-controller-manager and kube-scheduler restarted")
    # And they work: a Deployment gets a ReplicaSet and a pod (controller-manager), scheduled (scheduler).
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "after-restart", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "after-restart"}},
            "template": {
                "metadata": {"labels": {"app": "after-restart"}},
                "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    }
    await kube.create(DEPLOYMENTS, deployment, namespace)

    async def scheduled() -> str | None:
        pods = await kube.list_objects(PODS, namespace, label_selector="app=after-restart")
        return next((p["spec"].get("nodeName") for p in pods if p["spec"].get("nodeName")), None)

    await eventually(scheduled, 90, interval=1, what="a pod created and scheduled after the restart")
