"""The cache handlers: a deleted ModelService leaves no cache entry and no metric series behind (no
finalizer is needed for that: the DELETED watch event is enough), and a deleted pool member's pool is
re-planned at that event."""

from __future__ import annotations

import kopf
import pytest
from prometheus_client import CollectorRegistry

from greenserve.api import constants as c
from greenserve.cluster.cache import CACHE
from greenserve.config import OperatorConfig
from greenserve.handlers.cache import modelservice_seen
from greenserve.metrics.operator_metrics import OperatorMetrics
from greenserve.metrics.types import ServiceMetrics
from greenserve.reconcile import modelservice as rec
from greenserve.reconcile.loop import LoopDeps


async def test_a_deleted_modelservice_is_forgotten() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    memo = kopf.Memo()
    memo["loop"] = LoopDeps(kube=None, config=OperatorConfig(), metrics=metrics)  # type: ignore[arg-type]
    body = {"metadata": {"name": "svc", "namespace": "ml", "resourceVersion": "5"}, "spec": {}}
    await modelservice_seen(kopf.Body(body), type="ADDED", memo=memo)
    assert ("ml", "svc") in CACHE.msvcs
    metrics.update(ServiceMetrics("ml", "svc", power_w=50.0, stale=False), replicas_desired=2)
    metrics.record_scale("ml", "svc", 1, 2)
    labels = {"namespace": "ml", "modelservice": "svc"}
    up = {**labels, "direction": "up"}
    assert registry.get_sample_value("greenserve_modelservice_power_watts", labels) == 50.0
    assert registry.get_sample_value("greenserve_modelservice_scale_decisions_total", up) == 1.0
    await modelservice_seen(kopf.Body(body), type="DELETED", memo=memo)
    assert ("ml", "svc") not in CACHE.msvcs
    assert registry.get_sample_value("greenserve_modelservice_power_watts", labels) is None
    assert registry.get_sample_value("greenserve_modelservice_scale_decisions_total", up) is None


async def test_a_deleted_pool_member_re_plans_its_pool_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The other members of its pool are reconciled at the DELETED event (their reconcile syncs the pool
    and unloads the model), without waiting for the garbage collector's edit of the pool Deployment."""
    refreshed: list[tuple[str, str]] = []
    monkeypatch.setattr(rec, "refresh_soon", lambda kube, ns, name, config: refreshed.append((ns, name)))
    owners = [{"kind": "ModelService", "name": n} for n in ("a", "b", "c")]
    pool = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "pool-l4",
            "namespace": "ml",
            "resourceVersion": "7",
            "labels": {c.LABEL_POOL: "pool-l4"},
            "ownerReferences": owners,
        },
    }
    other = {**pool, "metadata": {**pool["metadata"], "namespace": "other"}}
    CACHE.observe_owned(pool)
    CACHE.observe_owned(other)
    memo = kopf.Memo()
    memo["kube"], memo["config"] = object(), OperatorConfig()
    try:
        body = {"metadata": {"name": "b", "namespace": "ml", "resourceVersion": "9"}, "spec": {}}
        await modelservice_seen(kopf.Body(body), type="DELETED", memo=memo)
        assert refreshed == [("ml", "a"), ("ml", "c")]
        # A ModelService in no pool re-plans nothing.
        refreshed.clear()
        lone = {"metadata": {"name": "d", "namespace": "ml", "resourceVersion": "3"}, "spec": {}}
        await modelservice_seen(kopf.Body(lone), type="DELETED", memo=memo)
        assert refreshed == []
    finally:
        CACHE.observe_owned(pool, deleted=True)
        CACHE.observe_owned(other, deleted=True)
