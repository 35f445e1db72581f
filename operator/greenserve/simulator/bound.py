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

With `min_replicas` (1 for every compared policy but Knative-like, which scales to zero; greenserve keeps
a replica for a model with traffic), every step counts at least that many ready replicas per model: the
bound of the policies that keep them. Without it the bound may run a low-rate model at zero replicas
and let its few requests be late, which no policy with `minReplicas: 1` can do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from greenserve.policy.energy import JOULES_PER_KWH, gpu_model_for
from greenserve.policy.queueing import replicas_for_attainment, shared_attainment
from greenserve.simulator.engine import POOL_RESERVED_GIB, Scenario, serve_step


@dataclass(frozen=True)
class EnergyBound:
    attainment: float
    total_j: float
    busy_j: float
    # Nodes charged whole (`whole_node_steps`): the part above the busy energy is then not GPUs' alone.
    whole_nodes: bool = False

    @property
    def kwh(self) -> float:
        return self.total_j / JOULES_PER_KWH


def maximise_dual(dual: Callable[[float], float], scale: float, iterations: int) -> float:
    """The largest value found of a concave dual function of the multiplier y >= 0.

    Golden-section search on a bracket [0, hi] grown from `scale` (doubling) until the dual decreases;
    every value it returns is the dual at some y >= 0, so it is a lower bound by weak duality whether or
    not the search converged (more `iterations` only tighten it). y = 0 is always tried."""
    return dual_argmax(dual, scale, iterations)[0]


def dual_argmax(dual: Callable[[float], float], scale: float, iterations: int) -> tuple[float, float]:
    """`maximise_dual`'s value and the multiplier y it was found at."""
    lo, hi = 0.0, scale
    while dual(2 * hi) > dual(hi):
        hi *= 2
    hi *= 2
    g = (5**0.5 - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = dual(a), dual(b)
    for _ in range(iterations):
        if fa < fb:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = dual(b)
        else:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = dual(a)
    return max((fa, a), (fb, b), (dual(0.0), 0.0))


def _tables(scenario: Scenario, min_replicas: int = 0) -> tuple[np.ndarray, np.ndarray, float, float, float]:
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
    width = max(width, min_replicas + 1)
    table = np.array([r + [r[-1]] * (width - len(r)) for r in rows])
    return table, np.array(counts, dtype=np.float64), cost, arrivals, busy


def energy_lower_bound(scenario: Scenario, attainment: float, min_replicas: int = 0) -> EnergyBound:
    """The least energy (J) any simulated policy that keeps at least `min_replicas` ready replicas per
    model needs to answer `attainment` of requests within the SLO."""
    table, counts, cost, arrivals, busy = _tables(scenario, min_replicas)
    need = attainment * arrivals
    cs = np.arange(table.shape[1], dtype=np.float64) * cost
    cs[:min_replicas] = np.inf  # counts below the floor are not allowed

    def dual(y: float) -> float:
        best = (cs[None, :] - y * table).min(axis=1)
        return float(counts @ best) + y * need

    return EnergyBound(attainment, maximise_dual(dual, cost, 100) + busy, busy)


def _step_tables(scenario: Scenario) -> tuple[np.ndarray, np.ndarray]:
    """Within-SLO requests per model, measured step and count, W[m, t, c] (c = 0..C, padded with the
    last value: past it every arrival is within the SLO), and the models' cold starts (s)."""
    rates = scenario.trace.rates[:, scenario.warmup_steps :]
    dt = scenario.trace.step_s
    per_model: list[list[list[float]]] = []
    for m, spec in enumerate(scenario.models):
        slo_s = spec.slo_ms / 1000.0
        cache: dict[float, list[float]] = {}
        rows = []
        for lam in rates[m].tolist():
            row = cache.get(lam)
            if row is None:
                top = replicas_for_attainment(lam, spec.capacity_rps, slo_s, 1.0 - 1e-9) + 1
                row = [serve_step(lam, c, spec.capacity_rps, 0.0, dt, slo_s)[1] for c in range(top + 1)]
                cache[lam] = row
            rows.append(row)
        per_model.append(rows)
    width = max(len(r) for rows in per_model for r in rows)
    table = np.array([[r + [r[-1]] * (width - len(r)) for r in rows] for rows in per_model])
    return table, np.array([spec.cold_start_s for spec in scenario.models])


def replica_power_w(scenario: Scenario) -> float:
    """A ready replica's least power (W): its GPUs' context power and their share of a node's base
    power (perfect fractional packing). The bounds assume one GPU count for all models."""
    gpus = {spec.gpus for spec in scenario.models}
    if len(gpus) != 1:
        raise ValueError("the bound assumes one GPU count for all models")
    gpu = gpu_model_for(scenario.cluster.gpu_product)
    return gpus.pop() * (gpu.loaded_idle_w + scenario.cluster.base_w / scenario.cluster.gpus_per_node)


def gpu_hours_bound(scenario: Scenario, bound: EnergyBound) -> float:
    """The least GPU-hours of any policy that `bound` holds for, at its attainment.

    Every bound here is the busy energy of the requests plus a Lagrangian lower bound on
    sum over steps of `replica_power_w` x dt x (GPUs serving): a GPU that serves, dedicated or shared,
    costs its context power and its share of a node's base power, whatever its load. That second part,
    over `replica_power_w` x 3600, is therefore a lower bound on the GPU-hours with a ready replica or a
    pool pod, and `Result.gpu_hours` (loading GPUs too) is never less. Valid for the causal bounds too
    (simulator/causal_bound.py: the same costs, in expectation over the counts). Not for a bound with
    whole nodes: its bare GPUs and empty node slots are no GPU-hours."""
    if bound.whole_nodes:
        raise ValueError("a whole-node bound's energy above the busy is not GPUs' alone")
    return max(0.0, bound.total_j - bound.busy_j) / (replica_power_w(scenario) * 3600.0)


# Multipliers z of a step's GPU capacity (G <= gpus_per_node x K) tried for each node count K, in units of
# a GPU's share of a node (b / gpus_per_node, `node_prices`): 1 gives back the fractional node price, so
# the whole-node value of a step is never below the fractional one; the others only raise it.
NODE_MULTIPLIERS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0)


def node_prices(scenario: Scenario) -> tuple[float, float]:
    """(a, b) in J per step: what a GPU with a resident replica draws beyond a bare GPU (P_ctx - P_bare),
    and what a node draws with every GPU bare (base_w + gpus_per_node x P_bare). The engine's idle and
    base energy of a step with N nodes and G GPUs holding a replica is exactly a G + b N
    (`engine.Simulation._account`); a + b / gpus_per_node is `replica_power_w` x dt."""
    cfg, dt = scenario.cluster, scenario.trace.step_s
    gpu = gpu_model_for(cfg.gpu_product)
    if gpu.loaded_idle_w < gpu.bare_w:
        raise ValueError("the whole-node bounds assume a GPU draws no less with a context than without")
    return (gpu.loaded_idle_w - gpu.bare_w) * dt, (cfg.base_w + cfg.gpus_per_node * gpu.bare_w) * dt


def whole_node_steps(
    psi: Callable[[float], np.ndarray], scenario: Scenario, max_gpus: int, min_nodes: int
) -> np.ndarray:
    """Per step, a lower bound on min over configurations of [a G + b N - y W] with whole nodes N >=
    ceil(G / gpus_per_node), given psi(c): per step, a lower bound on min over configurations of
    [c G - y W] at a GPU cost c (the relaxations of the callers, each valid for every c >= 0).

    Why. A step whose configuration has G GPUs holding a replica needs N >= ceil(G / n) nodes (n =
    gpus_per_node: every such GPU is on a node, `cluster.Cluster`), and a G + b N is non-decreasing in N.
    So its value is at least min over K >= min_nodes of [b K + min over configurations with G <= n K of
    (a G - y W)], and for every z >= 0 the inner minimum is at least psi(a + z) - n K z (z (G - n K) <= 0
    there: weak duality once more). The largest over `NODE_MULTIPLIERS` of that is taken per K, the least
    over K per step. K past ceil(max_gpus / n) admits every configuration and costs b more per node, so
    the count stops there. With z = b / n every K gives psi(a + b / n), the fractional price: never lower."""
    a, b = node_prices(scenario)
    per_node = scenario.cluster.gpus_per_node
    zs = np.array(NODE_MULTIPLIERS) * b / per_node
    values = np.stack([psi(a + z) for z in zs])  # (multipliers, steps)
    ks = np.arange(min_nodes, max(min_nodes, math.ceil(max_gpus / per_node)) + 1, dtype=np.float64)
    per_k = values[:, None, :] - per_node * ks[None, :, None] * zs[:, None, None]
    return np.asarray((per_k.max(axis=0) + b * ks[:, None]).min(axis=0))


def dedicated_minimum(
    table: np.ndarray, min_replicas: int, gpus: int = 1
) -> Callable[[float, float], np.ndarray]:
    """For a table of within-SLO requests W[m, t, k] (realised or expected): (y, c) -> per model and
    step, the least of k x gpus x c - y W[m, t, k] over ready counts k >= min_replicas, a model's
    cheapest dedicated option in the Lagrangian at a GPU cost of c per step."""
    counts = np.arange(table.shape[2], dtype=np.float64)
    floor = np.where(counts < min_replicas, np.inf, 0.0)
    return lambda y, c: ((counts * gpus * c + floor)[None, None, :] - y * table).min(axis=2)


def whole_node_dual(
    scenario: Scenario, table: np.ndarray, min_replicas: int
) -> tuple[Callable[[float], float], Callable[[float], float]]:
    """For a table of within-SLO requests W[m, t, c] over the measured steps (realised or expected),
    the dual without the attainment term (y x attainment x arrivals, the caller's) of whole-GPU policies
    that keep `min_replicas` ready replicas per model: (fractional nodes, whole nodes). Per step and model
    the least of c x gpus x cost - y W[m, t, c] over counts c >= min_replicas (`energy_lower_bound`'s
    relaxation, step by step); with whole nodes through `whole_node_steps`, at least
    ceil(models x min_replicas x gpus / gpus_per_node) nodes."""
    gpus = {spec.gpus for spec in scenario.models}
    if len(gpus) != 1:
        raise ValueError("the bound assumes one GPU count for all models")
    g = gpus.pop()
    n_models, _, width = table.shape
    cost = replica_power_w(scenario) * scenario.trace.step_s / g  # per GPU and step
    min_nodes = math.ceil(n_models * min_replicas * g / scenario.cluster.gpus_per_node)
    dedicated = dedicated_minimum(table, min_replicas, g)

    def at(y: float) -> Callable[[float], np.ndarray]:
        return lambda c: dedicated(y, c).sum(axis=0)

    def fractional(y: float) -> float:
        return float(at(y)(cost).sum())

    def whole(y: float) -> float:
        return float(whole_node_steps(at(y), scenario, n_models * (width - 1) * g, min_nodes).sum())

    return fractional, whole


def node_bound_value(whole: Callable[[float], float], y0: float, scale: float, iterations: int) -> float:
    """The whole-node dual's largest value found (a lower bound at every y): at the fractional dual's
    best multiplier y0 and by a search. At y0 it is already at least the fractional bound
    (`whole_node_steps`), and the whole-node dual, a least over node counts, need not be concave, so a
    search alone could miss it."""
    return max(whole(y0), maximise_dual(whole, scale, iterations))


def whole_node_bound(scenario: Scenario, attainment: float, min_replicas: int = 0) -> EnergyBound:
    """`energy_lower_bound` with whole nodes: per step the nodes are at least ceil(GPUs / gpus_per_node),
    and each costs its base power and its bare GPUs' (`whole_node_steps`), where `energy_lower_bound`
    charges each GPU its fractional share of a node (perfect packing into fractional nodes). Never below
    it; above it where a fleet's GPUs leave a node partly empty, most on fleets of a few nodes. Its
    non-busy part is not a GPU count (`gpu_hours_bound` refuses it)."""
    table, _ = _step_tables(scenario)
    rates = scenario.trace.rates[:, scenario.warmup_steps :]
    need = attainment * float(rates.sum() * scenario.trace.step_s)
    fractional, whole = whole_node_dual(scenario, table, min_replicas)
    scale = replica_power_w(scenario) * scenario.trace.step_s
    _, y0 = dual_argmax(lambda y: fractional(y) + y * need, scale, 60)
    value = node_bound_value(lambda y: whole(y) + y * need, y0, scale, 60)
    busy = busy_joules(scenario, rates)
    return EnergyBound(attainment, value + busy, busy, whole_nodes=True)


def busy_joules(scenario: Scenario, rates: np.ndarray) -> float:
    """The utilization-proportional energy (J) of serving every request of `rates` (models x measured
    steps, req/s): the same for every policy that serves them all."""
    gpu = gpu_model_for(scenario.cluster.gpu_product)
    dt = scenario.trace.step_s
    return sum(
        float((gpu.busy_w - gpu.loaded_idle_w) * spec.gpus * rates[m].sum() * dt / spec.capacity_rps)
        for m, spec in enumerate(scenario.models)
    )


def path_dual(scenario: Scenario, table: np.ndarray, min_replicas: int) -> Callable[[float], float]:
    """The start-charged part of the dual of `startup_aware_bound` for a table of within-SLO requests
    W[m, t, c] over the measured steps: y -> sum over models of the cheapest path of ready counts of
    sum_t [cost x c_t - y W[m, t, c_t]] plus a start's energy on every rise (the attainment term
    y x attainment x arrivals is the caller's)."""
    _, n_steps, width = table.shape
    dt = scenario.trace.step_s
    power = replica_power_w(scenario)
    cost = power * dt
    cold = np.array([spec.cold_start_s for spec in scenario.models])
    start = power * cold  # J per start, per model
    free_until = np.ceil(cold / dt)  # steps of the window in which a start is not charged
    cs = np.arange(width, dtype=np.float64) * cost
    cs[: min(min_replicas, width)] = np.inf
    counts = np.arange(width, dtype=np.float64)

    def dual(y: float) -> float:
        value = cs[None, :] - y * table[:, 0, :]  # (models, counts): best path ending at each count
        for t in range(1, n_steps):
            charge = np.where(t >= free_until, start, 0.0)[:, None]
            # Arriving at c from c' <= c costs charge * (c - c'); from c' >= c nothing: a running
            # minimum of value - charge * c' from below, and a suffix minimum from above.
            up = np.minimum.accumulate(value - charge * counts[None, :], axis=1) + charge * counts[None, :]
            down = np.minimum.accumulate(value[:, ::-1], axis=1)[:, ::-1]
            value = np.minimum(up, down) + cs[None, :] - y * table[:, t, :]
        return float(value.min(axis=1).sum())

    return dual


def startup_aware_bound(scenario: Scenario, attainment: float, min_replicas: int = 1) -> EnergyBound:
    """`energy_lower_bound` with `min_replicas` per model, tightened by what every start costs.

    In the engine a replica is ready only after loading for its cold start on a GPU of an existing
    node, so every rise of a model's ready count by one has cost at least one cold start of a replica's
    context power and node share (`cold start x per-replica power`); a fall costs nothing. Per multiplier
    y the dual is then a shortest path over each model's ready counts through the measured steps (a
    dynamic programme, the start cost charged on every rise: `path_dual`), and weak duality still makes
    it a lower bound for every policy that keeps `min_replicas` ready. Rises in the first cold start of
    the measured window are not charged (their loading may have begun before it), and the count entering
    the window is free. Foresight is still perfect: this bounds what any policy, causal or not, can
    reach (simulator/causal_bound.py bounds the policies without foresight)."""
    table, _ = _step_tables(scenario)
    rates = scenario.trace.rates[:, scenario.warmup_steps :]
    need = attainment * float(rates.sum() * scenario.trace.step_s)
    paths = path_dual(scenario, table, min_replicas)
    cost = replica_power_w(scenario) * scenario.trace.step_s
    value = maximise_dual(lambda y: paths(y) + y * need, cost, 60)
    return EnergyBound(attainment, value + busy_joules(scenario, rates), busy_joules(scenario, rates))


# Grid of a shared GPU's load in [0, 1] for the sharing-aware bound's per-load price (kappa below), and
# of the split theta of a GPU's cost between its load and its memory.
SHARED_GRID = 4000
THETAS = tuple(i / 20 for i in range(21))


def sharing_aware_bound(
    scenario: Scenario, attainment: float, min_replicas: int = 0, whole_nodes: bool = False
) -> EnergyBound:
    """The least energy any simulated policy needs to answer `attainment` of requests within the SLO when
    models may also share GPUs (engine.serve_shared), for scenarios of one service class (one service
    time, SLO and one GPU per replica); `energy_lower_bound` is the bound without sharing.

    Why it is a bound. As in `energy_lower_bound`, per step every GPU that serves costs at least
    `cost` = (P_ctx + base_w / gpus_per_node) x dt, backlogs only make requests later, and the dual of
    the attainment constraint with multiplier y is relaxed per step. A model is served either by c >= 1
    dedicated replicas (M/M/c: the table of `energy_lower_bound`) or on a shared GPU, or not at all. A
    shared GPU with summed load x (all models share the service time s) answers at most
    W(x) = (dt / s) x a(x) requests within the SLO, a(x) = `shared_attainment(x, s, s, slo)` (zero at
    x >= 1), so its Lagrangian cost - y W(x) = x (cost / x - y (dt / s) a(x)) >= x kappa(y) with
    kappa(y) = min(0, inf over x in (0, 1) of cost / x - y (dt / s) a(x)). Summed over the shared GPUs
    that is kappa(y) times their models' summed load, whatever the grouping: each model may take, per
    step, the least of its dedicated options and kappa(y) x its load, which is again a per-(model, rate)
    minimum, and weak duality makes the maximum over y a lower bound. kappa is bounded below on the grid
    x_j = j / SHARED_GRID: on [x_j, x_j+1], cost / x >= cost / x_j+1 and a(x) <= a(x_j) (a is
    non-increasing), so the grid value is never above the true infimum.

    Memory. The engine loads models into a shared GPU only up to its memory M (`Simulation.load_shared`),
    so a shared GPU holding models of memory q <= M also costs at least cost x q / M. For any theta in
    [0, 1], cost - y W(x) = (theta cost - y W(x)) + (1 - theta) cost >= x kappa_theta(y) +
    (1 - theta) cost q / M, with kappa_theta the kappa of the cost theta x cost: per model, its load x
    kappa_theta(y) plus (1 - theta) cost x its memory / M. Each theta gives a lower bound; the bound is
    the largest over `THETAS` (theta = 1 is the bound without memory). A model larger than M cannot
    share.

    One GPU per shared model. The engine serves a model without a ready dedicated replica from one
    shared GPU (`Simulation._account`), so a model's share of its GPU's Lagrangian, x (theta cost / X -
    y (dt / s) a(X)) for its load x <= X, is also at least min(0, theta cost - y (dt / s) X a(X)): it
    never gains more than one whole GPU's answers (`SharedPrice.floor`). Each model takes the larger of
    the two (`SharedPrice.shared`). Without it a model whose load needs several GPUs could be priced at
    theta's small share of their cost while the memory term prices the rest of the fleet.

    `min_replicas` 1: the bound of the policies that keep every model at a home, at least one ready
    dedicated replica or a copy on a shared GPU (priced as above, memory included), as greenserve-shared
    does for every model at minReplicas 1 (the bench's) and HPA-like does with its replica per model.

    The busy energy counts the work of the requests within the SLO only (`attainment` x the measured
    arrivals: at least those were served), not every arrival. It is at most `energy_lower_bound` (it
    has every option that bound has, and more).

    `whole_nodes`: nodes charged whole (`whole_node_steps`), step by step. Every price above is valid at
    any GPU cost c >= 0 in place of `cost` (kappa, the floor and the memory term at c: theta c x
    `SharedPrice.shared` of theta c / cost), which is what `whole_node_steps` asks of a step's
    relaxation. The split theta is the fractional bound's best one (any theta gives a bound). Pool GPUs
    are whole GPUs on nodes like any other, so their count is in G."""
    price = SharedPrice.of(scenario)
    table, counts, cost, arrivals, busy_all = _tables(scenario)
    rates = scenario.trace.rates[:, scenario.warmup_steps :]
    loads = np.concatenate([np.unique(rates[m]) for m in range(len(scenario.models))]) * price.s
    # Each row's share of a shared GPU's memory (inf: it cannot share), as `_tables` orders the rows.
    mem = np.concatenate(
        [
            np.full(np.unique(rates[m]).size, price.memory_share(spec.memory_gib))
            for m, spec in enumerate(scenario.models)
        ]
    )
    need = attainment * arrivals
    cs = np.arange(table.shape[1], dtype=np.float64) * cost
    cs[:min_replicas] = np.inf  # below the floor a model is served shared or not at all

    def dual_at(theta: float) -> Callable[[float], float]:
        def dual(y: float) -> float:
            shared = price.shared(theta, y)(loads) + (1.0 - theta) * cost * mem
            best = np.minimum((cs[None, :] - y * table).min(axis=1), shared)
            return float(counts @ best) + y * need

        return dual

    busy = attainment * busy_all
    best = {theta: dual_argmax(dual_at(theta), cost, 60) for theta in THETAS}
    theta = max(best, key=lambda th: best[th][0])
    value, y = best[theta]
    if whole_nodes:
        steps, _ = _step_tables(scenario)
        value = max(value, shared_node_value(scenario, steps, rates * price.s, theta, y, min_replicas, need))
    return EnergyBound(attainment, value + busy, busy, whole_nodes=whole_nodes)


def shared_node_value(
    scenario: Scenario,
    table: np.ndarray,
    loads: np.ndarray,
    theta: float,
    y0: float,
    min_replicas: int,
    need: float,
) -> float:
    """The sharing-aware dual with whole nodes (`sharing_aware_bound`, `whole_node_steps`) at split
    theta, for per-step tables W[m, t, c] and loads (models x steps), realised or expected: its largest
    value found, from the fractional dual's multiplier y0 (`node_bound_value`)."""
    price = SharedPrice.of(scenario)
    n_models, _, width = table.shape
    mem = np.array([price.memory_share(spec.memory_gib) for spec in scenario.models])[:, None]
    dedicated = dedicated_minimum(table, min_replicas)

    def whole(y: float) -> float:
        def psi(c: float) -> np.ndarray:
            shared = price.shared(theta * c / price.cost, y)(loads) + (1.0 - theta) * c * mem
            return np.asarray(np.minimum(dedicated(y, c), shared).sum(axis=0))

        # Every model is at a home with min_replicas, so a step has a GPU and a node at least.
        nodes = whole_node_steps(psi, scenario, n_models * width, 1 if min_replicas > 0 else 0)
        return float(nodes.sum()) + y * need

    return node_bound_value(whole, y0, price.cost, 40)


@dataclass(frozen=True)
class SharedPrice:
    """The per-load price of a shared GPU in the sharing-aware bound (its docstring): for a multiplier y
    and a split theta, kappa_theta(y) = min(0, min over the grid x_j of theta cost / x_j+1 -
    y (dt / s) a(x_j)), for a scenario of one service class of one GPU per replica."""

    s: float  # service time (s)
    dt: float
    cost: float  # a GPU's least energy per step (J)
    a: np.ndarray  # a(x_j), j < SHARED_GRID
    per_load: np.ndarray  # cost / x_j+1
    memory_gib: float  # what the models of one shared GPU may use
    # max over the grid cells of x_j+1 a(x_j): at least X a(X) for every X in (0, 1), the most within-SLO
    # answers per service time one GPU gives (X a(X) <= x_j+1 a(x_j) on [x_j, x_j+1], a non-increasing).
    peak: float

    @classmethod
    def of(cls, scenario: Scenario) -> SharedPrice:
        specs = {(spec.capacity_rps, spec.slo_ms, spec.gpus) for spec in scenario.models}
        if len(specs) != 1 or next(iter(specs))[2] != 1:
            raise ValueError("the sharing-aware bound assumes one service class of one GPU per replica")
        mu, slo_ms, _ = specs.pop()
        s, slo, dt = 1.0 / mu, slo_ms / 1000.0, scenario.trace.step_s
        cost = replica_power_w(scenario) * dt
        xs = np.arange(SHARED_GRID + 1, dtype=np.float64) / SHARED_GRID
        a = np.array([1.0] + [shared_attainment(x, s, s, slo) for x in xs[1:-1]])
        memory = scenario.cluster.gpu_memory_gib - POOL_RESERVED_GIB
        return cls(s, dt, cost, a, cost / xs[1:], memory, float((xs[1:] * a).max()))

    def kappa(self, theta: float, y: float) -> float:
        return min(0.0, float((theta * self.per_load - y * self.dt / self.s * self.a).min()))

    def floor(self, theta: float, y: float) -> float:
        """The least Lagrangian share of one model on a shared GPU, whatever its load: a member with
        load x on a GPU of summed load X >= x (X < 1: past it nothing is within the SLO) has share
        x (theta cost / X - y (dt / s) a(X)) >= min(0, theta cost - y (dt / s) X a(X)). A model is
        served by one shared GPU (engine.Simulation._account), so it never gains more than one GPU's
        answers: a model whose load needs several GPUs cannot take its whole load at kappa."""
        return min(0.0, theta * self.cost - y * self.dt / self.s * self.peak)

    def shared(self, theta: float, y: float) -> Callable[[np.ndarray], np.ndarray]:
        """Loads -> each one's shared-GPU Lagrangian share, max(kappa x load, floor), at (theta, y):
        convex in the load (the larger of a line through 0 and a constant), so its value at a mean load
        is at most its mean over the draws (Jensen: the causal bounds price expected loads with it).
        kappa and the floor are computed once, for every load priced at that (theta, y)."""
        kappa, floor = self.kappa(theta, y), self.floor(theta, y)
        return lambda loads: np.maximum(kappa * loads, floor)

    def memory_share(self, memory_gib: float) -> float:
        """A model's share of a shared GPU's memory (inf: it does not fit one)."""
        return memory_gib / self.memory_gib if memory_gib <= self.memory_gib else float("inf")
