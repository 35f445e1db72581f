"""Shared pools against an in-memory API (tests/support/fake_kube.py) and a model-status server standing
in for the pool pods' agents: who joins, routing labels only where a model is AVAILABLE, and both moves
surge-then-retire (the new home is a ready endpoint of the Service before the old one goes)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web

from greenserve.api import constants as c
from greenserve.cluster.cache import ClusterCache
from greenserve.cluster.client import CONFIGMAPS, DEPLOYMENTS, ENDPOINTSLICES, MODELSERVICES, PODS, SERVICES
from greenserve.config import OperatorConfig
from greenserve.manifests import pools as pm
from greenserve.reconcile import autoscale, pools
from greenserve.reconcile import modelservice as rec
from greenserve.reconcile.loop import LoopDeps
from greenserve.reconcile.ticker import Ticker
from support.fake_kube import FakeKube

NS = "ml"
ROUTE = {"model.greenserve.io/a": "available"}


def msvc(name: str, model: str | None = None, sharing: str | None = None, **gpu: Any) -> dict[str, Any]:
    g: dict[str, Any] = {"count": 1, "memory": "1Gi", **gpu}
    if sharing:
        g["sharing"] = sharing
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1},
        "spec": {"model": {"name": model or name, "storageUri": f"pvc://models/{name}"}, "gpu": g},
    }


def pod(name: str, labels: dict[str, str], ip: str = "10.0.0.1", ready: bool = True) -> dict[str, Any]:
    warmup = {c.ANN_KARPENTER_DO_NOT_DISRUPT: "15m", c.ANN_CA_SAFE_TO_EVICT: "false"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": dict(labels), "annotations": warmup},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def endpoints(service: str, *ready_pods: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-x",
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": service},
        },
        "endpoints": [
            {"targetRef": {"kind": "Pod", "name": p}, "conditions": {"ready": True}} for p in ready_pods
        ],
    }


class Agents:
    """GET /<namespace>/<pod>/v1/models/<model>: AVAILABLE when the test says so."""

    def __init__(self) -> None:
        self.available: dict[str, set[str]] = {}

    async def status(self, request: web.Request) -> web.Response:
        if request.match_info["model"] not in self.available.get(request.match_info["pod"], set()):
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response({"model_version_status": [{"version": "1", "state": "AVAILABLE"}]})


@pytest.fixture
async def agents() -> AsyncIterator[tuple[Agents, str]]:
    a = Agents()
    app = web.Application()
    app.router.add_get("/{namespace}/{pod}/v1/models/{model}", a.status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield a, f"http://127.0.0.1:{port}/{{namespace}}/{{pod}}/v1/models/{{model}}"
    await runner.cleanup()


def config(url: str) -> OperatorConfig:
    return OperatorConfig(model_status_url=url, pool_unload_grace_s=0.0, pool_gpu_memory="16Gi")


async def reconcile(kube: FakeKube, cfg: OperatorConfig, name: str) -> rec.Outcome:
    return await rec.reconcile(kube, {"metadata": {"name": name, "namespace": NS}}, cfg)


def read(name: str, rps: float) -> None:
    """The operator's autoscaler has read the model (the metrics tick): until then a restarted
    operator's pool moves nothing on the rate in status (reconcile/pools.py)."""
    autoscale.HISTORY.set_sized_rate((NS, name), 0.0, rps)


def members(kube: FakeKube, key: pm.PoolKey) -> str:
    cm = kube.peek(CONFIGMAPS, pm.config_map_name(key), NS)
    assert cm is not None
    return str(cm["data"][pm.MODEL_CONFIG_KEY])


def replicas(kube: FakeKube, name: str) -> int:
    dep = kube.peek(DEPLOYMENTS, name, NS)
    assert dep is not None
    return int(dep["spec"]["replicas"])


def selector(kube: FakeKube, name: str) -> dict[str, str]:
    svc = kube.peek(SERVICES, name, NS)
    assert svc is not None
    return dict(svc["spec"]["selector"])


def labels(kube: FakeKube, name: str) -> dict[str, str]:
    p = kube.peek(PODS, name, NS)
    assert p is not None
    return dict(p["metadata"].get("labels") or {})


KEY = pm.PoolKey(NS, None, c.DEFAULT_SERVING_IMAGE)
POOL_POD = pod("pool-0", pm.pool_labels(KEY))


async def test_new_models_start_shared_and_are_routed_only_where_available(
    agents: tuple[Agents, str],
) -> None:
    fake_agents, url = agents
    kube, cfg = FakeKube(), config(url)
    for name in ("a", "b"):
        kube.put(MODELSERVICES, msvc(name))
    kube.put(MODELSERVICES, msvc("big", sharing="Exclusive"))
    kube.put(MODELSERVICES, msvc("nomem", memory=None))
    for name in ("a", "b", "big", "nomem"):
        await reconcile(kube, cfg, name)
    assert 'name: "a"' in members(kube, KEY) and 'name: "b"' in members(kube, KEY)
    assert "big" not in members(kube, KEY) and "nomem" not in members(kube, KEY)
    assert replicas(kube, KEY.name) == 1
    # Shared: no replica of its own, the Service selects the routing label; the others as before.
    assert (replicas(kube, "a"), selector(kube, "a")) == (0, ROUTE)
    assert (replicas(kube, "big"), selector(kube, "big")) == (1, {c.LABEL_MODELSERVICE: "big"})
    # Models that may not share never consult a pool: no placement in their status.
    for name in ("big", "nomem"):
        assert "placement" not in (kube.peek(MODELSERVICES, name, NS) or {}).get("status", {})
    placed = (kube.peek(MODELSERVICES, "a", NS) or {})["status"]["placement"]
    assert placed == {"shared": True, "pool": KEY.name, "reason": "NewModel", "message": placed["message"]}

    # A pool pod appears; only "a" is loaded on it yet: only a's label is set, and a is Ready.
    kube.put(PODS, POOL_POD)
    fake_agents.available["pool-0"] = {"a"}
    out = await reconcile(kube, cfg, "a")
    assert labels(kube, "pool-0") == {**pm.pool_labels(KEY), **ROUTE}
    assert out.ready and out.reason == "ServedFromSharedPool"
    # Ready: its warm-up protection from node autoscalers is lifted, as for any serving pod.
    ann = (kube.peek(PODS, "pool-0", NS) or {})["metadata"]["annotations"]
    assert set(ann) == {pools.ANN_CONFIG_DIGEST}
    assert not (await reconcile(kube, cfg, "b")).ready

    # The model server stops answering for a (unloaded, draining): its label goes.
    fake_agents.available["pool-0"] = {"b"}
    await reconcile(kube, cfg, "b")
    assert labels(kube, "pool-0") == {**pm.pool_labels(KEY), "model.greenserve.io/b": "available"}


def config_digest(kube: FakeKube) -> str | None:
    ann = (kube.peek(PODS, "pool-0", NS) or {})["metadata"].get("annotations") or {}
    return ann.get(pools.ANN_CONFIG_DIGEST)


def pod_patches(kube: FakeKube) -> int:
    return sum(1 for verb, plural, name in kube.calls if (verb, plural, name) == ("patch", "pods", "pool-0"))


async def a_on_the_pool_pod(agents: tuple[Agents, str]) -> tuple[FakeKube, OperatorConfig]:
    """ModelService "a" placed and loaded on the pool's one pod, after one pass."""
    fake_agents, url = agents
    kube, cfg = FakeKube(), config(url)
    kube.put(MODELSERVICES, msvc("a"))
    kube.put(PODS, POOL_POD)
    fake_agents.available["pool-0"] = {"a"}
    await reconcile(kube, cfg, "a")
    return kube, cfg


async def assert_at_rest(kube: FakeKube, cfg: OperatorConfig, name: str, digest: str) -> None:
    """One more pass changes nothing: the pool pod keeps `digest` and is not patched."""
    patches = pod_patches(kube)
    await reconcile(kube, cfg, name)
    assert config_digest(kube) == digest and pod_patches(kube) == patches


async def test_a_changed_model_list_marks_the_pool_pod_so_kubelet_refreshes_it_now(
    agents: tuple[Agents, str],
) -> None:
    # Kubelet refreshes a mounted ConfigMap at a pod sync, every minute unless the pod changes: each
    # change of the GPU's list is written to its pods too, once, and a pass that changes nothing patches
    # nothing.
    kube, cfg = await a_on_the_pool_pod(agents)
    first = config_digest(kube)
    assert first is not None
    await assert_at_rest(kube, cfg, "a", first)
    kube.put(MODELSERVICES, msvc("b"))
    await reconcile(kube, cfg, "b")
    assert 'name: "b"' in members(kube, KEY)
    second = config_digest(kube)
    assert second is not None and second != first
    await assert_at_rest(kube, cfg, "b", second)


async def test_move_out_of_the_pool_waits_for_its_own_replica_to_be_selected(
    agents: tuple[Agents, str],
) -> None:
    kube, cfg = await a_on_the_pool_pod(agents)
    await reconcile(kube, cfg, "a")
    assert labels(kube, "pool-0").get("model.greenserve.io/a") == "available"

    # Made Exclusive: its own replica comes up first; the pool keeps serving it meanwhile.
    body = kube.peek(MODELSERVICES, "a", NS)
    assert body is not None
    body["spec"]["gpu"]["sharing"] = "Exclusive"
    await reconcile(kube, cfg, "a")
    assert replicas(kube, "a") == 1 and selector(kube, "a") == ROUTE
    assert 'name: "a"' in members(kube, KEY) and labels(kube, "pool-0").get("model.greenserve.io/a")

    # Its replica is Ready and labelled, but not yet an endpoint of the Service: the pool still serves.
    kube.put(PODS, pod("a-own", {c.LABEL_MODELSERVICE: "a"}, ip="10.0.0.2"))
    kube.put(ENDPOINTSLICES, endpoints("a", "pool-0"))
    await reconcile(kube, cfg, "a")
    assert labels(kube, "a-own").get("model.greenserve.io/a") == "available"
    assert labels(kube, "pool-0").get("model.greenserve.io/a") == "available"
    assert 'name: "a"' in members(kube, KEY)

    # Selected: the pool pod's label goes first; the model is unloaded on a later pass (after the grace).
    kube.put(ENDPOINTSLICES, endpoints("a", "pool-0", "a-own"))
    await reconcile(kube, cfg, "a")
    assert "model.greenserve.io/a" not in labels(kube, "pool-0")
    assert 'name: "a"' in members(kube, KEY)
    await reconcile(kube, cfg, "a")
    assert 'name: "a"' not in members(kube, KEY)
    assert replicas(kube, KEY.name) == 0  # an empty pool holds no GPU
    await reconcile(kube, cfg, "a")
    assert selector(kube, "a") == {c.LABEL_MODELSERVICE: "a"} and replicas(kube, "a") == 1


async def test_move_into_the_pool_keeps_its_replicas_until_a_pool_pod_is_selected(
    agents: tuple[Agents, str],
) -> None:
    fake_agents, url = agents
    kube, cfg = FakeKube(), config(url)
    body = msvc("a")
    # Placed before, on its own replicas, with a load that now fits a quarter of a GPU.
    body["status"] = {
        "placement": {"shared": False, "reason": "HighTraffic", "message": ""},
        "requestsPerSecond": 1.0,
        "desiredReplicas": 1,
    }
    kube.put(MODELSERVICES, body)
    read("a", 1.0)
    kube.put(PODS, pod("a-own", {c.LABEL_MODELSERVICE: "a"}, ip="10.0.0.2"))
    kube.put(PODS, POOL_POD)
    kube.put(ENDPOINTSLICES, endpoints("a", "a-own"))
    fake_agents.available["pool-0"] = set()
    await reconcile(kube, cfg, "a")
    # Joins the pool list; keeps its replica, labelled, and the Service selects by the label.
    assert 'name: "a"' in members(kube, KEY)
    assert replicas(kube, "a") == 1 and selector(kube, "a") == ROUTE
    assert labels(kube, "a-own").get("model.greenserve.io/a") == "available"

    # Loaded on the pool pod and labelled, not yet selected: the replica stays.
    fake_agents.available["pool-0"] = {"a"}
    await reconcile(kube, cfg, "a")
    assert labels(kube, "pool-0").get("model.greenserve.io/a") == "available"
    assert replicas(kube, "a") == 1
    # Selected: the replica is retired.
    kube.put(ENDPOINTSLICES, endpoints("a", "a-own", "pool-0"))
    out = await reconcile(kube, cfg, "a")
    assert replicas(kube, "a") == 0 and out.ready


async def test_a_busy_member_without_a_fresh_metric_is_never_moved(agents: tuple[Agents, str]) -> None:
    _, url = agents
    kube, cfg = FakeKube(), config(url)
    body = msvc("a")
    body["status"] = {"placement": {"shared": True, "pool": KEY.name, "reason": "Shared", "message": ""}}
    kube.put(MODELSERVICES, body)
    views = await pools.sync_pool(kube, KEY, cfg)
    assert views["a"].placement.shared
    body = kube.peek(MODELSERVICES, "a", NS)
    assert body is not None
    body["status"]["requestsPerSecond"] = 100.0  # far above half of target/0.8 = 62.5 req/s
    # A restarted operator whose autoscaler has not read the model yet: the rate in status moves nothing.
    views = await pools.sync_pool(kube, KEY, replace(cfg))
    assert views["a"].placement.shared
    read("a", 100.0)
    views = await pools.sync_pool(kube, KEY, replace(cfg))
    assert not views["a"].placement.shared and views["a"].placement.reason == "HighTraffic"


async def test_a_pool_change_refreshes_every_member_it_concerns_the_reconciling_one_too(
    agents: tuple[Agents, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's background resync keeps the callback of the reconcile that started it; the step that
    finishes a handover may come from it, so the ModelService that started it must be refreshed too."""
    _, url = agents
    kube, cfg = FakeKube(), config(url)
    refreshed: list[str] = []
    monkeypatch.setattr(rec, "refresh_soon", lambda _k, _ns, name, _c: refreshed.append(name) or True)
    for name in ("a", "b"):
        kube.put(MODELSERVICES, msvc(name))
    await reconcile(kube, cfg, "a")
    assert sorted(refreshed) == ["a", "b"]


async def test_a_member_gone_from_its_pools_list_is_reconciled_without_it(
    agents: tuple[Agents, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its namespace going: the ModelService read by its reconcile is gone (or being deleted) when the
    pool lists the namespace's ModelServices, so the pool has no view of it; the reconcile must not fail
    on that (seen on the real node: KeyError)."""
    _, url = agents
    kube, cfg = FakeKube(), config(url)
    body = msvc("a")
    body["status"] = {"placement": {"shared": True, "pool": KEY.name, "reason": "Shared", "message": ""}}
    kube.put(MODELSERVICES, body)

    async def no_view(*_: Any, **__: Any) -> dict[str, pools.MemberView]:
        return {}

    monkeypatch.setattr(pools, "sync_pool", no_view)
    out = await reconcile(kube, cfg, "a")
    assert out.reason != "Error"
    placed = (kube.peek(MODELSERVICES, "a", NS) or {})["status"]["placement"]
    assert placed["shared"] is False and "being deleted" in placed["message"]


def shard_members(kube: FakeKube, shard: int) -> dict[str, Any]:
    cm = kube.peek(CONFIGMAPS, pm.config_map_name(KEY, shard), NS)
    assert cm is not None
    ann = cm["metadata"]["annotations"]
    return {"listed": json.loads(ann[pools.ANN_MEMBERS]), "leaving": json.loads(ann[pools.ANN_LEAVING])}


def with_rate(body: dict[str, Any], rps: float) -> dict[str, Any]:
    body["status"] = {"requestsPerSecond": rps}
    read(body["metadata"]["name"], rps)
    return body


async def test_a_pool_sync_reads_the_same_few_lists_however_many_gpus_the_pool_has(
    agents: tuple[Agents, str],
) -> None:
    """Every pooled ModelService's reconcile syncs its whole pool: per GPU a GET of its Deployment and a
    LIST of its pods would make a pool of N GPUs cost 2N+ reads per member per pass."""
    _, url = agents
    kube, cfg = FakeKube(), config(url)
    names = ("a", "b", "c")
    for name in names:  # 10 GiB each on 16 GiB GPUs: three pool GPUs
        kube.put(MODELSERVICES, with_rate(msvc(name, memory="10Gi"), 0.5))
    await pools.sync_pool(kube, KEY, cfg)  # no callback: no reconcile interleaves with the count below
    for shard in range(3):
        kube.put(PODS, pod(f"pool-{shard}", pm.pool_labels(KEY, shard), ip=f"10.0.0.{shard + 1}"))
    assert [len(shard_members(kube, i)["listed"]) for i in range(3)] == [1, 1, 1]
    kube.calls.clear()
    views = await pools.sync_pool(kube, KEY, cfg)
    reads = sorted((verb, plural) for verb, plural, _ in kube.calls if verb in ("get", "list"))
    assert reads == [
        ("list", "configmaps"),
        ("list", "deployments"),
        ("list", "modelservices"),
        ("list", "pods"),
    ]
    assert {v.pool for v in views.values()} == {pm.shard_name(KEY, i) for i in range(3)}


async def test_models_that_outgrow_one_pool_gpu_get_another_and_a_move_between_them_is_surge_then_retire(
    agents: tuple[Agents, str],
) -> None:
    fake_agents, url = agents
    kube, cfg = FakeKube(), config(url)
    kube.put(MODELSERVICES, with_rate(msvc("a", memory="10Gi"), 2.0))
    kube.put(MODELSERVICES, with_rate(msvc("b", memory="10Gi"), 0.5))
    for name in ("a", "b"):
        await reconcile(kube, cfg, name)
    # 20 GiB on 16 GiB GPUs: a pool of two GPUs, one Deployment and one model list each.
    one = pm.shard_name(KEY, 1)
    assert shard_members(kube, 0)["listed"] == {"a": "a"} and shard_members(kube, 1)["listed"] == {"b": "b"}
    assert replicas(kube, KEY.name) == 1 and replicas(kube, one) == 1
    placed = {n: (kube.peek(MODELSERVICES, n, NS) or {})["status"]["placement"]["pool"] for n in "ab"}
    assert placed == {"a": KEY.name, "b": one}
    kube.put(PODS, pod("pool-0", pm.pool_labels(KEY)))
    kube.put(PODS, pod("pool-1", pm.pool_labels(KEY, 1), ip="10.0.0.3"))
    fake_agents.available.update({"pool-0": {"a"}, "pool-1": {"b"}})
    kube.put(ENDPOINTSLICES, endpoints("b", "pool-1"))
    for name in ("a", "b"):
        assert (await reconcile(kube, cfg, name)).ready
    assert labels(kube, "pool-1").get("model.greenserve.io/b") == "available"

    # b now needs 4 GiB: both fit one GPU, and the emptier GPU is emptied into the other.
    body = kube.peek(MODELSERVICES, "b", NS)
    assert body is not None
    body["spec"]["gpu"]["memory"] = "4Gi"
    await reconcile(kube, cfg, "b")
    assert shard_members(kube, 0)["listed"] == {"a": "a", "b": "b"}
    assert shard_members(kube, 1) == {"listed": {"b": "b"}, "leaving": {"b": None}}
    # Loaded on its new GPU, not yet selected there: the old GPU still serves it.
    fake_agents.available["pool-0"] = {"a", "b"}
    await reconcile(kube, cfg, "b")
    assert labels(kube, "pool-0").get("model.greenserve.io/b") == "available"
    assert labels(kube, "pool-1").get("model.greenserve.io/b") == "available"
    assert shard_members(kube, 1)["listed"] == {"b": "b"}
    # Selected on its new GPU: the old one's label goes first, the model is unloaded after the grace.
    kube.put(ENDPOINTSLICES, endpoints("b", "pool-1", "pool-0"))
    await reconcile(kube, replace(cfg, pool_unload_grace_s=3600.0), "b")
    assert "model.greenserve.io/b" not in labels(kube, "pool-1")
    assert shard_members(kube, 1)["listed"] == {"b": "b"}
    out = await reconcile(kube, cfg, "b")
    assert shard_members(kube, 1)["listed"] == {} and replicas(kube, one) == 0
    assert out.ready and (kube.peek(MODELSERVICES, "b", NS) or {})["status"]["placement"]["pool"] == KEY.name
    assert replicas(kube, "b") == 0  # served from the pool all along: no replica of its own


async def test_a_pool_at_its_most_gpus_leaves_a_model_on_its_own_replicas(agents: tuple[Agents, str]) -> None:
    _, url = agents
    kube, cfg = FakeKube(), replace(config(url), pool_max_gpus=1)
    kube.put(MODELSERVICES, with_rate(msvc("a", memory="10Gi"), 2.0))
    kube.put(MODELSERVICES, with_rate(msvc("b", memory="10Gi"), 0.5))
    for name in ("a", "b"):
        await reconcile(kube, cfg, name)
    assert shard_members(kube, 0)["listed"] == {"a": "a"}
    assert kube.peek(CONFIGMAPS, pm.config_map_name(KEY, 1), NS) is None
    placed = (kube.peek(MODELSERVICES, "b", NS) or {})["status"]["placement"]
    assert (placed["shared"], placed["reason"]) == (False, "PoolFull") and replicas(kube, "b") == 1


def test_a_model_moving_between_pool_gpus_is_read_from_both_until_the_old_one_lets_go(
    fresh_cache: ClusterCache,
) -> None:
    """Its requests go to both GPUs' pods while both carry its routing label: the metrics tick reads it
    (and splits each pod's energy) from both, not only from the GPU its placement names."""
    for p in (
        pod("old", {**pm.pool_labels(KEY, 1), "model.greenserve.io/b": "available"}),
        pod("new", {**pm.pool_labels(KEY), "model.greenserve.io/b": "available"}),
        pod("other", {**pm.pool_labels(KEY, 2), "model.greenserve.io/x": "available"}),
    ):
        fresh_cache.observe_pool_pod(p)
    body = with_rate(msvc("b"), 1.0)
    body["status"]["placement"] = {"shared": True, "pool": KEY.name, "reason": "Shared", "message": ""}
    fresh_cache.msvcs[(NS, "b")] = body
    ticker = Ticker(LoopDeps(FakeKube(), OperatorConfig()), fresh_cache)
    pooled = ticker._pooled([(NS, "b")])
    assert sorted(r.name for r in pooled[(NS, "b")].pods) == ["new", "old"]
    # Released by the old GPU (its label gone): the new GPU's pods only.
    fresh_cache.observe_pool_pod(
        {
            **pod("old", pm.pool_labels(KEY, 1)),
            "metadata": {**pod("old", pm.pool_labels(KEY, 1))["metadata"], "resourceVersion": "9"},
        }
    )
    assert [r.name for r in ticker._pooled([(NS, "b")])[(NS, "b")].pods] == ["new"]
