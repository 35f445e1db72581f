"""The cache handlers: a deleted ModelService leaves no cache entry and no metric series behind (no
finalizer is needed for that: the DELETED watch event is enough)."""

from __future__ import annotations

import kopf
from prometheus_client import CollectorRegistry

from greenserve.cluster.cache import CACHE
from greenserve.config import OperatorConfig
from greenserve.handlers.cache import modelservice_seen
from greenserve.metrics.operator_metrics import OperatorMetrics
from greenserve.metrics.types import ServiceMetrics
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
