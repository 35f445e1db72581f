"""Routing a minReplicas 0 ModelService's Service to the activator and back (reconcile/routing.py),
make-before-break, against the in-memory API server stand-in."""

from __future__ import annotations

from typing import Any

import pytest

from greenserve.api import constants as c
from greenserve.api.v1alpha1 import Routing, parse_spec
from greenserve.cluster.client import ENDPOINTSLICES, SERVICES
from greenserve.config import OperatorConfig
from greenserve.manifests import builders
from greenserve.reconcile import routing
from support.fake_kube import FakeKube

NS = "models"
OWNER = builders.Owner("m", NS, "uid-1")
CONFIG = OperatorConfig(activator_service=("greenserve", "greenserve-activator"))
SPEC = parse_spec(
    {"model": {"name": "m", "storageUri": "pvc://models/m"}, "scaling": {"minReplicas": 0, "maxReplicas": 2}}
)


def ready_pod(ready: bool = True, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "m-1", "namespace": NS}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T12:00:00Z"
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": str(ready)}]}}


def slice_of(service: str, ns: str, ready: list[str], manager: str, port: int = 8501) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-x",
            "namespace": ns,
            "labels": {c.LABEL_SERVICE_NAME: service, c.LABEL_ENDPOINTSLICE_MANAGED_BY: manager},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in ready],
    }


@pytest.fixture
def kube() -> FakeKube:
    k = FakeKube()
    addresses = ["10.0.0.7", "10.0.0.8"]
    manager = routing.CONTROLLER_MANAGER
    k.put(ENDPOINTSLICES, slice_of("greenserve-activator", "greenserve", addresses, manager, 8012))
    return k


async def test_no_ready_replica_routes_to_the_activator(kube: FakeKube) -> None:
    book = routing.ActivatorBook()
    route = await routing.apply_route(kube, OWNER, SPEC, {}, [ready_pod(deleting=True)], CONFIG, book)
    assert route == routing.Route(Routing.ACTIVATOR, True)
    svc = kube.peek(SERVICES, "m", NS)
    assert svc is not None and "selector" not in svc["spec"]
    eps = kube.peek(ENDPOINTSLICES, "m-activator", NS)
    assert eps is not None
    assert eps["metadata"]["labels"][c.LABEL_ENDPOINTSLICE_MANAGED_BY] == c.ENDPOINTSLICE_MANAGER
    assert eps["metadata"]["labels"][c.LABEL_SERVICE_NAME] == "m"
    assert [e["addresses"][0] for e in eps["endpoints"]] == ["10.0.0.7", "10.0.0.8"]
    assert eps["ports"] == [{"name": "http", "port": 8012, "protocol": "TCP"}]


async def test_to_the_activator_only_once_the_controller_lists_no_ready_replica(kube: FakeKube) -> None:
    # Our pod view already says not ready; the controller's slice still lists the replica as ready.
    kube.put(ENDPOINTSLICES, slice_of("m", NS, ["10.1.0.5"], routing.CONTROLLER_MANAGER))
    book = routing.ActivatorBook()
    route = await routing.apply_route(kube, OWNER, SPEC, {}, [ready_pod(ready=False)], CONFIG, book)
    assert route == routing.Route(Routing.REPLICAS, False)
    svc = kube.peek(SERVICES, "m", NS)
    assert svc is not None and svc["spec"]["selector"] == {c.LABEL_MODELSERVICE: "m"}
    assert kube.peek(ENDPOINTSLICES, "m-activator", NS) is None


async def test_back_to_the_replicas_make_before_break(kube: FakeKube) -> None:
    book = routing.ActivatorBook()
    at_zero = {"routing": "Activator"}
    await routing.apply_route(kube, OWNER, SPEC, at_zero, [], CONFIG, book)
    # A replica is Ready; the controller has no slice for the restored selector yet.
    route = await routing.apply_route(kube, OWNER, SPEC, at_zero, [ready_pod()], CONFIG, book)
    assert route == routing.Route(Routing.ACTIVATOR, False)
    svc = kube.peek(SERVICES, "m", NS)
    assert svc is not None and svc["spec"]["selector"] == {c.LABEL_MODELSERVICE: "m"}
    eps = kube.peek(ENDPOINTSLICES, "m-activator", NS)
    assert eps is not None and len(eps["endpoints"]) == 2  # the activator still answers meanwhile
    kube.put(ENDPOINTSLICES, slice_of("m", NS, ["10.1.0.9"], routing.CONTROLLER_MANAGER))
    route = await routing.apply_route(kube, OWNER, SPEC, at_zero, [ready_pod()], CONFIG, book)
    assert route == routing.Route(Routing.REPLICAS, True)
    eps = kube.peek(ENDPOINTSLICES, "m-activator", NS)
    assert eps is not None and eps["endpoints"] == []


async def test_without_a_ready_activator_the_selector_stays(kube: FakeKube) -> None:
    kube.remove(ENDPOINTSLICES, "greenserve-activator-x", "greenserve")
    route = await routing.apply_route(kube, OWNER, SPEC, {}, [], CONFIG, routing.ActivatorBook())
    assert route.routing == Routing.REPLICAS
    svc = kube.peek(SERVICES, "m", NS)
    assert svc is not None and "selector" in svc["spec"]


def test_routed_only_with_an_activator_and_min_zero() -> None:
    assert routing.routed(SPEC, {}, CONFIG)
    assert not routing.routed(SPEC, {}, OperatorConfig())
    one = parse_spec({"model": {"name": "m", "storageUri": "pvc://models/m"}})
    assert not routing.routed(one, {}, CONFIG)
    assert routing.routed(one, {"routing": "Activator"}, CONFIG)  # minReplicas raised while at zero


def test_private_service_selects_the_pods_and_fits_a_service_name() -> None:
    svc = builders.private_service(OWNER, SPEC)
    assert svc["metadata"]["name"] == "m-private" and svc["spec"]["selector"] == {c.LABEL_MODELSERVICE: "m"}
    long = "a" * 63
    name = builders.private_service_name(long)
    assert len(name) <= 63 and name.endswith("-private") and name != builders.private_service_name("a" * 62)
    objs = builders.objects(OWNER, SPEC, 0, builders.BuildOptions(), zero_capable=True)
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "Service"] == ["m-private"]


async def test_a_pooled_model_keeps_its_pool_selector_and_counts_pool_pods_as_ready(kube: FakeKube) -> None:
    book = routing.ActivatorBook()
    # Served from a shared pool: no own replica, but pool pods labelled as serving it.
    route = await routing.apply_route(
        kube, OWNER, SPEC, {}, [], CONFIG, book, pool_routed=True, serving_elsewhere=True
    )
    assert route == routing.Route(Routing.REPLICAS, True)
    svc = kube.peek(SERVICES, "m", NS)
    assert svc is not None and svc["spec"]["selector"] == builders.service_selector(OWNER, routed=True)
    # Unloaded from the pool and no replica: to the activator; back with the pool selector.
    route = await routing.apply_route(kube, OWNER, SPEC, {}, [], CONFIG, book, pool_routed=True)
    assert route.routing == Routing.ACTIVATOR
    kube.put(ENDPOINTSLICES, slice_of("m", NS, ["10.1.0.9"], routing.CONTROLLER_MANAGER))
    at_zero = {"routing": "Activator"}
    route = await routing.apply_route(
        kube, OWNER, SPEC, at_zero, [], CONFIG, book, pool_routed=True, serving_elsewhere=True
    )
    assert route == routing.Route(Routing.REPLICAS, True)
    svc = kube.peek(SERVICES, "m", NS)
    assert svc is not None and svc["spec"]["selector"] == builders.service_selector(OWNER, routed=True)
