"""Adapter between a ModelService (spec, status, metrics reading) and the pure autoscaling policy.

The policy's stabilisation state round-trips through status.scaler, so the decision after an operator
restart is the one the old process would have made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from greenserve.api import conditions as cond
from greenserve.api.v1alpha1 import ConsolidationPolicy, ModelServiceSpec, ScalingMetric
from greenserve.config import OperatorConfig
from greenserve.manifests.builders import initial_replicas
from greenserve.metrics.types import ServiceMetrics
from greenserve.policy import autoscaling as pa
from greenserve.policy.energy import DEFAULT_GPU_PRODUCT, gpu_model_for

# Mean service time of one request when the spec gives no SLO to derive it from; only shapes the
# queueing guard, the capacity comes from spec.scaling.target.
DEFAULT_SERVICE_TIME_MS = 20.0
# Model load time assumed for the idle-to-zero break-even when nothing better is known.
DEFAULT_COLD_START_S = 60.0
# With an SLO, the energy policies size replicas by the queueing model for this share of requests within
# the SLO latency (the simulator's greenserve policy does the same); Performance keeps the fixed target.
# A sustained rise is projected over the cold start up to doubling the rate, as the simulator's policy does.
TREND_MAX_BOOST = 1.0
SLO_ATTAINMENT = {ConsolidationPolicy.BALANCED: 0.995, ConsolidationPolicy.POWER_SAVING: 0.99}


@dataclass(frozen=True)
class Decision:
    desired: int
    previous: int | None
    condition: tuple[str, bool, str, str]
    status_fields: dict[str, Any]


def scaling_inputs(
    spec: ModelServiceSpec,
    status: Mapping[str, Any],
    reading: ServiceMetrics | None,
    config: OperatorConfig,
) -> pa.ScalingInputs:
    current = status.get("desiredReplicas")
    replicas = int(current) if isinstance(current, int) else initial_replicas(spec)
    s = spec.scaling
    by_rps = s.metric == ScalingMetric.REQUESTS_PER_SECOND
    by_concurrency = s.metric == ScalingMetric.CONCURRENCY
    gpu = gpu_model_for(spec.gpu.product or DEFAULT_GPU_PRODUCT)
    gpus = max(spec.gpu.count, 1)
    capacity = float(s.target) / 0.8 if by_rps else None
    rate = reading.requests_per_s if reading else None
    queued = None
    if reading is not None and capacity:
        queued = pa.queued_from_inflight(reading.inflight_requests, rate, capacity)
    trend = None
    if reading is not None and len(reading.rate_history) >= 2 and reading.window_s > 0:
        trend = pa.sustained_trend(reading.rate_history, reading.window_s)
    return pa.ScalingInputs(
        current_replicas=replicas,
        ready_replicas=int(status.get("readyReplicas") or 0),
        min_replicas=s.min_replicas,
        max_replicas=s.max_replicas,
        # With a request-rate target the capacity is the target itself at full utilisation of it.
        target_utilization=0.8 if by_rps or by_concurrency else s.target / 100.0,
        capacity_rps=capacity,
        request_rate=rate,
        gpu_utilization=reading.gpu_utilization if reading else None,
        sampled_at=reading.sampled_at if reading else None,
        stale_after_s=config.metrics_stale_after_s,
        slo_p95_ms=float(spec.slo.latency_p95_ms) if spec.slo.latency_p95_ms else None,
        slo_attainment=SLO_ATTAINMENT.get(spec.energy.policy) if by_rps else None,
        service_time_ms=DEFAULT_SERVICE_TIME_MS,
        scale_down_delay_s=float(s.scale_down_delay_seconds),
        cold_start_s=DEFAULT_COLD_START_S,
        idle_power_w=gpu.loaded_idle_w * gpus,
        cold_start_energy_j=gpu.busy_w * gpus * DEFAULT_COLD_START_S,
        queued_requests=queued,
        request_rate_trend=trend,
        trend_max_boost=TREND_MAX_BOOST,
        # Knative-style: in-flight requests per replica from the agents' gauge; no gauge, no scaling.
        target_concurrency=float(s.target) if by_concurrency else None,
        concurrency=reading.inflight_requests if reading is not None and by_concurrency else None,
    )


def decide(
    spec: ModelServiceSpec,
    status: Mapping[str, Any],
    reading: ServiceMetrics | None,
    now: float,
    config: OperatorConfig,
) -> Decision:
    """One autoscaling step. `reading` is None when metrics are missing or stale: the policy holds."""
    inputs = scaling_inputs(spec, status, reading, config)
    raw_state = status.get("scaler")
    state = pa.ScalerState.from_dict(raw_state) if isinstance(raw_state, dict) else pa.ScalerState()
    result = pa.decide(inputs, state, now)
    desired = max(spec.scaling.min_replicas, min(spec.scaling.max_replicas, result.desired_replicas))
    previous = status.get("desiredReplicas") if isinstance(status.get("desiredReplicas"), int) else None
    changed = previous is not None and desired != previous
    fields: dict[str, Any] = {"scaler": result.state.to_dict()}
    if changed:
        fields["lastScaleTime"] = cond.now_rfc3339()
    message = f"{result.reason}: {inputs.current_replicas} -> {desired} replicas"
    return Decision(
        desired=desired,
        previous=previous,
        condition=(cond.SCALING, changed, result.reason, message),
        status_fields=fields,
    )
