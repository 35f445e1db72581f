"""The policies compared: greenserve (the operator's own policy modules) and the baselines.

All of them see the same metrics (the request rate over `Scenario.metrics_window_s`, past data only), run
on the same cluster, node autoscaler, power model and SLO; they differ only in how many replicas they ask
for, where the scheduler puts them, and which go on scale-in.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from greenserve.policy import autoscaling, consolidation, estimate, fleet, headroom
from greenserve.simulator.cluster import Placement, Replica
from greenserve.simulator.engine import Simulation
from greenserve.simulator.traces import FloatArray


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


@dataclass
class Greenserve:
    """The operator's policy: autoscaling.decide per model every control period, MostAllocated placement,
    deletion costs on scale-in and consolidation.plan moves (start-before-stop).

    As an energy policy (Balanced/PowerSaving) with an SLO, demand is sized by the M/M/c queueing model
    for `slo_attainment` of requests within the SLO (not the fixed target utilization, which stays the
    basis of maxReplicas), a sustained rise is projected over the cold start (`sustained_trend` of three
    adjacent 30 s windows: past data only), scale-up is immediate and scale-down stabilised for 300 s like
    the HPA-like baseline. `spare_*` keeps balloon slots free for bursts (off by default: on the bench
    traces they cost 2-6% energy for < 0.3 points of SLO)."""

    target_utilization: float = 0.7
    scale_down_delay_s: float = 300.0
    min_replicas: int = 1
    max_replicas: int = 200
    consolidate: bool = True
    max_moves: int = 2
    move_interval_s: float = 60.0
    # Free GPU slots kept for bursts (balloon pods, policy/headroom.py): spare_fraction of the GPUs in
    # use, at least min_spare_gpus, plus what a sustained rise needs within spare_horizon_s.
    spare_fraction: float = 0.0
    min_spare_gpus: int = 0
    spare_horizon_s: float = 0.0
    # Size by the M/M/c queueing model for this share of requests within the SLO (None: by the target).
    slo_attainment: float | None = 0.995
    # Project a sustained rise (autoscaling.sustained_trend over `trend_windows` adjacent metric windows).
    use_trend: bool = True
    trend_windows: int = 3
    trend_max_boost: float = 1.0
    # Add the replicas that clear the queue (in-flight beyond those in service) over this time; 0 = off.
    queue_drain_s: float = 60.0
    # Rate estimates (policy/estimate.py) pool up to this much metric history at low rates; 0 = the
    # newest window only, as read.
    estimate_horizon_s: float = 300.0
    # Size the whole fleet for `slo_attainment` at one price per late request (policy/fleet.py) instead
    # of every model for it on its own.
    fleet_objective: bool = True
    # Headroom for rises within the lead time (policy/estimate.py rise_factor), learned from this much
    # of each model's history and refreshed every `rise_refresh_s`; 0 = off. The quantile is the
    # attainment target.
    rise_history_s: float = 3600.0
    rise_refresh_s: float = 300.0
    name: str = "greenserve"
    placement: Placement = Placement.MOST_ALLOCATED
    control_interval_s: float = 15.0
    _states: list[autoscaling.ScalerState] = field(default_factory=list)
    _last_move_at: float | None = None
    _trends: list[float] = field(default_factory=list)
    _history: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))
    _targets: list[float] = field(default_factory=list)  # per model: the fleet objective's share
    _rates: list[float] = field(default_factory=list)
    _rise: list[float] = field(default_factory=list)
    _rise_at: float = -math.inf
    _spans: list[float] = field(default_factory=list)  # per model: seconds of data behind its rate

    def initial(self, sim: Simulation) -> list[int]:
        self._states = [autoscaling.ScalerState() for _ in sim.models]
        self._trends = [0.0] * len(sim.models)
        self._last_move_at = None
        self._rise, self._rise_at = [], -math.inf
        self._observe(sim)
        out = []
        for m in range(len(sim.models)):
            found = autoscaling.demand_replicas(self._inputs(sim, m, 0, 0))
            out.append(max(self.min_replicas, found[0] if found else 1))
        return out

    def _observe(self, sim: Simulation) -> None:
        """This tick's metric history (adjacent windows, newest first) and the fleet's price."""
        w = sim.scenario.metrics_window_s
        n = max(self.trend_windows, 1, round(self.estimate_horizon_s / w))
        self._history = np.stack([sim.observed_rates(w, lag_s=i * w) for i in range(n)], axis=1)
        n_est = max(1, round(self.estimate_horizon_s / w))
        found = [self._estimate(sim, hist[:n_est]) for hist in self._history.tolist()]
        self._rates = [rate for rate, _ in found]
        self._spans = [span for _, span in found]
        if self.rise_history_s > 0 and sim.now - self._rise_at >= self.rise_refresh_s:
            self._rise_at = sim.now
            past = np.stack(
                [sim.observed_rates(w, lag_s=i * w) for i in range(round(self.rise_history_s / w))], axis=1
            ).tolist()
            cfg = sim.scenario.cluster
            self._rise = [
                estimate.rise_factor(
                    hist, w, w + cfg.provision_s + sim.models[m].cold_start_s, self.slo_attainment or 0.99
                )
                for m, hist in enumerate(past)
            ]
        if self._rise:
            self._rates = [r * f for r, f in zip(self._rates, self._rise, strict=True)]
        self._targets = []
        if self.fleet_objective and self.slo_attainment:
            members = [self._member(sim, m, rate) for m, rate in enumerate(self._rates)]
            price = fleet.fleet_price(members, self.slo_attainment)
            self._targets = [fleet.member_target(m, price, self.slo_attainment) for m in members]

    def _estimate(self, sim: Simulation, hist: list[float]) -> tuple[float, float]:
        """The rate to size for (0 without a request in the pooled horizon: idle, else the estimate) and
        the seconds of data it spans (what must be fresh after a metrics gap)."""
        w = sim.scenario.metrics_window_s
        if self.estimate_horizon_s <= 0:
            return float(hist[0]), w
        est = estimate.estimate_rate(hist, w)
        if est is None:
            return 0.0, w
        return (0.0 if est.events <= 0 else est.rate), max(w, est.horizon_s)

    def _member(self, sim: Simulation, m: int, rate: float) -> fleet.FleetMember:
        spec = sim.models[m]
        return fleet.FleetMember(
            rate,
            spec.capacity_rps,
            spec.slo_ms / 1000.0,
            self._replica_power_w(sim, m),
            self.min_replicas,
            min(self.max_replicas, max_replicas_for(sim, m, self.target_utilization)),
        )

    @staticmethod
    def _replica_power_w(sim: Simulation, m: int) -> float:
        """A warm replica's context power and its GPUs' share of a node's base power (as bound.py)."""
        cfg = sim.scenario.cluster
        return sim.models[m].gpus * (sim.gpu.loaded_idle_w + cfg.base_w / cfg.gpus_per_node)

    def _inputs(self, sim: Simulation, m: int, current: int, ready: int) -> autoscaling.ScalingInputs:
        spec = sim.models[m]
        rate = self._rates[m]
        gpu = sim.gpu
        trend = None
        if self.use_trend:
            w = sim.scenario.metrics_window_s
            trend = estimate.significant_trend(self._history[m, : self.trend_windows].tolist(), w)
            self._trends[m] = trend
        queued = None
        if self.queue_drain_s > 0 and sim.k > 0:
            # The in-flight gauge of the last step (busy servers + queue), as the agents export it.
            queued = autoscaling.queued_from_inflight(
                float(sim.concurrency[m, sim.k - 1]), float(self._history[m, 0]), spec.capacity_rps
            )
        inputs = autoscaling.ScalingInputs(
            current_replicas=current,
            ready_replicas=ready,
            min_replicas=self.min_replicas,
            max_replicas=min(self.max_replicas, max_replicas_for(sim, m, self.target_utilization)),
            target_utilization=self.target_utilization,
            capacity_rps=spec.capacity_rps,
            request_rate=rate,
            gpu_utilization=min(1.0, rate / (ready * spec.capacity_rps)) if ready else None,
            sampled_at=sim.now,
            slo_p95_ms=spec.slo_ms,
            service_time_ms=spec.service_time_s * 1000.0,
            scale_down_delay_s=self.scale_down_delay_s,
            cold_start_s=spec.cold_start_s,
            # Parking a replica costs its loaded-idle power over bare; a reload costs P_ctx * T_load.
            idle_power_w=max(1, current) * (gpu.loaded_idle_w - gpu.bare_w) * spec.gpus,
            cold_start_energy_j=gpu.loaded_idle_w * spec.cold_start_s * spec.gpus,
            request_rate_trend=trend,
            trend_max_boost=self.trend_max_boost,
            slo_attainment=self._targets[m] if self._targets else self.slo_attainment,
            queued_requests=queued,
            queue_drain_s=max(1.0, self.queue_drain_s),
            metrics_window_s=self._spans[m],
        )
        if sim.metrics_down():  # as the operator: no reading at all while the source is down
            inputs = replace(
                inputs, request_rate=None, gpu_utilization=None, sampled_at=None, queued_requests=None
            )
        return inputs

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

    def _spare(self, sim: Simulation) -> int:
        in_use = sum(len(sim.logical(m)) * spec.gpus for m, spec in enumerate(sim.models))
        growth = 0.0
        if self.spare_horizon_s > 0:
            growth = headroom.growth_gpus(
                [
                    (self._trends[m], spec.capacity_rps, self.target_utilization, spec.gpus)
                    for m, spec in enumerate(sim.models)
                ],
                self.spare_horizon_s,
            )
        return headroom.spare_gpus(in_use, self.spare_fraction, self.min_spare_gpus, growth)

    def control(self, sim: Simulation) -> None:
        self._observe(sim)
        spare = self._spare(sim)
        sim.cluster.spare_gpus = spare
        snap = self._snapshot(sim)
        plan = consolidation.plan(
            snap,
            sim.now,
            consolidation.ConsolidationLimits(
                max_moves=self.max_moves,
                min_interval_s=self.move_interval_s,
                last_move_at=self._last_move_at,
                headroom_gpus=spare,
            ),
        )
        costs = plan.deletion_costs
        now = sim.now

        def victim(r: Replica) -> tuple[float, ...]:
            if r.node is None:
                return (0.0, 0.0, 0.0)
            ready_at = r.ready_at if r.ready_at is not None else now
            return (1.0, float(costs.get(str(r.rid), 0)), -ready_at)

        for m in range(len(sim.models)):
            current = len(sim.logical(m))
            ready = sim.ready_count(m)
            decision = autoscaling.decide(self._inputs(sim, m, current, ready), self._states[m], now)
            self._states[m] = decision.state
            if decision.desired_replicas != current:
                sim.scale_to(m, decision.desired_replicas, victim)
        if self.consolidate and plan.moves:
            moved = False
            for mv in plan.moves:
                if int(mv.pod) in sim.cluster.replicas:
                    moved = sim.start_move(int(mv.pod), int(mv.to_node)) or moved
            if moved:
                self._last_move_at = now


def all_policies(target_utilization: float = 0.7) -> list[StaticPeak | HpaLike | KnativeLike | Greenserve]:
    return [
        StaticPeak(target_utilization),
        HpaLike(target_utilization),
        KnativeLike(target_utilization=target_utilization),
        Greenserve(target_utilization),
    ]
