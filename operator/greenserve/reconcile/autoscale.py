"""Adapter between a ModelService (spec, status, metrics reading) and the pure autoscaling policy.

The policy's stabilisation state round-trips through status.scaler, so the decision after an operator
restart is the one the old process would have made, including a hold after a metrics gap.

The energy policies size the fleet, not each model alone (policy/fleet.py): `FleetBook` keeps the latest
sizing inputs of every ModelService this process reconciled, and one price per late request is set for
all those with the same attainment target. The book lives in memory: after a restart it refills as each
ModelService is reconciled, and until then the fleet is the ModelServices seen so far (one alone is sized
for the target by itself, as without the fleet objective). Entries older than the metrics' staleness
threshold drop out, so a deleted or silent ModelService no longer moves the price. `RateHistory` keeps
the last hour of each ModelService's request rate, in memory too, for the headroom against rises within
the lead time (`estimate.rise_factor`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from greenserve.api import conditions as cond
from greenserve.api.v1alpha1 import ConsolidationPolicy, ModelServiceSpec, ModelServiceStatus, ScalingMetric
from greenserve.config import OperatorConfig
from greenserve.manifests.builders import initial_replicas
from greenserve.metrics.types import ServiceMetrics
from greenserve.policy import autoscaling as pa
from greenserve.policy import estimate, fleet
from greenserve.policy.energy import DEFAULT_GPU_PRODUCT, NodePowerModel, gpu_model_for
from greenserve.reconcile.bounds import bounded
from greenserve.reconcile.status import ScaleIntent

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
# A replica's share of its node's base power: GPU nodes of 8 GPUs (the simulator's default) unless known.
GPUS_PER_NODE = 8


class FleetBook:
    """The latest fleet-sizing inputs per ModelService, in memory (see the module docstring)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[float, float, fleet.FleetMember]] = {}

    def price(
        self, key: tuple[str, str], target: float, member: fleet.FleetMember, now: float, ttl_s: float
    ) -> float:
        """Record `key`'s member and return the price that sizes its fleet (same target) for `target`."""
        self._entries[key] = (now, target, member)
        for k, (seen, _, _) in list(self._entries.items()):
            if now - seen > ttl_s:
                del self._entries[k]
        members = [m for _, t, m in self._entries.values() if t == target]
        return fleet.fleet_price(members, target)


FLEET = FleetBook()

# The rise factor (policy/estimate.py) learns from this much of each ModelService's history, with a
# lead time of one metrics window + node provisioning + the model load.
RISE_HISTORY_S = 3600.0
NODE_PROVISION_S = 120.0


class RateHistory:
    """Per ModelService, the newest window's request rate each time a new window is read, over the last
    RISE_HISTORY_S (in memory: after a restart the factor is 1 until the history refills). Readings closer
    than one window apart are not recorded twice, so entries are about one window apart."""

    def __init__(self) -> None:
        self._rates: dict[tuple[str, str], deque[tuple[float, float]]] = {}

    def record(self, key: tuple[str, str], at: float, rate: float, window_s: float) -> list[float]:
        """Add a reading; the recorded rates, newest first."""
        q = self._rates.setdefault(key, deque())
        if not q or at - q[-1][0] >= window_s:
            q.append((at, rate))
        while q and at - q[0][0] > RISE_HISTORY_S:
            q.popleft()
        for k in [k for k, other in self._rates.items() if other and at - other[-1][0] > RISE_HISTORY_S]:
            del self._rates[k]  # a deleted or long-silent ModelService
        return [r for _, r in reversed(q)]


HISTORY = RateHistory()


@dataclass(frozen=True)
class Decision:
    desired: int
    previous: int | None
    intent: ScaleIntent
    status: ModelServiceStatus


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
        trend = estimate.significant_trend(reading.rate_history, reading.window_s)
    slo_attainment = SLO_ATTAINMENT.get(spec.energy.policy) if by_rps else None
    # Only where the SLO sizes the replicas (energy policy + an SLO), as in the simulator's policy.
    sized_by_slo = bool(slo_attainment and spec.slo.latency_p95_ms)
    # The data the reading spans: after a gap, it must all be fresh before a scale-down (policy hold).
    window = reading.window_s if reading is not None else config.metrics_window_s
    if sized_by_slo and reading is not None and rate is not None and reading.window_s > 0:
        # Pool the windows at low rates and size for the rate's upper confidence bound (policy/estimate.py);
        # no request in any window stays 0 (idle).
        est = estimate.estimate_rate(reading.rate_history or (rate,), reading.window_s)
        if est is not None:
            window = max(window, est.horizon_s)
            if est.events > 0:
                rate = est.rate
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
        slo_attainment=slo_attainment,
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
        metrics_window_s=window,
    )


def decide(
    spec: ModelServiceSpec,
    status: Mapping[str, Any],
    reading: ServiceMetrics | None,
    now: float,
    config: OperatorConfig,
    fleet_book: FleetBook | None = None,
    history: RateHistory | None = None,
) -> Decision:
    """One autoscaling step. `reading` is None when metrics are missing or stale: the policy holds."""
    inputs = scaling_inputs(spec, status, reading, config)
    target = inputs.slo_attainment
    if reading is not None and target and inputs.slo_p95_ms and inputs.request_rate and reading.window_s > 0:
        # Headroom for the rises this model has shown within the lead time, at the target's quantile.
        past = (HISTORY if history is None else history).record(
            (reading.namespace, reading.name),
            reading.sampled_at or now,
            reading.requests_per_s or 0.0,
            reading.window_s,
        )
        lead = reading.window_s + NODE_PROVISION_S + DEFAULT_COLD_START_S
        factor = estimate.rise_factor(past, reading.window_s, lead, target)
        inputs = replace(inputs, request_rate=inputs.request_rate * factor)
    if reading is not None and target and inputs.slo_p95_ms and inputs.request_rate is not None:
        # The fleet objective: this model's share of the fleet's target at the fleet's price.
        power = max(spec.gpu.count, 1) * (
            gpu_model_for(spec.gpu.product or DEFAULT_GPU_PRODUCT).loaded_idle_w
            + NodePowerModel().base_w / GPUS_PER_NODE
        )
        member = fleet.FleetMember(
            max(0.0, inputs.request_rate),
            inputs.capacity_rps or 1000.0 / inputs.service_time_ms,
            inputs.slo_p95_ms / 1000.0,
            power,
            spec.scaling.min_replicas,
            spec.scaling.max_replicas,
        )
        book = FLEET if fleet_book is None else fleet_book
        key = (reading.namespace, reading.name)
        price = book.price(key, target, member, now, config.metrics_stale_after_s)
        inputs = replace(inputs, slo_attainment=fleet.member_target(member, price, target))
    raw_state = status.get("scaler")
    state = pa.ScalerState.from_dict(raw_state) if isinstance(raw_state, dict) else pa.ScalerState()
    result = pa.decide(inputs, state, now)
    limit = bounded(spec, config, result.desired_replicas)
    desired = limit.replicas
    previous = status.get("desiredReplicas") if isinstance(status.get("desiredReplicas"), int) else None
    changed = previous is not None and desired != previous
    fields: dict[str, Any] = {"scaler": result.state.to_dict()}
    if changed:
        fields["last_scale_time"] = cond.now_rfc3339()
    if result.desired_replicas != desired and limit.capped_from is None:
        cause = f"within minReplicas {spec.scaling.min_replicas} and maxReplicas {spec.scaling.max_replicas}"
    else:
        cause = f"demand {result.demand_replicas}" if result.demand_replicas is not None else "no demand"
    # The API conventions ask for CamelCase condition reasons, whatever the policy calls them.
    reason = result.reason.replace(":", "")
    intent = ScaleIntent(
        previous=previous,
        desired=desired,
        reason=reason,
        message=f"{reason}, {cause}",
        capped_from=limit.capped_from,
    )
    return Decision(desired=desired, previous=previous, intent=intent, status=ModelServiceStatus(**fields))
