"""The one adapter from a served model and its metrics to the autoscaling policy's inputs: pure.

The operator (reconcile/autoscale.py, from a ModelService and a metrics reading) and the simulator
(simulator/policies.py, from its models and what it observed) both describe a service as a
`ServiceProfile` (what the spec says and the defaults for what it does not) and what was seen as a
`Reading`, and call `scaling_inputs`: so the benchmark runs the mapping that ships.
`greenserve.manifests.profile.service_profile` turns a ModelServiceSpec into a profile.

The parts of a decision that need more than one service (the fleet objective's price, a model's own
history of rises, the GPU placement) stay with the caller; their per-service pieces are here:
`fleet_member`, `rise_lead_s` and `sharing_demand`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from greenserve.policy import estimate
from greenserve.policy.autoscaling import ScalingInputs, headroom_factor, inflight_noise, queued_from_inflight
from greenserve.policy.energy import (
    DEFAULT_GPU_PRODUCT,
    GpuPowerModel,
    NodePowerModel,
    break_even_idle_s,
    gpu_model_for,
)
from greenserve.policy.fleet import FleetMember
from greenserve.policy.queueing import GUARD_ATTAINMENT
from greenserve.policy.sharing import ModelDemand, Sharing

# A requestsPerSecond or concurrency `scaling.target` is what one replica carries at this utilisation:
# the target is met at 80% busy, so a replica's service rate (requests/s at 100%) is target / 0.8, and
# the policy's fixed-target demand is rate / (service rate * 0.8) = rate / target.
UTILISATION_AT_TARGET = 0.8
# Mean service time of one request when nothing gives the service rate (a gpuUtilization target); only
# shapes the queueing guard.
DEFAULT_SERVICE_TIME_MS = 20.0
# Model load time: the spec does not give it, so every service is assumed to take this long to become
# Ready (the trend projection's horizon, the idle-to-zero break-even, the rise headroom's lead time).
DEFAULT_COLD_START_S = 60.0
# A sustained rise is projected over the cold start up to doubling the observed rate.
TREND_MAX_BOOST = 1.0
# Adjacent metric windows the trend is computed from (the metrics sources read this many).
TREND_WINDOWS = 3
# Time a node autoscaler takes to bring up a GPU node: part of the lead time the rise headroom covers.
NODE_PROVISION_S = 120.0
# A replica's share of its node's base power: GPU nodes of 8 GPUs unless known.
GPUS_PER_NODE = 8
DEFAULT_GPU = gpu_model_for(DEFAULT_GPU_PRODUCT)
DEFAULT_NODE = NodePowerModel()


@dataclass(frozen=True)
class ServiceProfile:
    """What the policy knows of one service apart from its metrics."""

    # Requests/s one replica serves at 100% utilisation; None when the target is a GPU utilisation.
    service_rate_rps: float | None
    # The utilisation the fixed-target demand sizes for (0..1).
    target_utilization: float
    min_replicas: int
    max_replicas: int
    # In-flight requests per replica to scale on (Knative's concurrency); None: scale on the rate.
    target_concurrency: float | None = None
    slo_p95_ms: float | None = None
    # Share of requests within slo_p95_ms the queueing model sizes for (None: the fixed target).
    slo_attainment: float | None = None
    cold_start_s: float = DEFAULT_COLD_START_S
    gpu: GpuPowerModel = DEFAULT_GPU
    gpus: int = 1  # per replica
    node: NodePowerModel = DEFAULT_NODE
    gpus_per_node: int = GPUS_PER_NODE
    scale_down_delay_s: float = 300.0
    trend_max_boost: float = TREND_MAX_BOOST
    queue_drain_s: float = 60.0
    # Idle seconds before a minReplicas 0 service goes to zero (None: the energy break-even).
    idle_to_zero_s: float | None = None

    @property
    def service_time_ms(self) -> float:
        if self.service_rate_rps:
            return 1000.0 / self.service_rate_rps
        return DEFAULT_SERVICE_TIME_MS

    @property
    def sized_by_slo(self) -> bool:
        return bool(self.slo_attainment and self.slo_p95_ms)

    def idle_power_w(self, replicas: int) -> float:
        """What keeping `replicas` warm replicas idle costs over parking them: each GPU's resident-model
        power over a bare GPU's (policy/energy.py)."""
        return max(1, replicas) * (self.gpu.loaded_idle_w - self.gpu.bare_w) * max(self.gpus, 1)

    @property
    def cold_start_energy_j(self) -> float:
        """A reload: the replica's GPUs at resident-model power for the cold start."""
        return self.gpu.loaded_idle_w * self.cold_start_s * max(self.gpus, 1)

    @property
    def replica_power_w(self) -> float:
        """A warm replica's GPU power and its GPUs' share of a node's base power (the fleet's price)."""
        return max(self.gpus, 1) * (self.gpu.loaded_idle_w + self.node.base_w / self.gpus_per_node)


@dataclass(frozen=True)
class Reading:
    """One service's metrics, as read: a value that could not be read is None, never 0."""

    rate: float | None  # requests/s over the newest window
    inflight: float | None  # requests in flight, summed over the replicas
    # Mean rates of adjacent windows, newest first (index 0 is `rate`).
    rate_history: tuple[float, ...]
    utilization: float | None  # mean GPU utilisation 0..1
    sampled_at: float | None  # Unix time of the samples
    window_s: float  # length of one window


# Memoised on the windows themselves: one tick asks for the same reading's estimate more than once (the
# fleet objective, the decision, the placement), for every service.
_estimate_rate = lru_cache(maxsize=4096)(estimate.estimate_rate)


def sizing_rate(profile: ServiceProfile, reading: Reading) -> tuple[float | None, float]:
    """The rate to size for and the seconds of data behind it. Sized by the SLO, windows are pooled at
    low rates and the rate's upper confidence bound is used (policy/estimate.py); no request in any of
    them stays 0 (idle)."""
    rate, span = reading.rate, reading.window_s
    if profile.sized_by_slo and rate is not None and reading.window_s > 0:
        est = _estimate_rate(tuple(reading.rate_history) or (rate,), reading.window_s)
        if est is not None:
            span = max(span, est.horizon_s)
            if est.events > 0:
                rate = est.rate
    return rate, span


def scaling_inputs(
    profile: ServiceProfile,
    reading: Reading | None,
    current_replicas: int,
    ready_replicas: int,
    *,
    stale_after_s: float,
    default_window_s: float,
    rise_factor: float = 1.0,
    slo_attainment: float | None = None,
    demand_at: float | None = None,
) -> ScalingInputs:
    """The policy's inputs for one service. `reading` None: no metrics (the policy holds).

    `rise_factor` scales the sized rate (headroom for the model's own past rises, estimate.rise_factor).
    `slo_attainment`, when given, replaces the profile's (the fleet objective's share of the target,
    fleet.member_target). `demand_at`: when the activator last held a request for the service."""
    by_rate = profile.service_rate_rps is not None and profile.target_concurrency is None
    rate: float | None = None
    window = default_window_s
    queued = trend = None
    noise = 0.0
    if reading is not None:
        rate, window = sizing_rate(profile, reading)
        if rate is not None:
            rate *= rise_factor
        if by_rate and profile.service_rate_rps:
            queued = queued_from_inflight(reading.inflight, reading.rate, profile.service_rate_rps)
            noise = inflight_noise(reading.rate, profile.service_rate_rps)
        history = reading.rate_history[:TREND_WINDOWS]
        if len(history) >= 2 and reading.window_s > 0:
            trend = estimate.significant_trend(history, reading.window_s)
    attainment = profile.slo_attainment if slo_attainment is None else slo_attainment
    return ScalingInputs(
        current_replicas=current_replicas,
        ready_replicas=ready_replicas,
        min_replicas=profile.min_replicas,
        max_replicas=profile.max_replicas,
        target_utilization=profile.target_utilization,
        capacity_rps=profile.service_rate_rps,
        request_rate=rate,
        gpu_utilization=reading.utilization if reading else None,
        sampled_at=reading.sampled_at if reading else None,
        stale_after_s=stale_after_s,
        slo_p95_ms=profile.slo_p95_ms,
        slo_attainment=attainment if by_rate else None,
        service_time_ms=profile.service_time_ms,
        scale_down_delay_s=profile.scale_down_delay_s,
        cold_start_s=profile.cold_start_s,
        idle_power_w=profile.idle_power_w(current_replicas),
        cold_start_energy_j=profile.cold_start_energy_j,
        queued_requests=queued,
        queue_drain_s=profile.queue_drain_s,
        queued_noise=noise,
        request_rate_trend=trend,
        trend_max_boost=profile.trend_max_boost,
        # Knative-style: in-flight requests per replica from the agents' gauge; no gauge, no scaling.
        target_concurrency=profile.target_concurrency,
        concurrency=reading.inflight if reading is not None and profile.target_concurrency else None,
        metrics_window_s=window,
        idle_to_zero_s=profile.idle_to_zero_s,
        demand_at=demand_at,
        rise_factor=rise_factor if rate is not None else 1.0,
    )


def with_headroom(inputs: ScalingInputs, rises: estimate.Rises, quantile: float) -> ScalingInputs:
    """`inputs` (built with the rises' `quantile` as `rise_factor`) with the headroom held only as far as
    whole replicas are filled enough by the rises (autoscaling.headroom_factor). Applied once every other
    input is final (the fleet objective's target included), as the band of a replica depends on them; the
    fleet's price is found at the quantile's level, so it counts a little more load than is then held
    and errs towards more replicas, not fewer."""
    factor = headroom_factor(inputs, rises.share_above, quantile)
    if factor >= inputs.rise_factor or inputs.request_rate is None:
        return inputs
    seen = inputs.request_rate / inputs.rise_factor
    return replace(inputs, request_rate=seen * factor, rise_factor=factor)


def fleet_member(profile: ServiceProfile, rate: float) -> FleetMember:
    """This service in the fleet objective (policy/fleet.py), sized for `rate`."""
    return FleetMember(
        max(0.0, rate),
        profile.service_rate_rps or 1000.0 / profile.service_time_ms,
        (profile.slo_p95_ms or 0.0) / 1000.0,
        profile.replica_power_w,
        profile.min_replicas,
        profile.max_replicas,
    )


def rise_lead_s(profile: ServiceProfile, window_s: float) -> float:
    """How far ahead a replica started now must see: one metrics window, a node, the model load."""
    return window_s + NODE_PROVISION_S + profile.cold_start_s


def sharing_demand(
    profile: ServiceProfile,
    name: str,
    rate: float | None,
    *,
    memory_gib: float,
    gpu_memory_gib: float,
    sharing: Sharing = Sharing.AUTO,
    idle_s: float = 0.0,
    has_dedicated: bool = False,
    reload_s: float | None = None,
    rise_factor: float = 1.0,
) -> ModelDemand:
    """This service in the GPU placement (policy/sharing.py): the one mapping of a profile to its input.

    `rate` is the sized rate (`sizing_rate`; None: no reading). Its load is rate x service time, and its
    `rise` the load its rise headroom adds (`rise_factor`, the autoscaler's): a shared GPU keeps room for its
    largest member's rise, and a model joins a pool only if its load and rise together fit there. It is
    unloaded after `unload_after_s`: the break-even (energy.break_even_idle_s) of a reload (`reload_s`, the
    profile's cold start unless given: the GPU held at resident-model power while the model loads) against
    what the model costs loaded and idle (its memory's share of a GPU's resident-model power and node share,
    `replica_power_w`), never shorter than the reload itself.

    A shared GPU keeps each member's attainment target, and never less than the p95 guard's share
    (`queueing.GUARD_ATTAINMENT`): the SLO is a p95, and a model on its own replicas is never sized below
    it either (autoscaling.demand_replicas)."""
    service_s = profile.service_time_ms / 1000.0
    load_s = profile.cold_start_s if reload_s is None else reload_s
    idle_w = profile.replica_power_w * min(1.0, memory_gib / gpu_memory_gib) if gpu_memory_gib > 0 else 0.0
    unload_after = break_even_idle_s(idle_w, profile.gpu.loaded_idle_w * load_s, load_s)
    load = None if rate is None else max(0.0, rate) * service_s
    return ModelDemand(
        name=name,
        load=load,
        rise=0.0 if load is None else load * max(0.0, rise_factor - 1.0),
        memory_gib=memory_gib,
        service_time_s=service_s,
        slo_s=profile.slo_p95_ms / 1000.0 if profile.sized_by_slo and profile.slo_p95_ms else None,
        attainment=max(GUARD_ATTAINMENT, 0.99 if profile.slo_attainment is None else profile.slo_attainment),
        sharing=sharing,
        min_replicas=profile.min_replicas,
        idle_s=idle_s,
        unload_after_s=unload_after,
        has_dedicated=has_dedicated,
    )
