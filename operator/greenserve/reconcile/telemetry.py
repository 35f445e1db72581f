"""Turn a metrics reading into ModelService status fields: power, cumulative energy, traffic, carbon.

Pure: the previous status and a ServiceMetrics in, the fields to merge into status out. A stale or
missing reading clears the instantaneous figures (null, shown as blank) instead of writing zeros, and
keeps the cumulative energy where it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from greenserve.api import conditions as cond
from greenserve.api.v1alpha1 import ModelServiceStatus
from greenserve.metrics.carbon import accumulate_energy, grams_co2e
from greenserve.metrics.types import ServiceMetrics

METRICS_AVAILABLE = "MetricsAvailable"


@dataclass(frozen=True)
class Telemetry:
    fields: ModelServiceStatus
    fresh: bool
    reason: str
    message: str

    @property
    def condition(self) -> cond.ConditionUpdate:
        return cond.ConditionUpdate(METRICS_AVAILABLE, self.fresh, self.reason, self.message)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _cleared() -> ModelServiceStatus:
    return ModelServiceStatus(
        power_watts=None, requests_per_second=None, inflight_requests=None, joules_per_request=None
    )


def telemetry_fields(
    previous: Mapping[str, Any], metrics: ServiceMetrics | None, carbon_g_per_kwh: float
) -> Telemetry:
    if metrics is None:
        return Telemetry(_cleared(), False, "NoSource", "no metrics source is configured or reachable")
    fresh = not metrics.stale and metrics.power_w is not None
    if not fresh:
        missing = ", ".join(metrics.missing) or "no samples"
        reason = "Stale" if metrics.sampled_at is not None else "Missing"
        return Telemetry(_cleared(), False, reason, f"{metrics.source}: {missing}")

    total = float(previous.get("energyJoules") or 0.0)
    last = {str(k): float(v) for k, v in (previous.get("energyCounters") or {}).items()}
    total, counters = (
        accumulate_energy(total, last, metrics.pod_energy_j) if metrics.pod_energy_j else (total, last)
    )
    fields = ModelServiceStatus(
        power_watts=_round(metrics.power_w, 1),
        requests_per_second=_round(metrics.requests_per_s),
        inflight_requests=_round(metrics.inflight_requests, 1),
        joules_per_request=_round(metrics.joules_per_request),
        energy_joules=_round(total, 1),
        # Replaces the stored map: status_patch nulls out replicas gone since last time.
        energy_counters={k: round(v, 3) for k, v in counters.items()},
        grams_co2e=_round(grams_co2e(total, carbon_g_per_kwh)),
        metrics_simulated=metrics.simulated,
    )
    return Telemetry(
        fields, True, "Fresh", f"{metrics.source}, {metrics.replicas_reporting} replicas reporting"
    )
