"""greenserve's policy in the simulator: the operator's own `policy.autoscaling.decide` and
`policy.consolidation.plan`, fed from the simulated metrics exactly as the operator feeds them.

* Autoscaling per model every 15 s from the request rate (30 s window, 15 s scrape lag) with the model's
  capacity, target utilization, p95 SLO guard, scale-down stabilisation and minReplicas 0 with the
  break-even idle timeout. Idle power passed to the break-even is what scaling to zero saves while the
  GPU stays: (P_ctx - P_bare) per GPU (energy_anchors.md section 7, T_be = E_load / (P_ctx - P_bare)).
* Bin-packing placement (MostAllocated scheduler profile), with `spare_fraction` of the GPUs in use kept
  free as balloon pods (cluster-proportional overprovisioner pattern) so a burst need not wait for a node.
* Consolidation every `consolidate_every_s` with the planner's rate limit; scale-in victims ordered by the
  planner's pod-deletion-cost (replicas on the least-allocated nodes first).
"""

from __future__ import annotations

from dataclasses import dataclass

from greenserve.policy import autoscaling as pa
from greenserve.policy import consolidation as pc
from greenserve.policy import headroom as ph
from greenserve.policy.energy import GpuPowerModel
from greenserve.sim.baselines import METRICS_LAG_S
from greenserve.sim.engine import Replica, View


@dataclass(frozen=True)
class GreenserveConfig:
    """Defaults: the same target utilization and scale-down window as the HPA-like baseline, so that the
    comparison isolates what greenserve adds (packing, consolidation, deletion costs, scale to zero,
    spare slots). `eco()` trades SLO attainment for energy with a higher target."""

    target_utilization: float = 0.7
    scale_down_delay_s: float = 300.0
    min_replicas: int | None = None  # None: each model's own minReplicas
    max_replicas: int = 1000
    window_s: float = 30.0
    # Project a sustained rise over metrics age + cold start (ScalingInputs.request_rate_trend). It
    # helps on smooth ramps (diurnal) but costs energy on minute-scale oscillation (Azure), so it is off.
    use_trend: bool = False
    trend_max_boost: float = 0.5
    trend_windows: int = 3
    consolidate: bool = True
    consolidate_every_s: float = 60.0
    max_moves: int = 2
    min_move_interval_s: float = 60.0
    # Free GPU slots kept for bursts (balloon pods), as a share of the GPUs in use, at least `min_spare_gpus`:
    # a burst then waits for a model load, not for a node to boot as well.
    spare_fraction: float = 0.05
    min_spare_gpus: int = 1
    # Also keep room for a sustained rise over this horizon (e.g. 240 s: node provisioning + a model load).
    # Off: on the benchmark traces it cost 5-15% energy for < 0.5 points of SLO (flash crowds do not trend).
    spare_horizon_s: float = 0.0
    name: str = "greenserve"

    @classmethod
    def eco(cls) -> GreenserveConfig:
        return cls(target_utilization=0.8, name="greenserve-eco")


class GreenservePolicy:
    placement = "most"
    interval_s = 15.0

    def __init__(self, n_models: int, gpu: GpuPowerModel, config: GreenserveConfig | None = None) -> None:
        self.cfg = config or GreenserveConfig()
        self.name = self.cfg.name
        self.gpu = gpu
        self.states = [pa.ScalerState() for _ in range(n_models)]
        self.reasons: dict[str, int] = {}
        self.last_move_at: float | None = None
        self._next_consolidation = 0.0
        self._costs: dict[str, int] = {}
        self._trends = [0.0] * n_models

    def desired(self, now: float, view: View) -> list[int]:
        out = []
        sampled_at = now - METRICS_LAG_S
        for m, spec in enumerate(view.models):
            current = view.current(m)
            rate = view.rate(m, self.cfg.window_s, METRICS_LAG_S)
            # Rates of adjacent windows, newest first (three recording-rule samples): a sustained rise only.
            w = self.cfg.window_s
            windows = [
                rate,
                *(view.rate(m, w, METRICS_LAG_S + i * w) for i in range(1, self.cfg.trend_windows)),
            ]
            trend = pa.sustained_trend(windows, w)
            self._trends[m] = trend
            inputs = pa.ScalingInputs(
                current_replicas=current,
                ready_replicas=view.ready(m),
                min_replicas=spec.min_replicas if self.cfg.min_replicas is None else self.cfg.min_replicas,
                max_replicas=self.cfg.max_replicas,
                target_utilization=self.cfg.target_utilization,
                capacity_rps=spec.capacity_rps,
                request_rate=rate,
                request_rate_trend=trend if self.cfg.use_trend else None,
                trend_max_boost=self.cfg.trend_max_boost,
                gpu_utilization=view.utilization(m, self.cfg.window_s, METRICS_LAG_S),
                sampled_at=sampled_at,
                slo_p95_ms=spec.slo_ms,
                service_time_ms=spec.service_s * 1000.0,
                scale_down_delay_s=self.cfg.scale_down_delay_s,
                cold_start_s=spec.cold_start_s,
                idle_power_w=(self.gpu.loaded_idle_w - self.gpu.bare_w) * spec.gpus * max(1, current),
                cold_start_energy_j=self.gpu.loaded_idle_w * spec.gpus * spec.cold_start_s,
            )
            decision = pa.decide(inputs, self.states[m], now)
            self.states[m] = decision.state
            self.reasons[decision.reason] = self.reasons.get(decision.reason, 0) + 1
            out.append(decision.desired_replicas)
        return out

    def consolidate(self, now: float, view: View) -> tuple[pc.Move, ...]:
        snap = view.snapshot()
        self._costs = pc.deletion_costs(snap)
        if not self.cfg.consolidate or now < self._next_consolidation:
            return ()
        self._next_consolidation = now + self.cfg.consolidate_every_s
        limits = pc.ConsolidationLimits(
            max_moves=self.cfg.max_moves,
            min_interval_s=self.cfg.min_move_interval_s,
            last_move_at=self.last_move_at,
            headroom_gpus=self.spare_gpus(now, view),
        )
        result = pc.plan(snap, now, limits)
        self._costs = dict(result.deletion_costs)
        if result.moves:
            self.last_move_at = now
        return result.moves

    def spare_gpus(self, now: float, view: View) -> int:
        in_use = sum(view.current(m) * spec.gpus for m, spec in enumerate(view.models))
        growth = 0.0
        if self.cfg.spare_horizon_s > 0:
            items = [
                (t, spec.capacity_rps, self.cfg.target_utilization, spec.gpus)
                for t, spec in zip(self._trends, view.models, strict=False)
            ]
            growth = ph.growth_gpus(items, self.cfg.spare_horizon_s)
        return ph.spare_gpus(in_use, self.cfg.spare_fraction, self.cfg.min_spare_gpus, growth)

    def scale_in_rank(self, view: View, replica: Replica, node_alloc: int, same_model_on_node: int) -> float:
        # pod-deletion-cost as the operator writes it; a replica unknown to the last plan ranks by its node.
        return float(self._costs.get(replica.pod, node_alloc * 1000))
