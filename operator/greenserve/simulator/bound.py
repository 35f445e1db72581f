"""A proven lower bound on the energy of any policy at a given SLO attainment (SIMULATED energy).

The oracle (`engine.run_oracle`) meets 99.5% in every step; a policy may instead under-serve some steps
and over-serve others, so the oracle alone does not prove that a target such as "35% less than HPA at
equal SLO" is out of reach. This bound does: no policy run by `engine.Simulation` on the scenario can
use less energy while answering at least `attainment` of the measured requests within the SLO.

Why it is a bound. In every step, for each model with `c` ready replicas:

* the requests within the SLO are at most `serve_step(lam, c, mu, backlog=0)`: a backlog only delays
  arrivals (it is the same M/M/c as the engine; `serve_step` is monotone in the backlog);
* the energy is at least `c * gpus * (P_ctx + base_w / gpus_per_node) * dt`: a ready replica holds a
  CUDA context, and its share of a node's base power is at least its share of the node's GPUs (perfect
  fractional packing; bare GPUs, loading replicas, provisioning and unneeded nodes only add);
* the busy (utilization-proportional) energy is that of the work served, the same for every policy
  that serves all requests; the bound counts it for all arrivals of the measured steps.

Minimising the energy subject to sum(within) >= attainment * sum(arrivals) over integer c per step is
then relaxed by Lagrangian duality: for every multiplier y >= 0,
    min_c sum_steps [E(c) - y * W(c)] + y * attainment * N
is a lower bound (weak duality), and the bound reported is its maximum over y.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from greenserve.policy.energy import JOULES_PER_KWH, gpu_model_for
from greenserve.policy.queueing import replicas_for_attainment
from greenserve.simulator.engine import Scenario, serve_step


@dataclass(frozen=True)
class EnergyBound:
    attainment: float
    total_j: float
    busy_j: float

    @property
    def kwh(self) -> float:
        return self.total_j / JOULES_PER_KWH


def _tables(scenario: Scenario) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """Per distinct (model, rate): within-SLO requests W[i, c] for c = 0..C and how often it occurs;
    the energy per replica-step, the measured arrivals and their busy energy."""
    trace, dt = scenario.trace, scenario.trace.step_s
    gpu = gpu_model_for(scenario.cluster.gpu_product)
    cfg = scenario.cluster
    rates = trace.rates[:, scenario.warmup_steps :]
    gpus = {spec.gpus for spec in scenario.models}
    if len(gpus) != 1:
        raise ValueError("the bound assumes one GPU count for all models")
    # A ready replica's context power and its share of a node's base power, per step.
    cost = gpus.pop() * (gpu.loaded_idle_w + cfg.base_w / cfg.gpus_per_node) * dt
    rows: list[list[float]] = []
    counts: list[int] = []
    busy = 0.0
    arrivals = float(rates.sum() * dt)
    for m, spec in enumerate(scenario.models):
        slo_s = spec.slo_ms / 1000.0
        lams, n = np.unique(rates[m], return_counts=True)
        busy += float((gpu.busy_w - gpu.loaded_idle_w) * spec.gpus * rates[m].sum() * dt / spec.capacity_rps)
        for lam, count in zip(lams.tolist(), n.tolist(), strict=True):
            # Past this count one more replica gains (almost) nothing: every arrival is within the SLO.
            top = replicas_for_attainment(lam, spec.capacity_rps, slo_s, 1.0 - 1e-9) + 1
            rows.append([serve_step(lam, c, spec.capacity_rps, 0.0, dt, slo_s)[1] for c in range(top + 1)])
            counts.append(count)
    width = max(len(r) for r in rows)
    table = np.array([r + [r[-1]] * (width - len(r)) for r in rows])
    return table, np.array(counts, dtype=np.float64), cost, arrivals, busy


def energy_lower_bound(scenario: Scenario, attainment: float) -> EnergyBound:
    """The least energy (J) any simulated policy needs to answer `attainment` of requests within the SLO."""
    table, counts, cost, arrivals, busy = _tables(scenario)
    need = attainment * arrivals
    cs = np.arange(table.shape[1], dtype=np.float64) * cost

    def dual(y: float) -> float:
        best = (cs[None, :] - y * table).min(axis=1)
        return float(counts @ best) + y * need

    # The dual is concave in y: golden-section search on a bracket grown until it decreases.
    lo, hi = 0.0, cost
    while dual(2 * hi) > dual(hi):
        hi *= 2
    hi *= 2
    g = (5**0.5 - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = dual(a), dual(b)
    for _ in range(100):
        if fa < fb:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = dual(b)
        else:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = dual(a)
    return EnergyBound(attainment, max(fa, fb, dual(0.0)) + busy, busy)
