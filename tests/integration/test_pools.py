"""Shared GPU pools on the control plane (kwok nodes): the pool Deployment and its model list, the routing
labels, the Services' selectors, and a move out of the pool that never leaves the Service without a
ready endpoint.

kwok runs no containers, so a small server in the test answers each pool pod's model status (the
operator's GREENSERVE_MODEL_STATUS_URL points at it): a model is AVAILABLE on a pool pod when the pool's
ConfigMap lists it, as a real pod's model server would report once it has read the list (each pod LOAD_S
after it is first asked).
"""

from __future__ import annotations

import asyncio
import secrets
import time
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
    EVENTS,
    MODELSERVICES,
    NODES,
    PODS,
    SERVICES,
    KubeClient,
)
from greenserve.manifests import pools as pm
from support.fake_prometheus import FakePrometheus
from support.http import local_server
from support.kube import Kubectl, OperatorProcess, eventually, kwok_gpu_node, rbac_denials, refusals

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


LOAD_S = 1.5  # how long a pool pod takes to load a model newly on its list


@pytest.fixture
async def model_status(kube: KubeClient) -> AsyncIterator[str]:
    listed_since: dict[tuple[str, str, str], float] = {}

    async def status(request: web.Request) -> web.Response:
        ns, model = request.match_info["namespace"], request.match_info["model"]
        pods = await kube.get_or_none(PODS, request.match_info["pod"], ns)
        pool = ((pods or {}).get("metadata") or {}).get("labels", {}).get(c.LABEL_POOL)
        cm = await kube.get_or_none(CONFIGMAPS, f"{pool}-models", ns) if pool else None
        key = (ns, request.match_info["pod"], model)  # each pod loads the list on its own
        if cm is None or f'name: "{model}"' not in cm["data"][pm.MODEL_CONFIG_KEY]:
            listed_since.pop(key, None)
            return web.json_response({"error": f"Could not find any versions of model {model}"}, status=404)
        # As a model server: AVAILABLE once it has read the list and loaded the model.
        if time.time() - listed_since.setdefault(key, time.time()) < LOAD_S:
            return web.json_response({"model_version_status": [{"version": "1", "state": "LOADING"}]})
        return web.json_response({"model_version_status": [{"version": "1", "state": "AVAILABLE"}]})

    app = web.Application()
    app.router.add_get("/{namespace}/{pod}/v1/models/{model}", status)
    async with local_server(app) as port:
        yield f"http://127.0.0.1:{port}/{{namespace}}/{{pod}}/v1/models/{{model}}"


@pytest.fixture
def pool_operator(
    operator_kubeconfig: Path, operator_env: dict[str, str], tmp_path: Path, model_status: str
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(operator_kubeconfig, tmp_path, extra_env=pool_env(operator_env, model_status))
    proc.start()
    yield proc
    proc.stop()
    logs = proc.logs()
    print(logs[-5000:])
    assert refusals(logs) == [], "the chart's RBAC or admission policy refused the operator"


def pool_env(operator_env: dict[str, str], model_status: str, **extra: str) -> dict[str, str]:
    """The operator's environment for the pool tests: the model-status fake above, and a short unload
    grace so that an unload is seen within a test."""
    return {
        **operator_env,
        "GREENSERVE_MODEL_STATUS_URL": model_status,
        "GREENSERVE_POOL_UNLOAD_GRACE": "2",
        **extra,
    }


def stop_and_check(proc: OperatorProcess) -> list[str]:
    """Stop the operator and fail on an RBAC refusal in its log (only RBAC's: other tests' namespaces
    may still be terminating, which refuses writes there with 403s of another kind)."""
    proc.stop()
    logs = proc.logs()
    print(logs[-5000:])
    return rbac_denials(logs)


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


class EndpointSampler:
    """A Service's ready endpoints, sampled every 0.2 s from start until `stop`."""

    def __init__(self, kube: KubeClient, ns: str, service: str) -> None:
        self.seen: list[set[str]] = []
        self._done = asyncio.Event()
        self._task = asyncio.create_task(self._run(kube, ns, service))

    async def _run(self, kube: KubeClient, ns: str, service: str) -> None:
        while not self._done.is_set():
            self.seen.append(await ready_endpoints(kube, ns, service))
            await asyncio.sleep(0.2)

    async def stop(self) -> list[set[str]]:
        self._done.set()
        await self._task
        return self.seen


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
    sampler = EndpointSampler(kube, namespace, moving)
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
    seen = await sampler.stop()
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


async def test_a_deleted_pool_member_leaves_its_pool_and_the_others_stay_served(
    kube: KubeClient, kubectl: Kubectl, namespace: str, pool_operator: OperatorProcess
) -> None:
    """Deleting a pooled ModelService unloads its model from the pool's list (the DELETED event re-plans
    the pool through the other members: handlers/cache.py), and the others stay Ready from the pool."""
    names = [f"member-{i}" for i in range(3)]
    for name in names:
        kubectl.apply(msvc(name, namespace))
    key = pm.PoolKey(namespace, None, KEY_IMAGE)

    async def all_served() -> bool:
        return all([await ready_reason(kube, namespace, n) == cond.REASON_SHARED_POOL for n in names])

    await eventually(all_served, 180, 1.0, "every member Ready from the shared pool")
    gone, kept = names[1], [names[0], names[2]]
    t0 = time.monotonic()
    kubectl.run("delete", "modelservice", gone, "-n", namespace, "--wait=false")

    async def unloaded() -> bool:
        cm = await kube.get(CONFIGMAPS, pm.config_map_name(key), namespace)
        return f'name: "{gone}"' not in cm["data"][pm.MODEL_CONFIG_KEY]

    await eventually(unloaded, 120, 0.2, f"{gone} off the pool's model list")
    print(f"POOL deleted member off the model list after {time.monotonic() - t0:.2f} s")
    cm = await kube.get(CONFIGMAPS, pm.config_map_name(key), namespace)
    assert all(f'name: "{n}"' in cm["data"][pm.MODEL_CONFIG_KEY] for n in kept)
    for n in kept:
        assert await ready_reason(kube, namespace, n) == cond.REASON_SHARED_POOL


async def test_models_that_outgrow_one_pool_gpu_are_served_from_a_second_one(
    kube: KubeClient, kubectl: Kubectl, namespace: str, pool_operator: OperatorProcess
) -> None:
    """Three models of 6 GiB on 16 GiB pool GPUs: two share the first GPU, the third gets a second one
    (its own Deployment, ConfigMap and pod), and every one is served from the pool."""
    names = [f"big-{i}" for i in range(3)]
    for name in names:
        kubectl.apply(msvc(name, namespace, memory="6Gi"))
    key = pm.PoolKey(namespace, None, KEY_IMAGE)

    async def all_served() -> bool:
        return all([await ready_reason(kube, namespace, n) == cond.REASON_SHARED_POOL for n in names])

    await eventually(all_served, 180, 1.0, "every model Ready from the shared pool")
    homes: dict[str, list[str]] = {}
    for shard in (0, 1):
        name = pm.shard_name(key, shard)
        assert (await kube.get(DEPLOYMENTS, name, namespace))["spec"]["replicas"] == 1
        cm = await kube.get(CONFIGMAPS, pm.config_map_name(key, shard), namespace)
        homes[name] = sorted(n for n in names if f'name: "{n}"' in cm["data"][pm.MODEL_CONFIG_KEY])
        (shard_pod,) = [
            p for p in await kube.list_objects(PODS, namespace, label_selector=f"{c.LABEL_POOL}={name}")
            if not p["metadata"].get("deletionTimestamp")
        ]  # fmt: skip
        for n in homes[name]:
            await eventually(
                lambda n=n, p=shard_pod["metadata"]["name"]: _has(kube, namespace, n, p),
                60,
                0.5,
                f"{n} routed",
            )
    assert sorted(len(v) for v in homes.values()) == [1, 2]
    assert sorted(n for v in homes.values() for n in v) == names  # each on one GPU only
    assert await kube.get_or_none(DEPLOYMENTS, pm.shard_name(key, 2), namespace) is None
    for n in names:
        placed = (await kube.get(MODELSERVICES, n, namespace))["status"]["placement"]
        assert n in homes[placed["pool"]]


async def _has(kube: KubeClient, ns: str, service: str, pod: str) -> bool:
    return pod in await ready_endpoints(kube, ns, service)


async def _only(kube: KubeClient, ns: str, service: str, pod: str) -> bool:
    return await ready_endpoints(kube, ns, service) == {pod}


async def test_a_shared_model_moves_out_on_its_load_and_back_when_it_shrinks(
    kube: KubeClient,
    kubectl: Kubectl,
    namespace: str,
    operator_kubeconfig: Path,
    operator_env: dict[str, str],
    tmp_path: Path,
    model_status: str,
    fake_prometheus: tuple[FakePrometheus, str],
) -> None:
    """No spec change: the pool's per-model request counter moves it out past its share of the GPU, and
    its own replicas' rate brings it back once it falls below the join threshold (target 50 req/s per
    replica, no SLO: it leaves past 35 req/s and joins at most 21.9 req/s). The Service never lacks a
    ready endpoint."""
    fake, url = fake_prometheus
    env = pool_env(operator_env, model_status, GREENSERVE_PROMETHEUS_URL=url, GREENSERVE_METRICS_WINDOW="60")
    proc = OperatorProcess(operator_kubeconfig, tmp_path, extra_env=env)
    proc.start()
    try:
        name = "busy"
        body = msvc(name, namespace)
        body["spec"]["scaling"]["target"] = 50
        kubectl.apply(msvc("quiet", namespace))
        kubectl.apply(body)
        key = pm.PoolKey(namespace, None, KEY_IMAGE)
        fake.rps = {name: 2.0, "quiet": 1.0}

        async def placement() -> dict[str, Any]:
            got = await kube.get_or_none(MODELSERVICES, name, namespace)
            return dict(((got or {}).get("status") or {}).get("placement") or {})

        async def served_from_pool() -> bool:
            return await ready_reason(kube, namespace, name) == cond.REASON_SHARED_POOL

        await eventually(served_from_pool, 180, 1.0, f"{name} served from the pool")

        async def rate_read() -> bool:
            got = await kube.get_or_none(MODELSERVICES, name, namespace)
            return ((got or {}).get("status") or {}).get("requestsPerSecond") == pytest.approx(2.0, rel=0.3)

        await eventually(rate_read, 60, 1.0, "its request rate read from the pool pod")
        # Its part of the pool GPU's power and energy (policy/shared_energy.py) is in its own status.
        st = (await kube.get(MODELSERVICES, name, namespace))["status"]
        assert st.get("powerWatts") is not None and st.get("energyJoules") is not None, st
        sampler = EndpointSampler(kube, namespace, name)
        fake.rps[name] = 45.0  # past 35 req/s

        async def moved_out() -> bool:
            cm = await kube.get(CONFIGMAPS, pm.config_map_name(key), namespace)
            svc = await kube.get(SERVICES, name, namespace)
            return f'name: "{name}"' not in cm["data"][pm.MODEL_CONFIG_KEY] and svc["spec"]["selector"] == {
                c.LABEL_MODELSERVICE: name
            }

        await eventually(moved_out, 180, 1.0, f"{name} out of the pool on its load")
        assert (await placement())["reason"] == "HighTraffic"
        out_seen = len(sampler.seen)
        fake.rps[name] = 30.0  # between the thresholds: it stays on its own replicas
        await proc.wait_passes("resync", 4)
        assert not (await placement())["shared"]

        fake.rps[name] = 5.0  # below 21.9 req/s: back into the pool

        async def moved_in() -> bool:
            dep = await kube.get(DEPLOYMENTS, name, namespace)
            return bool((await placement()).get("shared")) and dep["spec"]["replicas"] == 0

        await eventually(moved_in, 180, 1.0, f"{name} back in the pool on its load")
        await eventually(served_from_pool, 60, 1.0, f"{name} served from the pool again")
        seen = await sampler.stop()
        assert seen[out_seen:] and all(s for s in seen), "the Service had no ready endpoint during a move"
        assert await ready_reason(kube, namespace, "quiet") == cond.REASON_SHARED_POOL
    finally:
        denials = stop_and_check(proc)
        assert not denials, denials[:3]


async def test_a_model_moves_between_pool_gpus_without_a_gap(
    kube: KubeClient,
    kubectl: Kubectl,
    namespace: str,
    operator_kubeconfig: Path,
    operator_env: dict[str, str],
    tmp_path: Path,
    model_status: str,
    fake_prometheus: tuple[FakePrometheus, str],
) -> None:
    """Three models of 6 GiB fill two 16 GiB pool GPUs (two and one). The lone one's need drops to 2 GiB:
    the sharing policy empties its GPU into the other, surge then retire. Its Service never lacks a ready
    endpoint, and the emptied GPU's Deployment goes to zero."""
    fake, url = fake_prometheus
    env = pool_env(operator_env, model_status, GREENSERVE_PROMETHEUS_URL=url, GREENSERVE_METRICS_WINDOW="60")
    proc = OperatorProcess(operator_kubeconfig, tmp_path, extra_env=env)
    proc.start()
    try:
        names = [f"big-{i}" for i in range(3)]
        for name in names:
            kubectl.apply(msvc(name, namespace, memory="6Gi"))
        fake.rps = dict.fromkeys(names, 1.0)
        key = pm.PoolKey(namespace, None, KEY_IMAGE)

        async def homes() -> dict[str, set[str]]:
            out: dict[str, set[str]] = {}
            for shard in (0, 1, 2):
                cm = await kube.get_or_none(CONFIGMAPS, pm.config_map_name(key, shard), namespace)
                listed = (cm or {}).get("data", {}).get(pm.MODEL_CONFIG_KEY, "")
                out[pm.shard_name(key, shard)] = {n for n in names if f'name: "{n}"' in listed}
            return out

        async def settled() -> bool:
            reasons = [await ready_reason(kube, namespace, n) for n in names]
            rates = [
                ((await kube.get(MODELSERVICES, n, namespace)).get("status") or {}).get("requestsPerSecond")
                for n in names
            ]
            return all(r == cond.REASON_SHARED_POOL for r in reasons) and all(x is not None for x in rates)

        await eventually(settled, 180, 1.0, "every model served from the pool and its rate read")
        before = await homes()
        assert sorted(len(v) for v in before.values()) == [0, 1, 2], before
        (old_gpu,) = [g for g, v in before.items() if len(v) == 1]
        (new_gpu,) = [g for g, v in before.items() if len(v) == 2]
        (lone,) = before[old_gpu]
        old_pod = [
            p["metadata"]["name"]
            for p in await kube.list_objects(PODS, namespace, label_selector=f"{c.LABEL_POOL}={old_gpu}")
        ]
        sampler = EndpointSampler(kube, namespace, lone)
        kubectl.run(
            "patch", "modelservice", lone, "-n", namespace, "--type=merge",
            "-p", '{"spec": {"gpu": {"memory": "2Gi"}}}',
        )  # fmt: skip

        async def moved() -> bool:
            now = await homes()
            dep = await kube.get(DEPLOYMENTS, old_gpu, namespace)
            return lone in now[new_gpu] and not now[old_gpu] and dep["spec"]["replicas"] == 0

        await eventually(moved, 180, 1.0, f"{lone} moved from {old_gpu} to {new_gpu}")
        await eventually(
            lambda: _only_on(kube, namespace, lone, new_gpu), 60, 0.5, f"{lone} routed to {new_gpu} only"
        )
        seen = await sampler.stop()
        assert all(s for s in seen), "the Service had no ready endpoint during the move"
        # The old GPU served until the new one's pod was an endpoint (the new one loads for LOAD_S).
        first_new = next(i for i, s in enumerate(seen) if s - set(old_pod))
        assert set(old_pod) & (seen[first_new] | seen[first_new - 1]), seen[first_new - 1 : first_new + 1]
        placed = (await kube.get(MODELSERVICES, lone, namespace))["status"]["placement"]
        assert placed["shared"] is True and placed["pool"] == new_gpu
        assert await ready_reason(kube, namespace, lone) == cond.REASON_SHARED_POOL
        assert (await kube.get(DEPLOYMENTS, lone, namespace))["spec"]["replicas"] == 0
    finally:
        denials = stop_and_check(proc)
        assert not denials, denials[:3]


async def _only_on(kube: KubeClient, ns: str, service: str, shard: str) -> bool:
    pods = {
        p["metadata"]["name"]
        for p in await kube.list_objects(PODS, ns, label_selector=f"{c.LABEL_POOL}={shard}")
        if not p["metadata"].get("deletionTimestamp")
    }
    ready = await ready_endpoints(kube, ns, service)
    return bool(ready) and ready <= pods


POOL_PRODUCT = "TEST-POOL-MOVE"
HOLD_TAINT = {"key": "test.greenserve.io/hold", "value": "1", "effect": "NoSchedule"}


@pytest.mark.parametrize("killed", [False, True], ids=["live", "operator-killed-mid-move"])
async def test_consolidation_moves_a_pool_pod_off_the_lightly_used_node_without_a_gap(
    kube: KubeClient,
    kubectl: Kubectl,
    namespace: str,
    operator_kubeconfig: Path,
    operator_env: dict[str, str],
    tmp_path: Path,
    model_status: str,
    killed: bool,
) -> None:
    """A pool GPU's pod must not keep a node from emptying (reconcile/pool_moves.py). The pool pod serves
    three models on one node; another tenant's pod fills 4 GPUs of the other. Consolidation surges a
    second pod of the pool GPU onto the fuller node, retires the source once the new pod serves all three,
    and each model's Service has a ready endpoint all along. Killed mid-move (the replacement held
    Pending), the operator finishes the same move after a restart, without a second replacement."""
    suffix = secrets.token_hex(3)
    nodes = [f"pool-move-x-{suffix}", f"pool-move-y-{suffix}"]
    for n in nodes:
        kubectl.apply(kwok_gpu_node(n, POOL_PRODUCT, 8))
    kubectl.run("wait", "--for=condition=Ready", *(f"node/{n}" for n in nodes), "--timeout=60s")
    env = pool_env(
        operator_env, model_status, GREENSERVE_CONSOLIDATION="true", GREENSERVE_CONSOLIDATION_INTERVAL="3"
    )
    proc = OperatorProcess(operator_kubeconfig, tmp_path, extra_env=env)
    proc.start()
    try:
        names = [f"m-{i}" for i in range(3)]
        for name in names:
            kubectl.apply(msvc(name, namespace, product=POOL_PRODUCT))
        key = pm.PoolKey(namespace, POOL_PRODUCT, KEY_IMAGE)
        most = 0

        async def pool_pods() -> list[dict[str, Any]]:
            nonlocal most
            pods = await kube.list_objects(PODS, namespace, label_selector=f"{c.LABEL_POOL}={key.name}")
            live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            most = max(most, len(live))
            return live

        async def all_served() -> bool:
            return all([await ready_reason(kube, namespace, n) == cond.REASON_SHARED_POOL for n in names])

        await eventually(all_served, 180, 1.0, "every model Ready from the shared pool")
        (source,) = await pool_pods()
        source_name, from_node = source["metadata"]["name"], source["spec"]["nodeName"]
        (to_node,) = [n for n in nodes if n != from_node]
        for n in names:
            await eventually(lambda n=n: _has(kube, namespace, n, source_name), 60, 0.5, f"{n} routed")
        samplers = {n: EndpointSampler(kube, namespace, n) for n in names}

        async def moved() -> bool:
            pods = await pool_pods()
            return (
                len(pods) == 1
                and pods[0]["metadata"]["name"] != source_name
                and pods[0]["spec"].get("nodeName") == to_node
                and await kube.get_or_none(PODS, source_name, namespace) is None
            )

        if killed:  # the replacement stays Pending on the target until the taint goes: a move in flight
            target = await kube.get(NODES, to_node)
            await kube.patch(NODES, to_node, {"spec": {"taints": [*target["spec"]["taints"], HOLD_TAINT]}})
        # Another tenant's pod on the other node: 4 GPUs there against the pool's 1 here.
        kubectl.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "tenant", "namespace": namespace},
                "spec": {
                    "nodeName": to_node,
                    "containers": [
                        {"name": "c", "image": "tenant", "resources": {"limits": {c.GPU_RESOURCE: "4"}}}
                    ],
                },
            }
        )
        if killed:

            async def surging() -> bool:
                live = await kube.get(PODS, source_name, namespace)
                return (
                    c.ANN_POOL_MOVE in (live["metadata"].get("annotations") or {})
                    and len(await pool_pods()) == 2
                )

            await eventually(surging, 120, 0.2, "the move recorded on the source and its surge applied")
            proc.kill()  # SIGKILL mid-move: no cleanup
            for _ in range(10):  # while no operator runs, nothing more is started or removed
                assert len(await pool_pods()) == 2
                await asyncio.sleep(0.3)
            assert await kube.get_or_none(PODS, source_name, namespace) is not None
            target = await kube.get(NODES, to_node)
            held = [t for t in target["spec"]["taints"] if t["key"] != HOLD_TAINT["key"]]
            await kube.patch(NODES, to_node, {"spec": {"taints": held}})
            proc.start()
        await eventually(moved, 180, 0.5, f"the pool pod moved from {from_node} to {to_node}")
        seen = {n: await s.stop() for n, s in samplers.items()}
        assert most == 2, "the replacement must start before the source pod is removed, and only one"
        (new,) = await pool_pods()
        for n, samples in seen.items():
            assert all(samples), f"{n}'s Service had no ready endpoint during the move"
            assert source_name in samples[0], n
            # Served by the new pod alone once the EndpointSlice controller has caught up.
            await eventually(
                lambda n=n: _only(kube, namespace, n, new["metadata"]["name"]), 30, 0.5, f"{n} on the new pod"
            )
        labels = new["metadata"]["labels"]
        assert {n: labels.get(f"model.greenserve.io/{n}") for n in names} == dict.fromkeys(names, "available")
        assert c.ANN_POOL_MOVE not in (new["metadata"].get("annotations") or {})
        node = await kube.get(NODES, from_node)
        assert any(t["key"] == c.TAINT_CONSOLIDATING for t in node["spec"].get("taints") or [])
        assert (await kube.get(DEPLOYMENTS, key.name, namespace))["spec"]["replicas"] == 1

        async def recorded() -> set[str] | None:
            events = await kube.list_objects(
                EVENTS, namespace, field_selector=f"involvedObject.name={source_name}"
            )
            reasons = {e["reason"] for e in events}
            # A SIGKILL may land before the first operator's Event (they are advice, not state).
            return (
                reasons
                if ({"ReplicaMoved"} if killed else {"ConsolidationMove", "ReplicaMoved"}) <= reasons
                else None
            )

        await eventually(recorded, 30, what="the move's Events on the pool pod")
        # Converged: later passes start nothing more (one pod, the move closed).
        await proc.wait_passes("consolidation", 3)
        assert [p["metadata"]["name"] for p in await pool_pods()] == [new["metadata"]["name"]]
        for n in names:
            assert await ready_reason(kube, namespace, n) == cond.REASON_SHARED_POOL
    finally:
        denials = stop_and_check(proc)
        kubectl.run("delete", "node", *nodes, "--wait=false", check=False)
        assert denials == [], "the chart's RBAC lacks a permission the operator used"
