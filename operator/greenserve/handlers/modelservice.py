"""Thin kopf layer: route ModelService and owned-Deployment events to greenserve.reconcile.

Handlers hold no logic: each one builds nothing, decides nothing, and calls one reconcile function.
Dependencies (the API client, the configuration) live in kopf's memo, set up at startup. None of them
needs a finalizer (no timers or daemons, no mandatory delete handler): the periodic work is one task of
its own (handlers/ticker.py), and owned objects go with their ModelService through ownerReferences.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from greenserve.api import constants as c
from greenserve.cluster.cache import CACHE
from greenserve.cluster.client import KubeClient
from greenserve.config import OperatorConfig
from greenserve.handlers.leader import leading
from greenserve.reconcile import loop
from greenserve.reconcile import modelservice as rec

RESOURCE = (c.GROUP, c.VERSION, c.PLURAL)
log = logging.getLogger(__name__)


def _deps(memo: kopf.Memo) -> tuple[KubeClient, OperatorConfig]:
    return memo["kube"], memo["config"]


async def _run(body: kopf.Body, memo: kopf.Memo) -> None:
    kube, config = _deps(memo)
    deps = memo.get("loop")
    if isinstance(deps, loop.LoopDeps) and loop.wants_wake(body) and leading(memo):
        # The activator holds requests for it (its demand mark, seen at a resume or with a spec change):
        # scale up now. A scale decision, like the metrics tick's: only the operator holding the Lease
        # makes it; another keeps the replica count and the leader's watch event wakes it.
        outcome = await loop.wake(deps, body)
    else:
        outcome = await rec.reconcile_change(kube, body, config)
    if outcome.retry_after is not None:
        # kopf retries with this delay; the ModelService already shows Ready=False with the reason.
        raise kopf.TemporaryError(outcome.message, delay=outcome.retry_after)


# A failure other than the reconcile's own retry (a request that timed out on an overloaded API server)
# is retried after this many seconds, not kopf's default minute: the reconcile is idempotent, and one
# that finds everything applied costs a GET and a LIST.
RETRY_S = 10.0


@kopf.on.resume(*RESOURCE, backoff=RETRY_S)
@kopf.on.create(*RESOURCE, backoff=RETRY_S)
@kopf.on.update(*RESOURCE, backoff=RETRY_S)
async def reconcile_modelservice(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await _run(body, memo)


@kopf.on.event("apps", "v1", "deployments", labels={c.LABEL_MANAGED_BY: c.MANAGED_BY})
async def owned_deployment_changed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Rollout progress on an owned Deployment updates the owner's status without waiting for a tick.

    A deleted or hand-edited Deployment is re-applied by the same reconcile (the watch-fed cache sees the
    drift), unless its owner is being deleted.
    """
    CACHE.observe_owned(body, deleted=type == "DELETED")
    kube, config = _deps(memo)
    namespace = body["metadata"]["namespace"]
    # A shared pool's Deployment belongs to every member: each one's reconcile syncs the pool.
    for member in rec.pool_members(body):
        rec.refresh_soon(kube, namespace, member, config)
    owner = rec.deployment_owner(body)
    if owner is None:
        return
    rec.refresh_soon(kube, namespace, owner, config)
