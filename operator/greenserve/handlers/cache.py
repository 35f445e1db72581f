"""Thin kopf layer feeding the watch-fed cache (cluster/cache.py) and repairing owned-object drift.

kopf's watches deliver every ModelService, serving pod and owned object; these handlers only record them.
An owned object deleted or changed by someone else triggers its owner's reconcile at once, so drift is
repaired without any periodic re-apply.
"""

from __future__ import annotations

from typing import Any

import kopf

from greenserve.api import constants as c
from greenserve.cluster.cache import CACHE
from greenserve.handlers.diffbase import DIFFBASE
from greenserve.handlers.leader import leading
from greenserve.reconcile import loop
from greenserve.reconcile import modelservice as rec
from greenserve.reconcile.loop import LoopDeps

RESOURCE = (c.GROUP, c.VERSION, c.PLURAL)
OWNED = {c.LABEL_MANAGED_BY: c.MANAGED_BY}


@kopf.on.event(*RESOURCE)
async def modelservice_seen(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Async for the wake: the activator's demand mark shows only here (reconcile/loop.py wake_soon)."""
    if type == "DELETED":
        # No finalizer: the deletion is already done; forget the cache entries and the metric series.
        meta = body["metadata"]
        CACHE.forget(meta["namespace"], meta["name"])
        DIFFBASE.forget(meta.get("uid"))
        loop.forget_wake(meta["namespace"], meta["name"])
        deps = memo.get("loop")
        if isinstance(deps, LoopDeps) and deps.metrics is not None:
            deps.metrics.forget(meta["namespace"], meta["name"])
        # A pool member's deletion re-plans its pool now (the other members' reconciles sync it and
        # unload the model), not only once the garbage collector has edited the pool Deployment's
        # ownerReferences, whose event reaches owned_deployment_changed.
        for member in rec.pool_members_beside(CACHE.owned.values(), meta["namespace"], meta["name"]):
            rec.refresh_soon(memo["kube"], meta["namespace"], member, memo["config"])
    else:
        CACHE.observe_msvc(body)
        deps = memo.get("loop")
        # A scale decision, like the metrics tick's: only the operator holding the Lease makes it.
        if isinstance(deps, LoopDeps) and leading(memo):
            loop.wake_soon(deps, body)


@kopf.on.event("", "v1", "pods", labels={c.LABEL_MODELSERVICE: kopf.PRESENT})
async def serving_pod_seen(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A replica that starts or stops serving is its ModelService's news at once: waiting for the
    Deployment's status to count it added the deployment controller's lag to every Ready (20 s at 1,000
    ModelServices on 2 cores). The refresh runs from the cache (no GET, no LIST); the pods of a deleted
    ModelService (gone from the cache) refresh nothing. Async: kopf runs a sync handler in a thread,
    where there is no event loop to schedule the refresh on."""
    if CACHE.observe_pod(body, deleted=type == "DELETED"):
        namespace, owner = body["metadata"]["namespace"], body["metadata"]["labels"][c.LABEL_MODELSERVICE]
        if (namespace, owner) in CACHE.msvcs:
            rec.refresh_soon(memo["kube"], namespace, owner, memo["config"])


@kopf.on.event("", "v1", "pods", labels={c.LABEL_POOL: kopf.PRESENT})
def pool_pod_seen(body: kopf.Body, type: str | None, **_: Any) -> None:
    CACHE.observe_pool_pod(body, deleted=type == "DELETED")


async def _owned(body: kopf.Body, type: str | None, memo: kopf.Memo) -> None:
    drifted = CACHE.observe_owned(body, deleted=type == "DELETED")
    owner = rec.deployment_owner(body)
    if drifted and owner is not None:
        rec.refresh_soon(memo["kube"], body["metadata"]["namespace"], owner, memo["config"])


@kopf.on.event("", "v1", "services", labels=OWNED)
async def owned_service_seen(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    await _owned(body, type, memo)


@kopf.on.event("", "v1", "configmaps", labels=OWNED)
async def owned_configmap_seen(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    await _owned(body, type, memo)


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=OWNED)
async def owned_pdb_seen(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    await _owned(body, type, memo)


@kopf.on.event("discovery.k8s.io", "v1", "endpointslices", labels=OWNED)
async def owned_endpointslice_seen(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """The EndpointSlices that route a scaled-to-zero ModelService's Service to the activator."""
    await _owned(body, type, memo)
