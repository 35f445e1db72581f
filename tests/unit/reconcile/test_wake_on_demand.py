"""The activator's demand mark wakes a ModelService at zero from the watch event, without a metrics
reading (reconcile/loop.py `wake`, `wake_soon`), and a stale mark does not."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import kopf
import pytest

from greenserve.api import constants as c
from greenserve.cluster.cache import CACHE, ClusterCache
from greenserve.cluster.client import DEPLOYMENTS, ENDPOINTSLICES, MODELSERVICES, SERVICES
from greenserve.cluster.lease import LeaseLock
from greenserve.config import OperatorConfig
from greenserve.handlers.cache import modelservice_seen
from greenserve.handlers.modelservice import reconcile_modelservice
from greenserve.reconcile import loop, routing
from support.fake_kube import FakeKube

NS, NAME = "ml", "m"
CONFIG = OperatorConfig(activator_service=("gs", "gs-activator"))


@pytest.fixture(autouse=True)
def cache() -> Iterator[ClusterCache]:
    saved = dataclasses.replace(CACHE)
    for f in dataclasses.fields(ClusterCache):
        setattr(CACHE, f.name, getattr(ClusterCache(), f.name))
    routing.ACTIVATOR.target = routing.ACTIVATOR.read_at = None
    yield CACHE
    for f in dataclasses.fields(ClusterCache):
        setattr(CACHE, f.name, getattr(saved, f.name))


def parked(demand_at: float | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": NAME, "namespace": NS, "generation": 1, "uid": "u1"}
    if demand_at is not None:
        meta["annotations"] = {c.ANN_ACTIVATION_DEMAND: f"{demand_at:.3f}"}
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": meta,
        "spec": {
            "model": {"name": "m", "storageUri": "pvc://models/m"},
            "scaling": {"minReplicas": 0, "maxReplicas": 2, "scaleToZeroAfterSeconds": 60},
        },
        "status": {"desiredReplicas": 0, "routing": "Activator", "scaler": {"idleSince": time.time() - 600}},
    }


def kube_with(body: dict[str, Any]) -> FakeKube:
    kube = FakeKube()
    kube.put(MODELSERVICES, body)
    kube.put(
        ENDPOINTSLICES,
        {
            "metadata": {
                "name": "gs-activator-1",
                "namespace": "gs",
                "labels": {c.LABEL_SERVICE_NAME: "gs-activator"},
            },
            "ports": [{"name": "http", "port": 8012}],
            "endpoints": [{"addresses": ["10.0.0.7"], "conditions": {"ready": True}}],
        },
    )
    return kube


async def test_a_fresh_demand_mark_wakes_one_replica_at_once() -> None:
    body = parked(time.time())
    kube = kube_with(body)
    deps = loop.LoopDeps(kube=kube, config=CONFIG)  # type: ignore[arg-type]
    assert loop.wants_wake(body)
    await loop.wake(deps, body)
    dep = kube.peek(DEPLOYMENTS, NAME, NS)
    assert dep is not None and dep["spec"]["replicas"] == 1
    msvc = kube.peek(MODELSERVICES, NAME, NS)
    assert msvc is not None and msvc["status"]["desiredReplicas"] == 1
    # No replica is ready yet: the Service keeps routing to the activator, which holds the requests.
    svc = kube.peek(SERVICES, NAME, NS)
    assert svc is not None and "selector" not in svc["spec"]
    assert msvc["status"]["routing"] == "Activator"


async def test_a_stale_demand_mark_leaves_it_parked() -> None:
    body = parked(time.time() - 3600)
    kube = kube_with(body)
    deps = loop.LoopDeps(kube=kube, config=CONFIG)  # type: ignore[arg-type]
    await loop.wake(deps, body)
    dep = kube.peek(DEPLOYMENTS, NAME, NS)
    assert dep is not None and dep["spec"]["replicas"] == 0
    assert not loop.wants_wake(parked(None))


class Leading(LeaseLock):
    def held(self) -> bool:
        return True


def memo_for(kube: FakeKube, leader: bool = True) -> kopf.Memo:
    memo = kopf.Memo()
    memo["kube"], memo["config"] = kube, CONFIG
    memo["loop"] = loop.LoopDeps(kube=kube, config=CONFIG)  # type: ignore[arg-type]
    memo["leader"] = (Leading if leader else LeaseLock)(kube, "greenserve-leader", "gs", "me")  # type: ignore[arg-type]
    return memo


async def _settled() -> None:
    while loop._WAKES:
        await asyncio.gather(*loop._WAKES)


async def test_the_watch_event_of_the_mark_wakes_it_without_a_tick() -> None:
    """kopf's change handlers never see the mark (an annotation under greenserve's group is left out of
    their diff): the event handler is what wakes the ModelService, once per mark."""
    body = parked(time.time())
    kube = kube_with(body)
    memo = memo_for(kube)
    await modelservice_seen(kopf.Body(body), type="MODIFIED", memo=memo)
    await _settled()
    dep = kube.peek(DEPLOYMENTS, NAME, NS)
    assert dep is not None and dep["spec"]["replicas"] == 1
    # The same mark seen again (the event of the wake's own status write, a replay) wakes nothing again.
    assert not loop.wake_soon(memo["loop"], body)
    await modelservice_seen(kopf.Body({**body, "metadata": {**body["metadata"]}}), type="DELETED", memo=memo)
    assert loop.wake_soon(memo["loop"], body)  # forgotten with the ModelService
    await _settled()


async def test_a_stale_mark_in_a_watch_event_schedules_nothing() -> None:
    body = parked(time.time() - 3600)
    kube = kube_with(body)
    memo = memo_for(kube)
    await modelservice_seen(kopf.Body(body), type="MODIFIED", memo=memo)
    assert not loop._WAKES
    assert kube.peek(DEPLOYMENTS, NAME, NS) is None


async def test_only_the_operator_holding_the_lease_wakes_it() -> None:
    body = parked(time.time())
    kube = kube_with(body)
    await modelservice_seen(kopf.Body(body), type="MODIFIED", memo=memo_for(kube, leader=False))
    assert not loop._WAKES
    assert kube.peek(DEPLOYMENTS, NAME, NS) is None


@pytest.mark.parametrize("leader", [True, False])
async def test_a_resume_with_a_fresh_mark_wakes_it_only_in_the_leader(leader: bool) -> None:
    """kopf's resume (an operator restart) sees a mark it never saw as an event: the leader wakes the
    ModelService from it, an operator without the Lease reconciles it at zero."""
    body = parked(time.time())
    kube = kube_with(body)
    await reconcile_modelservice(body=kopf.Body(body), memo=memo_for(kube, leader=leader))
    dep = kube.peek(DEPLOYMENTS, NAME, NS)
    assert dep is not None and dep["spec"]["replicas"] == (1 if leader else 0)
