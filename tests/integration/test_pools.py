"""Shared GPU pools on the control plane (kwok nodes): the pool Deployment and its model list, the routing
labels, the Services' selectors, and a move out of the pool that never leaves the Service without a
ready endpoint.

kwok runs no containers, so a small server in the test answers each pool pod's model status (the
operator's GREENSERVE_MODEL_STATUS_URL points at it): a model is AVAILABLE on a pool pod when the pool's
ConfigMap lists it, as a real pod's model server would report once it has read the list.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from greenserve.api import conditions as cond
from greenserve.api import constants as c
from greenserve.cluster.client import (
    CONFIGMAPS,
    DEPLOYMENTS,
    ENDPOINTSLICES,
    MODELSERVICES,
    PODS,
    SERVICES,
    KubeClient,
)
from greenserve.manifests import pools as pm
from support.kube import Kubectl, OperatorProcess, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

KEY_IMAGE = c.DEFAULT_SERVING_IMAGE


def msvc(name: str, namespace: str, **gpu: Any) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": name, "storageUri": f"/models/{name}"},
            "gpu": {"count": 1, "memory": "2Gi", **gpu},
            "scaling": {"minReplicas": 1, "maxReplicas": 2},
        },
    }


@pytest.fixture
async def model_status(kube: KubeClient) -> AsyncIterator[str]:
    async def status(request: web.Request) -> web.Response:
        ns, model = request.match_info["namespace"], request.match_info["model"]
        pods = await kube.get_or_none(PODS, request.match_info["pod"], ns)
        pool = ((pods or {}).get("metadata") or {}).get("labels", {}).get(c.LABEL_POOL)
        cm = await kube.get_or_none(CONFIGMAPS, f"{pool}-models", ns) if pool else None
        if cm is None or f'name: "{model}"' not in cm["data"][pm.MODEL_CONFIG_KEY]:
            return web.json_response({"error": f"Could not find any versions of model {model}"}, status=404)
        return web.json_response({"model_version_status": [{"version": "1", "state": "AVAILABLE"}]})

    app = web.Application()
    app.router.add_get("/{namespace}/{pod}/v1/models/{model}", status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/{{namespace}}/{{pod}}/v1/models/{{model}}"
    await runner.cleanup()


@pytest.fixture
def pool_operator(
    operator_kubeconfig: Path, operator_env: dict[str, str], tmp_path: Path, model_status: str
) -> Iterator[OperatorProcess]:
    env = {**operator_env, "GREENSERVE_MODEL_STATUS_URL": model_status, "GREENSERVE_POOL_UNLOAD_GRACE": "2"}
    proc = OperatorProcess(operator_kubeconfig, tmp_path, extra_env=env)
    proc.start()
    yield proc
    proc.stop()
    logs = proc.logs()
    print(logs[-5000:])
    assert "Forbidden" not in logs, "the chart's RBAC or admission policy refused the operator"


async def ready_reason(kube: KubeClient, ns: str, name: str) -> str | None:
    body = await kube.get_or_none(MODELSERVICES, name, ns)
    ready = cond.get_condition((body or {}).get("status", {}).get("conditions"), cond.READY)
    return str(ready["reason"]) if ready and ready["status"] == "True" else None


async def ready_endpoints(kube: KubeClient, ns: str, service: str) -> set[str]:
    slices = await kube.list_objects(
        ENDPOINTSLICES, ns, label_selector=f"kubernetes.io/service-name={service}"
    )
    return {
        str(ep["targetRef"]["name"])
        for sl in slices
        for ep in sl.get("endpoints") or []
        if (ep.get("conditions") or {}).get("ready") and ep.get("targetRef")
    }


async def test_low_traffic_models_share_one_pool_pod_and_one_moves_out_without_a_gap(
    kube: KubeClient, kubectl: Kubectl, namespace: str, pool_operator: OperatorProcess
) -> None:
    names = [f"small-{i}" for i in range(4)]
    for name in names:
        kubectl.apply(msvc(name, namespace))
    kubectl.apply(msvc("solo", namespace, sharing="Exclusive"))
    key = pm.PoolKey(namespace, None, KEY_IMAGE)

    # One pool Deployment of one pod (one GPU) serves the four; each is Ready through it.
    async def all_served() -> bool:
        reasons = [await ready_reason(kube, namespace, n) for n in names]
        return all(r == cond.REASON_SHARED_POOL for r in reasons)

    await eventually(all_served, 180, 1.0, "every small model Ready from the shared pool")
    dep = await kube.get(DEPLOYMENTS, key.name, namespace)
    assert dep["spec"]["replicas"] == 1
    cm = await kube.get(CONFIGMAPS, pm.config_map_name(key), namespace)
    assert all(f'name: "{n}"' in cm["data"][pm.MODEL_CONFIG_KEY] for n in names)
    assert "solo" not in cm["data"][pm.MODEL_CONFIG_KEY]
    (pool_pod,) = [
        p for p in await kube.list_objects(PODS, namespace, label_selector=f"{c.LABEL_POOL}={key.name}")
        if not p["metadata"].get("deletionTimestamp")
    ]  # fmt: skip
    labels = pool_pod["metadata"]["labels"]
    assert {n: labels.get(f"model.greenserve.io/{n}") for n in names} == dict.fromkeys(names, "available")
    gpus = [ctr["resources"]["limits"][c.GPU_RESOURCE] for ctr in pool_pod["spec"]["containers"]]
    assert gpus == ["1"]
    for n in names:
        assert (await kube.get(DEPLOYMENTS, n, namespace))["spec"]["replicas"] == 0
        assert (await kube.get(SERVICES, n, namespace))["spec"]["selector"] == {
            f"model.greenserve.io/{n}": "available"
        }
        await eventually(
            lambda n=n: _has(kube, namespace, n, pool_pod["metadata"]["name"]), 60, 0.5, f"{n} routed"
        )
    assert (await kube.get(SERVICES, "solo", namespace))["spec"]["selector"] == {c.LABEL_MODELSERVICE: "solo"}
    placed = (await kube.get(MODELSERVICES, "small-0", namespace))["status"]["placement"]
    assert placed["shared"] is True and placed["pool"] == key.name

    # small-0 made Exclusive: it moves to its own replica. Sample its Service's ready endpoints all along.
    moving = "small-0"
    seen: list[set[str]] = []
    done = asyncio.Event()

    async def watch_endpoints() -> None:
        while not done.is_set():
            seen.append(await ready_endpoints(kube, namespace, moving))
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch_endpoints())
    kubectl.run(
        "patch", "modelservice", moving, "-n", namespace, "--type=merge",
        "-p", '{"spec": {"gpu": {"sharing": "Exclusive"}}}',
    )  # fmt: skip

    async def moved_out() -> bool:
        cm = await kube.get(CONFIGMAPS, pm.config_map_name(key), namespace)
        svc = await kube.get(SERVICES, moving, namespace)
        return f'name: "{moving}"' not in cm["data"][pm.MODEL_CONFIG_KEY] and svc["spec"]["selector"] == {
            c.LABEL_MODELSERVICE: moving
        }

    await eventually(moved_out, 180, 1.0, f"{moving} out of the pool onto its own replica")
    await asyncio.sleep(1.0)  # a few more samples after the switch back to its own selector
    done.set()
    await watcher
    pool_name = pool_pod["metadata"]["name"]
    own = {p for s in seen for p in s if p != pool_name}
    assert own, f"its own replica never became an endpoint: {seen[-5:]}"
    assert all(s for s in seen), "the Service had no ready endpoint at some point of the move"
    # The pool served first, then both, then only its own replica: surge, then retire.
    first_own = next(i for i, s in enumerate(seen) if s & own)
    assert pool_name in seen[first_own] or pool_name in seen[first_own - 1]
    assert pool_name not in seen[-1]
    pod = await kube.get(PODS, pool_name, namespace)
    assert f"model.greenserve.io/{moving}" not in pod["metadata"]["labels"]
    assert await ready_reason(kube, namespace, moving) == cond.REASON_AVAILABLE
    # The others are still served from the pool.
    for n in names[1:]:
        assert await ready_reason(kube, namespace, n) == cond.REASON_SHARED_POOL


async def _has(kube: KubeClient, ns: str, service: str, pod: str) -> bool:
    return pod in await ready_endpoints(kube, ns, service)
