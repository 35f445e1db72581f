"""greenserve's policy: pure functions and frozen dataclasses, no kopf, asyncio or I/O; time is injected
(`now`, Unix seconds). The operator and the simulator (greenserve.simulator) run the same code.

* `autoscaling.decide(inputs: ScalingInputs, state: ScalerState, now) -> ScaleDecision`: desired replicas of
  one ModelService (demand at a target utilization, scale-up at once, stabilised scale-down, p95 SLO
  guard, idle to zero after the energy break-even, hold on missing or stale metrics). `ScalerState`
  round-trips through `to_dict`/`from_dict` (JSON, stored in the CR status). `sustained_trend` feeds the
  optional `request_rate_trend`.
* `consolidation.plan(snapshot: ClusterSnapshot, now, limits: ConsolidationLimits) -> ConsolidationPlan`:
  start-before-stop moves that empty the least-allocated GPU nodes, the nodes expected to empty, and
  `controller.kubernetes.io/pod-deletion-cost` values; `apply_moves` gives the snapshot after a plan.
* `energy`: `GpuPowerModel.power_w(util, loaded)`, `NodePowerModel`, `counter_delta`, `joules_to_kwh`,
  `grams_co2e`, `break_even_idle_s` (the power model documented in policy/energy.py; dependency-free).
* `queueing`: Erlang C, M/M/c p95 response time, replicas for an SLO.
* `profile`: the one adapter from a served model (`ServiceProfile`) and its metrics (`Reading`) to
  `ScalingInputs`, for the operator and the simulator alike.
* `fleet`: the fleet objective: one price per late request sizes every model so that the fleet meets its
  attainment target (`fleet_price`, `replicas_at_price`, `member_target`).
* `release`: replicas held only by the stabilisation window give way to another model's scale-up that
  would otherwise need a new node (`release`), and scale-ups wait for GPUs being freed (`plan_scale_ups`).
* `sharing.plan(demands, gpus, limits) -> SharingPlan`: which models share pool GPUs (bin-packing by
  memory and by a saturation cap from the queueing model, with hysteresis), which get dedicated replicas,
  which are unloaded (scale to zero after the reload break-even); `profile.sharing_demand` is the one
  mapping of a ServiceProfile to its input.
* `estimate`: request-rate estimates that hold at low rates (`estimate_rate`), a trend that needs a
  significant rise (`significant_trend`), and headroom for a model's own past rises within the lead time
  with its fleet's as prior (`rise_ratios`, `pool_rises`, `rise_quantile`).
"""
