"""Load-driven moves between a shared pool and a model's own replicas (in-memory API, tests/support/
fake_kube.py): the pool's per-model reading reaches the metrics tick, a served-from-pool model whose
autoscaler wants other counts stays quiet, a load past the leave threshold moves it out at once and one
below the join threshold brings it back; a missing or stale reading moves nothing."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest
from aiohttp import web

from greenserve.api import constants as c
from greenserve.cluster.cache import CACHE
from greenserve.cluster.client import CONFIGMAPS, DEPLOYMENTS, MODELSERVICES, PDBS, PODS, SERVICES
from greenserve.config import OperatorConfig
from greenserve.manifests import pools as pm
from greenserve.metrics.types import PodRef, PooledModel, ServiceMetrics
from greenserve.policy import sharing
from greenserve.reconcile import modelservice as rec
from greenserve.reconcile import pools
from greenserve.reconcile.loop import LoopDeps
from greenserve.reconcile.ticker import Ticker
from support.fake_kube import FakeKube
from support.http import local_server

NS, NAME = "ml", "a"
KEY = pm.PoolKey(NS, None, c.DEFAULT_SERVING_IMAGE)
T0 = 2_000_000.0
# target 50 req/s per replica: a GPU serves 62.5 req/s; without an SLO the cap is 0.7 of a GPU, so the
# model joins at a load of at most 0.35 (21.9 req/s) and leaves past 0.56 (35 req/s).
JOIN_RPS, LEAVE_RPS = 0.35 * 62.5, 0.56 * 62.5


def msvc(status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": NAME, "namespace": NS, "uid": "uid-a", "generation": 1},
        "spec": {
            "model": {"name": NAME, "storageUri": "pvc://models/a"},
            "gpu": {"count": 1, "memory": "1Gi"},
            "scaling": {"minReplicas": 1, "maxReplicas": 4, "target": 50, "scaleDownDelaySeconds": 60},
        },
        "status": status or {},
    }


def placed(shared: bool, reason: str) -> dict[str, Any]:
    return {"placement": {"shared": shared, "reason": reason, "message": "", "pool": KEY.name}}


def test_the_threshold_check_has_hysteresis_and_needs_a_reading() -> None:
    cfg = OperatorConfig(pool_gpu_memory="16Gi")
    spec = pools.parse_spec(msvc()["spec"])
    shared, busy = placed(True, "Shared"), placed(False, "HighTraffic")
    assert pools.placement_due(NAME, spec, shared, LEAVE_RPS * 1.05, cfg)
    assert not pools.placement_due(NAME, spec, shared, LEAVE_RPS * 0.95, cfg)  # between: stays
    assert not pools.placement_due(NAME, spec, busy, JOIN_RPS * 1.05, cfg)  # between: stays out
    assert pools.placement_due(NAME, spec, busy, JOIN_RPS * 0.95, cfg)
    assert not pools.placement_due(NAME, spec, shared, None, cfg)  # no reading: nothing moves
    # A placement the load does not decide is not re-planned every tick.
    assert not pools.placement_due(NAME, spec, placed(False, "PoolFull"), 1.0, cfg)
    d = sharing.ModelDemand("m", 0.45, 1.0, 0.01, None, 0.99)  # between 0.35 and 0.56
    limits = sharing.SharingLimits(gpu_memory_gib=16)
    assert sharing.wants_shared(d, True, limits) and not sharing.wants_shared(d, False, limits)
    assert sharing.wants_shared(dataclasses.replace(d, load=None), True, limits) is None


def test_the_pool_judges_a_model_by_the_rate_its_autoscaler_sized_for() -> None:
    # The autoscaler sizes for the rate's upper estimate (profile.sizing_rate); the pool places by the
    # same rate, as the simulator does, not by the last window's mean.
    cfg = OperatorConfig(pool_gpu_memory="16Gi")
    spec = pools.parse_spec(msvc()["spec"])
    busy, shared = placed(False, "HighTraffic"), placed(True, "Shared")
    assert pools.placement_due(NAME, spec, busy, JOIN_RPS * 0.95, cfg)
    assert not pools.placement_due(NAME, spec, busy, JOIN_RPS * 0.95, cfg, sized_rate=JOIN_RPS * 1.05)
    assert pools.placement_due(NAME, spec, shared, LEAVE_RPS * 0.95, cfg, sized_rate=LEAVE_RPS * 1.05)
    limit = 16 * 2**30
    demand = pools.demand_of(NAME, spec, {"requestsPerSecond": 5.0}, limit, sized_rate=10.0)
    assert demand is not None and demand.load == pytest.approx(10.0 / 62.5)
    # Without a reading in status (stale metrics) an older sized rate does not make one: nothing moves.
    held = pools.demand_of(NAME, spec, {}, limit, sized_rate=10.0)
    assert held is not None and held.load is None
    assert not pools.placement_due(NAME, spec, shared, None, cfg, sized_rate=LEAVE_RPS * 2)


# Each test starts from an empty, enabled cache (conftest.py).
pytestmark = pytest.mark.usefixtures("fresh_cache")


@pytest.fixture
async def status_url() -> AsyncIterator[str]:
    """The pool pod's agent: every model it is asked about is AVAILABLE."""

    async def status(_r: web.Request) -> web.Response:
        return web.json_response({"model_version_status": [{"version": "1", "state": "AVAILABLE"}]})

    app = web.Application()
    app.router.add_get("/{namespace}/{pod}/v1/models/{model}", status)
    async with local_server(app) as port:
        yield f"http://127.0.0.1:{port}/{{namespace}}/{{pod}}/v1/models/{{model}}"


class PoolSource:
    """No replica of its own reports; the pool pod reports `rps` for the model (None: missing)."""

    def __init__(self) -> None:
        self.rps: float | None = 5.0
        self.now = T0
        self.pooled: list[Mapping[tuple[str, str], PooledModel]] = []

    async def service_metrics(
        self, namespace: str, name: str, pods: Sequence[PodRef] | None = None
    ) -> ServiceMetrics:
        return ServiceMetrics(namespace, name, missing=("pods",))

    async def fleet_metrics(
        self, services: Mapping[tuple[str, str], Sequence[PodRef]]
    ) -> dict[tuple[str, str], ServiceMetrics]:
        return {k: await self.service_metrics(*k, v) for k, v in services.items()}

    async def pooled_metrics(
        self, models: Mapping[tuple[str, str], PooledModel]
    ) -> dict[tuple[str, str], ServiceMetrics]:
        self.pooled.append(models)
        return {
            k: ServiceMetrics(
                k[0],
                k[1],
                power_w=20.0,
                energy_j=100.0,
                requests_per_s=self.rps,
                rate_history=(self.rps,) * 3 if self.rps is not None else (),
                replicas_reporting=1,
                pod_energy_j={"pool-0": 100.0},
                window_s=15.0,
                sampled_at=self.now,
                stale=self.rps is None,
                missing=("requests",) if self.rps is None else (),
            )
            for k in models
        }

    async def close(self) -> None:
        return None


def watch(kube: FakeKube) -> None:
    for (plural, _, _), obj in list(kube.objects.items()):
        if plural == MODELSERVICES.plural:
            CACHE.observe_msvc(obj)
        elif plural in (DEPLOYMENTS.plural, SERVICES.plural, PDBS.plural, CONFIGMAPS.plural):
            CACHE.observe_owned(obj)
        elif plural == PODS.plural:
            CACHE.observe_pod(obj)
            CACHE.observe_pool_pod(obj)


async def settle(kube: FakeKube) -> None:
    """Let the refreshes a pass scheduled in the background (a pool view change) finish."""
    async with asyncio.timeout(10):
        while rec._TASKS:
            await asyncio.gather(*list(rec._TASKS))
    watch(kube)


async def tick(kube: FakeKube, source: PoolSource, ticker: Ticker, at: float) -> dict[str, Any]:
    source.now = at
    await ticker.tick(at)
    await settle(kube)
    body = kube.peek(MODELSERVICES, NAME, NS)
    assert body is not None
    return dict(body.get("status") or {})


def listed(kube: FakeKube) -> bool:
    cm = kube.peek(CONFIGMAPS, pm.config_map_name(KEY), NS)
    return cm is not None and f'name: "{NAME}"' in cm["data"][pm.MODEL_CONFIG_KEY]


async def test_the_pool_reading_moves_a_model_out_past_its_share_and_back_below_it(status_url: str) -> None:
    cfg = OperatorConfig(
        model_status_url=status_url, pool_unload_grace_s=0.0, pool_gpu_memory="16Gi",
        status_refresh_s=300.0, full_resync_s=3600.0,
    )  # fmt: skip
    kube, source = FakeKube(), PoolSource()
    kube.put(MODELSERVICES, msvc())
    kube.put(
        PODS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "pool-0", "namespace": NS, "labels": pm.pool_labels(KEY)},
            "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        },
    )
    watch(kube)
    ticker = Ticker(LoopDeps(kube=kube, config=cfg, source=source, clock=lambda: source.now), CACHE)  # type: ignore[arg-type]

    st = await tick(kube, source, ticker, T0)
    assert st["placement"]["shared"] and listed(kube)
    st = await tick(kube, source, ticker, T0 + 15)
    # The tick read it from the pool pod, by its model name, with the pool's pods.
    (pm_a,) = source.pooled[-1].values()
    assert (pm_a.pool, pm_a.model, [p.name for p in pm_a.pods]) == (KEY.name, NAME, ["pool-0"])
    assert pm_a.memory_bytes == 2**30
    assert st["requestsPerSecond"] == 5.0 and st["desiredReplicas"] == 0
    # At rest in the pool: its autoscaler wants a replica, which the pool serves instead: no writes.
    acted = ticker.state.acted
    for i in range(2, 6):
        await tick(kube, source, ticker, T0 + 15 * i)
    assert ticker.state.acted == acted

    # A stale reading of a busy pool moves nothing.
    source.rps = None
    st = await tick(kube, source, ticker, T0 + 100)
    assert st["placement"]["shared"] and listed(kube)

    # Past the leave threshold: out at once, onto its own replicas (surge first: still listed).
    source.rps = LEAVE_RPS * 1.2
    st = await tick(kube, source, ticker, T0 + 115)
    assert not st["placement"]["shared"] and st["placement"]["reason"] == "HighTraffic"
    dep = kube.peek(DEPLOYMENTS, NAME, NS)
    assert dep is not None and dep["spec"]["replicas"] >= 1
    assert listed(kube)  # the pool lets go only once its own replica is a ready endpoint
    # Its reading goes missing mid-handover (its new replicas' first scrape has no rate yet): it is held
    # where its placement is, out, even though the pool still lists it (seen on the real node: it
    # flapped back into the pool).
    source.rps = None
    st = await tick(kube, source, ticker, T0 + 120)
    assert not st["placement"]["shared"]
    dep = kube.peek(DEPLOYMENTS, NAME, NS)
    assert dep is not None and dep["spec"]["replicas"] >= 1

    # Just under the leave threshold but above the join one: it stays out.
    source.rps = (JOIN_RPS + LEAVE_RPS) / 2
    st = await tick(kube, source, ticker, T0 + 130)
    assert not st["placement"]["shared"]
    # Below the join threshold: back into the pool at once.
    source.rps = JOIN_RPS * 0.5
    st = await tick(kube, source, ticker, T0 + 145)
    assert st["placement"]["shared"] and listed(kube)

    # Deleted, the last pooled model: the tick still asks the source (with none), so that its ledger
    # forgets the model's run of windows (metrics/pooled.py PoolLedger.forget).
    kube.remove(MODELSERVICES, NAME, NS)
    CACHE.forget(NS, NAME)
    await ticker.tick(T0 + 160)
    assert source.pooled[-1] == {}
