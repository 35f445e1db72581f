"""The activator's demand mark wakes a ModelService at zero from the watch event, without a metrics
reading (reconcile/loop.py `wake`), and a stale mark does not."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest

from greenserve.api import constants as c
from greenserve.cluster.cache import CACHE, ClusterCache
from greenserve.cluster.client import DEPLOYMENTS, ENDPOINTSLICES, MODELSERVICES, SERVICES
from greenserve.config import OperatorConfig
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
