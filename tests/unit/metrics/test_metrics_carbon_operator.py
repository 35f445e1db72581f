"""Energy bookkeeping, gCO2e, the operator's own metrics and PromQL construction."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from greenserve import contract as k
from greenserve.metrics.carbon import accumulate_energy, grams_co2e
from greenserve.metrics.operator_metrics import OperatorMetrics
from greenserve.metrics.prometheus import pods_regex, selector
from greenserve.metrics.types import PodRef, ServiceMetrics


def test_grams_co2e() -> None:
    assert grams_co2e(3.6e6, 400.0) == pytest.approx(400.0)  # 1 kWh
    assert grams_co2e(1800.0, 50.0) == pytest.approx(0.025)


def test_accumulated_energy_survives_moves_and_resets() -> None:
    total, last = accumulate_energy(0.0, {}, {"a": 100.0, "b": 50.0})
    assert total == 150.0
    total, last = accumulate_energy(total, last, {"a": 130.0, "b": 60.0})
    assert total == 190.0
    # b moved away (gone), c started (its whole counter is new energy), a's agent restarted (reset).
    total, last = accumulate_energy(total, last, {"a": 5.0, "c": 20.0})
    assert total == 215.0
    total, _ = accumulate_energy(total, last, {})
    assert total == 215.0


def _sample(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_operator_metrics_export_and_never_show_missing_as_zero() -> None:
    reg = CollectorRegistry()
    om = OperatorMetrics(reg)
    lbl = {"namespace": "ml", "modelservice": "svc"}
    m = ServiceMetrics(
        "ml", "svc", power_w=80.0, energy_j=1000.0, requests_per_s=4.0, joules_per_request=20.0, stale=False
    )
    om.update(m, energy_total_j=5000.0, grams_co2e=0.5, replicas_desired=3, replicas_ready=2)
    assert _sample(reg, k.OP_POWER.name, **lbl) == 80.0
    assert _sample(reg, k.OP_ENERGY.name, **lbl) == 5000.0
    assert _sample(reg, k.OP_RPS.name, **lbl) == 4.0
    assert _sample(reg, k.OP_JPR.name, **lbl) == 20.0
    assert _sample(reg, k.OP_CO2.name, **lbl) == 0.5
    assert _sample(reg, k.OP_REPLICAS_DESIRED.name, **lbl) == 3
    assert _sample(reg, k.OP_REPLICAS_READY.name, **lbl) == 2
    assert _sample(reg, k.OP_METRICS_STALE.name, **lbl) == 0
    om.update(ServiceMetrics("ml", "svc", missing=("power",)))
    assert _sample(reg, k.OP_POWER.name, **lbl) is None
    assert _sample(reg, k.OP_JPR.name, **lbl) is None
    assert _sample(reg, k.OP_METRICS_STALE.name, **lbl) == 1
    om.record_scale("ml", "svc", 2, 3)
    om.record_scale("ml", "svc", 3, 3)
    om.record_move("ml", "svc")
    assert _sample(reg, k.OP_SCALE_DECISIONS.name, direction="up", **lbl) == 1
    assert _sample(reg, k.OP_MOVES.name, reason="consolidation", **lbl) == 1
    om.forget("ml", "svc")
    assert _sample(reg, k.OP_SCALE_DECISIONS.name, direction="up", **lbl) is None
    assert _sample(reg, k.OP_METRICS_STALE.name, **lbl) is None


def test_selector_quotes_values_and_handles_colon_names() -> None:
    pods = [PodRef("ml", "svc-a.b"), PodRef("ml", "svc-2")]
    sel = selector(k.TFS_REQUEST_COUNT, namespace='m"l', pod=pods_regex(pods))
    assert (
        sel
        == '{__name__=":tensorflow:serving:request_count",namespace="m\\"l",pod=~"svc\\\\-a\\\\.b|svc\\\\-2"}'
    )
