"""Thin kopf layer: route ModelService and owned-Deployment events to greenserve.reconcile.

Handlers hold no logic: each one builds nothing, decides nothing, and calls one reconcile function.
Dependencies (the API client, the configuration) live in kopf's memo, set up at startup.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from greenserve.api import constants as c
from greenserve.cluster.client import KubeClient
from greenserve.config import OperatorConfig
from greenserve.reconcile import loop
from greenserve.reconcile import modelservice as rec

RESOURCE = (c.GROUP, c.VERSION, c.PLURAL)
# kopf fixes timer intervals when the handlers are registered, so the setting is read at import.
RESYNC_INTERVAL_S = OperatorConfig.from_env().reconcile_interval_s
log = logging.getLogger(__name__)


def _deps(memo: kopf.Memo) -> tuple[KubeClient, OperatorConfig]:
    return memo["kube"], memo["config"]


async def _run(body: kopf.Body, memo: kopf.Memo) -> None:
    kube, config = _deps(memo)
    outcome = await rec.reconcile(kube, body, config)
    if outcome.retry_after is not None:
        # kopf retries with this delay; the ModelService already shows Ready=False with the reason.
        raise kopf.TemporaryError(outcome.message, delay=outcome.retry_after)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
async def reconcile_modelservice(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await _run(body, memo)


@kopf.timer(*RESOURCE, interval=RESYNC_INTERVAL_S, initial_delay=RESYNC_INTERVAL_S)
async def resync_modelservice(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The periodic loop: metrics, autoscaling, drift repair (a deleted Service, a hand-scaled Deployment)."""
    outcome = await loop.resync(memo["loop"], body)
    if outcome.retry_after is not None:
        raise kopf.TemporaryError(outcome.message, delay=outcome.retry_after)


@kopf.on.event("apps", "v1", "deployments", labels={c.LABEL_MANAGED_BY: c.MANAGED_BY})
async def owned_deployment_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Rollout progress on an owned Deployment updates the owner's status without waiting for the timer.

    A deleted Deployment is re-applied by the same reconcile, unless its owner is being deleted.
    """
    owner = rec.deployment_owner(body)
    if owner is None:
        return
    kube, config = _deps(memo)
    await rec.refresh_status(kube, body["metadata"]["namespace"], owner, config)
