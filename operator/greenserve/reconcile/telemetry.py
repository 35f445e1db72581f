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
from greenserve.metrics.carbon import accumulate_energy, grams_co2e
from greenserve.metrics.types import ServiceMetrics

METRICS_AVAILABLE = "MetricsAvailable"


@dataclass(frozen=True)
class Telemetry:
    fields: dict[str, Any]
    fresh: bool
    reason: str
    message: str


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def telemetry_fields(
    previous: Mapping[str, Any], metrics: ServiceMetrics | None, carbon_g_per_kwh: float
) -> Telemetry:
    instantaneous = ("powerWatts", "requestsPerSecond", "inflightRequests", "joulesPerRequest")
    if metrics is None:
        cleared = dict.fromkeys(instantaneous)
        return Telemetry(cleared, False, "NoSource", "no metrics source is configured or reachable")
    fresh = not metrics.stale and metrics.power_w is not None
    if not fresh:
        cleared = dict.fromkeys(instantaneous)
        missing = ", ".join(metrics.missing) or "no samples"
        reason = "Stale" if metrics.sampled_at is not None else "Missing"
        return Telemetry(cleared, False, reason, f"{metrics.source}: {missing}")

    total = float(previous.get("energyJoules") or 0.0)
    last = {str(k): float(v) for k, v in (previous.get("energyCounters") or {}).items()}
    total, counters = (
        accumulate_energy(total, last, metrics.pod_energy_j)
        if metrics.pod_energy_j
        else (
            total,
            last,
        )
    )
    fields: dict[str, Any] = {
        "powerWatts": _round(metrics.power_w, 1),
        "requestsPerSecond": _round(metrics.requests_per_s),
        "inflightRequests": _round(metrics.inflight_requests, 1),
        "joulesPerRequest": _round(metrics.joules_per_request),
        "energyJoules": _round(total, 1),
        # A merge patch keeps map keys it does not mention: replicas gone since last time are nulled out.
        "energyCounters": {
            **dict.fromkeys(set(last) - set(counters)),
            **{k: round(v, 3) for k, v in counters.items()},
        },
        "gramsCO2e": _round(grams_co2e(total, carbon_g_per_kwh)),
        "metricsSimulated": metrics.simulated,
    }
    return Telemetry(
        fields, True, "Fresh", f"{metrics.source}, {metrics.replicas_reporting} replicas reporting"
    )


def metrics_condition(conditions: Any, telemetry: Telemetry, generation: int | None) -> list[dict[str, Any]]:
    return cond.set_condition(
        conditions, METRICS_AVAILABLE, telemetry.fresh, telemetry.reason, telemetry.message, generation
    )
