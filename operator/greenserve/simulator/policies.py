"""The policies compared: greenserve (the operator's own policy modules) and the baselines.

All of them see the same metrics (the request rate over `Scenario.metrics_window_s`, past data only), run
on the same cluster, node autoscaler, power model and SLO; they differ only in how many replicas they ask
for, where the scheduler puts them, and which go on scale-in.
"""

from __future__ import annotations

import math
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from greenserve.api.v1alpha1 import ConsolidationPolicy, ModelServiceSpec, ScalingMetric
from greenserve.config import OperatorConfig
from greenserve.manifests.profile import SLO_ATTAINMENT, service_profile
from greenserve.policy import autoscaling, consolidation, estimate, fleet, profile, release
from greenserve.policy.profile import UTILISATION_AT_TARGET
from greenserve.simulator.cluster import Placement, Replica
from greenserve.simulator.engine import ModelSpec, Simulation

# The operator's default staleness limit (the simulator's readings are never stale, only missing).
STALE_AFTER_S = OperatorConfig().metrics_stale_after_s


def _replicaset_victim_key(sim: Simulation):  # type: ignore[no-untyped-def]
    """ReplicaSet scale-in order (controller.ActivePodsWithRanks): unscheduled, then not ready, then pods
    on nodes with more replicas of the same set, then the most recently ready."""
    now = sim.now

    def key(r: Replica) -> tuple[float, ...]:
        if r.node is None:
            return (0.0, 0.0, 0.0, 0.0)
        colocated = sum(1 for o in sim.cluster.of_model(r.model) if o.node == r.node and o.replaces is None)
        ready_at = r.ready_at if r.ready_at is not None else now
        return (1.0, 1.0 if r.is_ready(now) else 0.0, -float(colocated), -ready_at)

    return key


def max_replicas_for(sim: Simulation, m: int, target: float) -> int:
    """maxReplicas as an operator would set it: 1.5x what the model's peak needs at the target (the same
    for every dynamic policy; it stops a queue-driven scale-up from asking for hundreds of GPUs)."""
    spec = sim.models[m]
    return max(1, math.ceil(1.5 * float(sim.trace.rates[m].max()) / (spec.capacity_rps * target)))


@dataclass
class StaticPeak:
    """Static peak provisioning: enough replicas for each model's peak at the target, all the time."""

    target_utilization: float = 0.7
    name: str = "static-peak"
    placement: Placement = Placement.LEAST_ALLOCATED
    control_interval_s: float = math.inf

    def initial(self, sim: Simulation) -> list[int]:
        return [
            max(1, math.ceil(float(sim.trace.rates[m].max()) / (spec.capacity_rps * self.target_utilization)))
            for m, spec in enumerate(sim.models)
        ]

    def control(self, sim: Simulation) -> None:
        return None


@dataclass
class HpaLike:
    """Kubernetes HPA: desired = ceil(ready * utilization / target) with 10% tolerance every 15 s; scale-up
    at most max(4 pods, 100%) per period; scale-down to the highest recommendation of the last 300 s.
    Utilization is the offered load per ready replica (rate / (ready * capacity)), which does not saturate
    at 100% like GPU utilization would: the strongest form of the baseline. Default scheduler spreading
    (LeastAllocated) and ReplicaSet scale-in order."""

    target_utilization: float = 0.7
    stabilization_s: float = 300.0
    tolerance: float = 0.1
    min_replicas: int = 1
    max_replicas: int = 200
    name: str = "hpa"
    placement: Placement = Placement.LEAST_ALLOCATED
    control_interval_s: float = 15.0
    _recs: list[deque[tuple[float, int]]] = field(default_factory=list)

    def _desired(self, sim: Simulation, m: int) -> int:
        spec = sim.models[m]
        rate = sim.observed_rate(m)
        current = len(sim.logical(m))
        ready = sim.ready_count(m)
        if ready == 0:
            return max(current, math.ceil(rate / (spec.capacity_rps * self.target_utilization) - 1e-9))
        ratio = rate / (ready * spec.capacity_rps) / self.target_utilization
        if abs(ratio - 1.0) <= self.tolerance:
            return current
        return math.ceil(ready * ratio - 1e-9)

    def initial(self, sim: Simulation) -> list[int]:
        self._recs = [deque() for _ in sim.models]
        return [
            max(
                self.min_replicas,
                math.ceil(sim.observed_rate(m) / (s.capacity_rps * self.target_utilization)),
            )
            for m, s in enumerate(sim.models)
        ]

    def control(self, sim: Simulation) -> None:
        key = _replicaset_victim_key(sim)
        for m in range(len(sim.models)):
            current = len(sim.logical(m))
            cap = min(self.max_replicas, max_replicas_for(sim, m, self.target_utilization))
            want = min(cap, max(self.min_replicas, self._desired(sim, m)))
            recs = self._recs[m]
            recs.append((sim.now, want))
            while recs and recs[0][0] <= sim.now - self.stabilization_s:
                recs.popleft()
            if want > current:
                want = min(want, max(current + 4, 2 * current))
            else:
                want = min(current, max(n for _, n in recs))
            if want != current:
                sim.scale_to(m, want, key)


@dataclass
class KnativeLike:
    """Knative Pod Autoscaler: desired = ceil(concurrency / (per-replica target * 0.7)) over a 60 s stable
    window; a 6 s panic window (panic when it asks for >= 2x the ready pods: no scale-down for 60 s); at
    most halving per tick; scale to zero after 30 s without requests, and back from zero as soon as a
    request reaches the activator (it waits for the cold start). Concurrency = requests in flight
    (busy servers + queue); a replica's target is 1 in-flight request (a GPU server at 100%)."""

    per_replica_concurrency: float = 1.0
    target_utilization: float = 0.7
    stable_s: float = 60.0
    panic_s: float = 6.0
    panic_threshold: float = 2.0
    scale_to_zero_s: float = 30.0
    max_scale_down_rate: float = 2.0
    max_replicas: int = 200
    name: str = "knative"
    placement: Placement = Placement.LEAST_ALLOCATED
    control_interval_s: float = 2.0
    _panic_until: list[float] = field(default_factory=list)

    def initial(self, sim: Simulation) -> list[int]:
        self._panic_until = [-math.inf] * len(sim.models)
        per = self.per_replica_concurrency * self.target_utilization
        return [
            math.ceil(sim.observed_concurrency(m, self.stable_s) / per - 1e-9) for m in range(len(sim.models))
        ]

    def control(self, sim: Simulation) -> None:
        key = _replicaset_victim_key(sim)
        per = self.per_replica_concurrency * self.target_utilization
        for m in range(len(sim.models)):
            current = len(sim.logical(m))
            ready = sim.ready_count(m)
            stable = math.ceil(sim.observed_concurrency(m, self.stable_s) / per - 1e-9)
            panic = math.ceil(sim.observed_concurrency(m, self.panic_s) / per - 1e-9)
            if ready > 0 and panic / ready >= self.panic_threshold:
                self._panic_until[m] = sim.now + self.stable_s
            if sim.now < self._panic_until[m]:
                want = max(current, panic, stable)
            else:
                want = (
                    max(stable, math.ceil(current / self.max_scale_down_rate)) if stable < current else stable
                )
            if sim.now - sim.last_arrival[m] >= self.scale_to_zero_s:
                want = 0
            elif sim.backlog[m] > 0 or sim.trace.rates[m, sim.k] > 0:
                want = max(want, 1)  # the activator wakes a scaled-to-zero revision at once
            want = min(self.max_replicas, max_replicas_for(sim, m, self.target_utilization), want)
            if want != current:
                sim.scale_to(m, want, key)


def modelservice_spec(
    model: ModelSpec,
    gpu_product: str,
    min_replicas: int,
    max_replicas: int,
    scale_down_delay_s: float,
    policy: ConsolidationPolicy = ConsolidationPolicy.BALANCED,
) -> ModelServiceSpec:
    """The ModelService an operator would write for a simulated model: its service rate as the
    requestsPerSecond target at UTILISATION_AT_TARGET (so the operator's service rate is the model's),
    its SLO, GPUs and replica bounds. It says nothing of the model's load time, as a real spec does not."""
    return ModelServiceSpec.model_validate(
        {
            "model": {"name": model.name, "storageUri": f"gs://simulated/{model.name}"},
            "gpu": {"count": model.gpus, "product": gpu_product},
            "scaling": {
                "minReplicas": min_replicas,
                "maxReplicas": max_replicas,
                "metric": ScalingMetric.REQUESTS_PER_SECOND.value,
                "target": model.capacity_rps * UTILISATION_AT_TARGET,
                "scaleDownDelaySeconds": round(scale_down_delay_s),
            },
            "slo": {"latencyP95Ms": max(1, round(model.slo_ms))},
            "energy": {"policy": policy.value},
        }
    )


@dataclass
class Greenserve:
    """The operator's policy: autoscaling.decide per model every control period, MostAllocated placement,
    deletion costs on scale-in and consolidation.plan moves (start-before-stop).

    Each model is described as the ModelService an operator would write (`modelservice_spec`) and goes
    through the operator's own adapter (manifests/profile.py, policy/profile.py), so the policy's inputs
    are the operator's for the same spec and reading (tests/unit/policy/test_one_adapter.py). Two facts
    differ from a live cluster's by default: the policy is told each model's load time, which a spec
    cannot say (`known_cold_start`; the operator assumes 60 s), and the readings carry
    `estimate_horizon_s` of rate history where the Prometheus source reads three windows. The agents'
    in-flight gauge is read as the operator reads it, one instant's count: the backlog plus a Poisson
    count around the requests in service (seeded by the scenario's arrivals, so a run is reproducible),
    not the engine's step mean. As an energy
    policy (Balanced/PowerSaving) with an SLO, demand is sized by the M/M/c queueing model for
    `slo_attainment` of requests within the SLO, a sustained rise is projected over the cold start,
    scale-up is immediate and scale-down stabilised for 300 s like the HPA-like baseline. The other knobs
    are ablations: an attainment other than a policy's is not expressible in a spec, and
    `fleet_objective`, `rise_history_s`, `rise_prior` and `queue_drain_s` switch off what the operator
    does, and `rise_quantile` sets the headroom's quantile apart from the attainment target."""

    # The basis of maxReplicas as an operator would set it (max_replicas_for); the policy sizes by the SLO.
    target_utilization: float = 0.7
    scale_down_delay_s: float = 300.0
    min_replicas: int = 1
    max_replicas: int = 200
    consolidate: bool = True
    # Seconds between batches of moves, as the operator's default (GREENSERVE_CONSOLIDATION_INTERVAL);
    # one node's moves at a time (`consolidation.batch`).
    move_interval_s: float = OperatorConfig().consolidation_interval_s
    # Size by the M/M/c queueing model for this share of requests within the SLO; 0.995 is Balanced's,
    # 0.99 PowerSaving's. None: an ablation, sized by `target_utilization` instead, all else as PowerSaving.
    slo_attainment: float | None = 0.995
    # Tell the policy each model's load time, which a spec cannot (off: the operator's default, 60 s).
    known_cold_start: bool = True
    # Add the replicas that clear the queue (in-flight beyond those in service) over this time; 0 = off.
    queue_drain_s: float = 60.0
    # Rate estimates (policy/estimate.py) pool up to this much metric history at low rates.
    estimate_horizon_s: float = 300.0
    # Size the whole fleet for `slo_attainment` at one price per late request (policy/fleet.py) instead
    # of every model for it on its own.
    fleet_objective: bool = True
    # Headroom for rises within the lead time (policy/estimate.py rise_quantile), learned from this much
    # of each model's history, with the fleet's rises as prior, and refreshed every `rise_refresh_s`;
    # 0 = off. The quantile is the attainment target unless `rise_quantile` says otherwise.
    rise_history_s: float = 3600.0
    rise_refresh_s: float = 300.0
    # The fleet's rises as every model's prior (off: each model from its own history alone).
    rise_prior: bool = True
    # The quantile of the rises the headroom covers (None: the attainment target, as the operator runs;
    # another value is a bench setting, not expressible in a spec).
    rise_quantile: float | None = None
    name: str = "greenserve"
    placement: Placement = Placement.MOST_ALLOCATED
    control_interval_s: float = 15.0
    _states: list[autoscaling.ScalerState] = field(default_factory=list)
    _last_move_at: float | None = None
    _profiles: list[profile.ServiceProfile] = field(default_factory=list)
    _readings: list[profile.Reading] = field(default_factory=list)
    _targets: list[float] = field(default_factory=list)  # per model: the fleet objective's share
    _rise: list[float] = field(default_factory=list)  # per model: the rises' quantile (the level)
    _rises: list[estimate.Rises] = field(default_factory=list)
    _rise_at: float = -math.inf
    _gauge: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def spec_for(self, sim: Simulation, m: int) -> ModelServiceSpec:
        """The ModelService this policy runs model `m` as."""
        by_attainment = {a: p for p, a in SLO_ATTAINMENT.items()}
        # Sized by the target (the ablation below), the estimates and the rise headroom are PowerSaving's.
        attainment = self.slo_attainment or SLO_ATTAINMENT[ConsolidationPolicy.POWER_SAVING]
        return modelservice_spec(
            sim.models[m],
            sim.gpu.product,
            self.min_replicas,
            min(self.max_replicas, max_replicas_for(sim, m, self.target_utilization)),
            self.scale_down_delay_s,
            by_attainment.get(attainment, ConsolidationPolicy.BALANCED),
        )

    def profile_for(self, sim: Simulation, m: int) -> profile.ServiceProfile:
        shipped = service_profile(self.spec_for(sim, m))
        # What a spec cannot say: the model's load time (the operator assumes DEFAULT_COLD_START_S, unless
        # `known_cold_start` is off), an attainment target other than a policy's, no queue term.
        return replace(
            shipped,
            cold_start_s=sim.models[m].cold_start_s if self.known_cold_start else shipped.cold_start_s,
            slo_attainment=self.slo_attainment or shipped.slo_attainment,
            queue_drain_s=max(1.0, self.queue_drain_s),
        )

    def initial(self, sim: Simulation) -> list[int]:
        self._states = [autoscaling.ScalerState() for _ in sim.models]
        self._profiles = [self.profile_for(sim, m) for m in range(len(sim.models))]
        self._last_move_at = None
        self._rise, self._rises, self._rise_at = [], [], -math.inf
        self._gauge = np.random.default_rng(zlib.crc32(np.ascontiguousarray(sim.trace.rates).tobytes()))
        self._observe(sim)
        out = []
        for m in range(len(sim.models)):
            found = autoscaling.demand_replicas(self._inputs(sim, m, 0, 0))
            out.append(max(self.min_replicas, found[0] if found else 1))
        return out

    def reading(self, sim: Simulation, m: int) -> profile.Reading | None:
        """What the metrics source reads of model `m` now (None while it is down)."""
        return None if sim.metrics_down() else self._readings[m]

    def _observe(self, sim: Simulation) -> None:
        """This tick's readings (adjacent windows, newest first) and the fleet's price."""
        w = sim.scenario.metrics_window_s
        n = max(profile.TREND_WINDOWS, round(self.estimate_horizon_s / w))
        history = np.stack([sim.observed_rates(w, lag_s=i * w) for i in range(n)], axis=1).tolist()
        self._readings = []
        gauge: list[float] | None = None
        if sim.k > 0 and self.queue_drain_s > 0:
            # The agents' in-flight gauge at this instant: the queue, and the requests in service, which
            # at a steady load are about Poisson around the last step's mean (autoscaling.inflight_noise).
            backlog = np.asarray(sim.backlog, dtype=np.float64)
            busy = np.maximum(0.0, sim.concurrency[:, sim.k - 1] - backlog)
            gauge = (self._gauge.poisson(busy) + backlog).tolist()
        for m, hist in enumerate(history):
            inflight = None if gauge is None else float(gauge[m])
            ready = sim.ready_count(m)
            cap = sim.models[m].capacity_rps
            self._readings.append(
                profile.Reading(
                    rate=float(hist[0]),
                    inflight=inflight,
                    rate_history=tuple(hist),  # tolist() gave Python floats
                    utilization=min(1.0, float(hist[0]) / (ready * cap)) if ready else None,
                    sampled_at=sim.now,
                    window_s=w,
                )
            )
        if self.rise_history_s > 0 and sim.now - self._rise_at >= self.rise_refresh_s:
            self._rise_at = sim.now
            past = np.stack(
                [sim.observed_rates(w, lag_s=i * w) for i in range(round(self.rise_history_s / w))], axis=1
            ).tolist()
            ratios = [
                estimate.rise_ratios(hist, w, profile.rise_lead_s(p, w))
                for p, hist in zip(self._profiles, past, strict=True)
            ]
            # As the operator: the fleet's rises are the prior of every model's own, worth as much as
            # the fleet's models are alike (estimate.prior_weight).
            prior = estimate.pool_rises(ratios) if self.rise_prior else ()
            self._rise, self._rises = [], []
            weights: dict[tuple[float, int], float] = {}
            for p, rs in zip(self._profiles, ratios, strict=True):
                q = self._quantile(p)
                lead = math.ceil(profile.rise_lead_s(p, w) / w)
                if (q, lead) not in weights:
                    weights[(q, lead)] = estimate.prior_weight(ratios, prior, q, lead)
                rises = estimate.Rises(tuple(rs), tuple(prior), weights[(q, lead)])
                self._rises.append(rises)
                self._rise.append(rises.quantile(q))
        self._targets = []
        if self.fleet_objective and self.slo_attainment:
            members = []
            for m, r in enumerate(self._readings):
                rate, _ = profile.sizing_rate(self._profiles[m], r)
                members.append(profile.fleet_member(self._profiles[m], (rate or 0.0) * self._rise_factor(m)))
            price = fleet.fleet_price(members, self.slo_attainment)
            self._targets = [fleet.member_target(mem, price, self.slo_attainment) for mem in members]

    def inputs_now(self, sim: Simulation, m: int) -> autoscaling.ScalingInputs:
        """What model `m`'s next decision would see: read now (the rise headroom relearned too)."""
        self._rise_at = -math.inf
        self._observe(sim)
        return self._inputs(sim, m, len(sim.logical(m)), sim.ready_count(m))

    def _inputs(self, sim: Simulation, m: int, current: int, ready: int) -> autoscaling.ScalingInputs:
        inputs = profile.scaling_inputs(
            self._profiles[m],
            self.reading(sim, m),
            current,
            ready,
            stale_after_s=STALE_AFTER_S,
            default_window_s=sim.scenario.metrics_window_s,
            rise_factor=self._rise_factor(m),
            slo_attainment=self._targets[m] if self._targets else None,
        )
        if self.slo_attainment is None:
            # The ablation of SLO sizing: the same estimates and headroom, sized by the bench's target
            # utilization (the baselines') instead of the queueing model.
            inputs = replace(inputs, slo_attainment=None, target_utilization=self.target_utilization)
        if self._rise and self._profiles[m].sized_by_slo:
            inputs = profile.with_headroom(inputs, self._rises[m], self._quantile(self._profiles[m]))
        return inputs

    def _quantile(self, p: profile.ServiceProfile) -> float:
        # As the operator: the rise headroom's quantile is the attainment target (a bench knob apart).
        return self.rise_quantile if self.rise_quantile is not None else p.slo_attainment or 0.99

    def _rise_factor(self, m: int) -> float:
        # As the operator: the rise headroom is the SLO sizing's (its quantile is the attainment target).
        return self._rise[m] if self._rise and self._profiles[m].sized_by_slo else 1.0

    def _snapshot(self, sim: Simulation) -> consolidation.ClusterSnapshot:
        now = sim.now
        moving = {r.replaces for r in sim.cluster.replicas.values() if r.replaces is not None}
        nodes = tuple(
            consolidation.NodeView(str(n.nid), n.gpus, n.used)
            for n in sim.cluster.nodes.values()
            if n.ready_at <= now
        )
        replicas = tuple(
            consolidation.ReplicaView(
                str(r.rid),
                str(r.model),
                str(r.node),
                r.gpus,
                ready=r.is_ready(now),
                protected=(not r.is_ready(now)) or r.rid in moving or r.replaces is not None,
            )
            for r in sim.cluster.replicas.values()
            if r.node is not None
        )
        return consolidation.ClusterSnapshot(nodes, replicas)

    def control(self, sim: Simulation) -> None:
        self._observe(sim)
        moves = self._plan_moves(sim)
        victim = self._victim_key(sim, moves)
        self._scale(sim, range(len(sim.models)), victim)
        self._start_moves(sim, moves)

    # The steps of a control tick, shared with the sharing policy (simulator/sharing.py).
    def _plan_moves(self, sim: Simulation) -> consolidation.ConsolidationPlan:
        """This tick's consolidation plan (its moves and the deletion costs of scale-in)."""
        limits = consolidation.limits(self.move_interval_s, self._last_move_at)
        return consolidation.plan(self._snapshot(sim), sim.now, limits)

    @staticmethod
    def _victim_key(
        sim: Simulation, moves: consolidation.ConsolidationPlan
    ) -> Callable[[Replica], tuple[float, ...]]:
        """Scale-in order: unscheduled first, then the lowest deletion cost, then the newest."""
        costs, now = moves.deletion_costs, sim.now

        def victim(r: Replica) -> tuple[float, ...]:
            if r.node is None:
                return (0.0, 0.0, 0.0)
            ready_at = r.ready_at if r.ready_at is not None else now
            return (1.0, float(costs.get(str(r.rid), 0)), -ready_at)

        return victim

    def _scale(
        self, sim: Simulation, models: Iterable[int], victim: Callable[[Replica], tuple[float, ...]]
    ) -> None:
        """These models' dedicated replicas: autoscaling.decide for each, as the operator, then held
        replicas released where the scale-ups would otherwise need a new node (policy/release.py).
        Replicas here leave at once, so no scale-up waits for GPUs being freed; free GPUs are those of
        ready nodes, as the operator sees only nodes that have registered."""
        decided: dict[int, tuple[int, autoscaling.ScaleDecision]] = {}
        for m in models:
            current = len(sim.logical(m))
            decision = autoscaling.decide(
                self._inputs(sim, m, current, sim.ready_count(m)), self._states[m], sim.now
            )
            self._states[m] = decision.state
            decided[m] = (current, decision)
        bound: dict[int, int] = {}
        for r in sim.cluster.replicas.values():
            if r.node is not None and r.replaces is None and r.model in decided:
                bound[r.model] = bound.get(r.model, 0) + 1
        ticks = [
            release.Tick(
                str(m),
                cur,
                d.desired_replicas,
                sim.ready_count(m),
                bound.get(m, 0),
                d.wanted,
                d.bare,
                autoscaling.held_until(d.state, cur, self._profiles[m].scale_down_delay_s),
                sim.models[m].gpus,
            )
            for m, (cur, d) in decided.items()
        ]
        counts = {m: d.desired_replicas for m, (_, d) in decided.items()}
        if release.asks(ticks):
            free = [n.free for n in sim.cluster.ready_nodes(sim.now)]
            pending = [r.gpus for r in sim.cluster.pending()]
            given = release.tick_give_way(ticks, free, pending, sim.now, profile.NODE_PROVISION_S)
            for key, n in given.items():
                counts[int(key)] = n
        # Releases first, so that the scale-ups' replicas take the GPUs they free.
        for m in sorted(counts, key=lambda m: counts[m] - decided[m][0]):
            if counts[m] != decided[m][0]:
                sim.scale_to(m, counts[m], victim)

    def _movable(self, sim: Simulation, rid: int) -> bool:
        return rid in sim.cluster.replicas

    def _start_moves(self, sim: Simulation, moves: consolidation.ConsolidationPlan) -> None:
        """As the operator: one node's moves at a time, cluster-wide (`consolidation.batch`); none starts
        while a replacement warms up."""
        in_flight = any(r.replaces is not None for r in sim.cluster.replicas.values())
        if not self.consolidate or not moves.moves or in_flight:
            return
        moved = False
        for mv in consolidation.batch(moves.moves):
            if self._movable(sim, int(mv.pod)):
                moved = sim.start_move(int(mv.pod), int(mv.to_node)) or moved
        if moved:
            self._last_move_at = sim.now


def all_policies(target_utilization: float = 0.7) -> list[StaticPeak | HpaLike | KnativeLike | Greenserve]:
    return [
        StaticPeak(target_utilization),
        HpaLike(target_utilization),
        KnativeLike(target_utilization=target_utilization),
        Greenserve(target_utilization),
    ]
