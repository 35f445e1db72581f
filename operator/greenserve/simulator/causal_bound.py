"""A lower bound on the energy of any policy WITHOUT foresight at a given SLO attainment (SIMULATED energy).

The bounds of simulator/bound.py hold for any policy, including one that knows every step's realised
arrival count before it sizes that step. No policy the engine runs can know it: this module bounds the
policies that decide on the past only, as the policies of simulator/policies.py and simulator/sharing.py
do (engine.Simulation.observed_rate reads the steps before the current one), but for the reads below.

What a causal policy sees, from simulator/engine.py. The matrix's scenarios (simulator/matrix.py
`_generate`) draw a rate curve lam (models x steps: a Zipf mean times a shape) and then the counts
N[m, t] ~ Poisson(lam[m, t] dt), independent given lam. At step w the engine runs the policy's control
tick, then serves the step with the replicas ready then (`Simulation.run`): the count N[m, w] is not
yet known to the tick (`observed_rate` covers steps < w). Removing a replica takes effect in the step of
the tick; a replica created at the tick of step j is ready at the earliest in step j + L, L =
ceil(cold start / dt) (`Cluster.bind`: ready_at = bind time + cold start). So the ready count c[m, w] of
a causal policy is a function of the counts before w (and of lam, for a policy told lam), never of
N[m, w]. Three reads of the engine go further, and the bound does not cover what they add:
`Simulation.last_arrival` is set for the current step before the tick, and Knative-like (scale to zero)
and greenserve-shared (unloading an idle model, simulator/sharing.py) read it, as Knative-like reads
`trace.rates[m, k] > 0` to wake a model; and `policies.max_replicas_for`, the replica cap of HPA-like,
Knative-like and greenserve (and the initial count of HPA-like and static-peak), is 1.5x the trace's
peak count over the target, an operator's setting taken from the whole run. The first lets a policy keep
a replica in a step because a request arrives in it; the cap is far above any count the policies reach.

The rate oracle (`rate_oracle_bound`). Give a relaxed policy MORE than any causal policy has: the whole
curve lam, but not the counts. The counts are independent Poisson given lam, so past counts tell it
nothing more about N[m, w]; whatever it does with them, c[m, w] is independent of N[m, w] given lam. For
every multiplier y >= 0 and every causal policy (realised energy E less the busy energy, which bound.py
counts apart, the same for every policy; within-SLO requests S):

    E >= sum_{m,w} [cost c[m, w] - y W(N[m, w], c[m, w])] + y S,

where W(n, c) = serve_step(n / dt, c, mu, 0, dt, slo)[1] bounds the within-SLO requests of a step from
above (a backlog only delays arrivals, as in bound.py) and cost = a ready replica's least energy per
step (`bound.replica_power_w`). Taking expectations over the counts given lam, with c independent of N:

    E[E] >= sum_{m,w} min_c [cost c - y Wbar[m, w, c]] + y E[S],   Wbar = E_{N ~ Poisson(lam dt)} W(N, c).

So if the policy's expected within-SLO requests are at least `attainment` x the expected arrivals, its
expected energy is at least the dual value with y x attainment x sum(lam dt) in place of y E[S]; the
largest over y (`bound.maximise_dual`) is the bound. Starts are charged exactly as in
`bound.startup_aware_bound` (`bound.path_dual`, the same dynamic programme over Wbar): the path that
minimises the expected Lagrangian of a policy whose information does not predict the future counts is
a function of lam alone (dynamic programming: the cost-to-go from a ready count depends on lam only),
so the deterministic shortest path is the best a causal policy can do in expectation. Wbar is computed
exactly over the Poisson distribution within TAIL_SD standard deviations; the mass outside adds its
largest possible contribution (every arrival within the SLO), and past the widest table the within-SLO
requests are taken as every arrival: both only raise Wbar, which keeps the bound valid.

What it guarantees. The bound is on the EXPECTED energy (over the Poisson counts, given lam) of any
causal policy whose EXPECTED within-SLO requests reach `attainment` of the expected arrivals. A single
run's energy and attainment are sums over thousands of model-steps whose noise is that of the counts,
so they are close to their expectations (README.md, "Without foresight", gives how far the foresight
bounds and a policy's energy move between independent count draws of one rate curve). The arrivals
and the busy energy are the expected ones too: mixing the run's realised arrivals with expected
within-SLO tables would move the bound by the counts' noise against a 0.5% slack.

Bursts (`burst_state_bound`). On the bursty shape the rate oracle still knows every burst's onset. The
generator (`matrix._burst_events`) starts bursts per model and step as a Poisson process (the count over
the run is Poisson and each start uniform) with length max(1, floor(Exp(BURST_S) / dt)) steps and a rate
x (1 + (F - 1) min(1, age / ramp)) while active; overlapping bursts multiply. The active bursts' ages
(capped at the ramp) are therefore a Markov chain B (an M/M/infinity queue of bursts, in discrete time):
an age-0 burst survives a step with probability exp(-2 dt / BURST_S), an older one with exp(-dt /
BURST_S), and new bursts arrive Poisson(onsets_per_step) per step. The relaxed policy is told B up to
the last completed step at every tick (a causal policy's counts before w are drawn from lam of steps
< w, a function of B up to w - 1: this is more than it has) but not future onsets. Its ready count at w
is at most U_w, the replicas that exist after the tick of w - L, chosen knowing B_{w-L-1}; at the tick of
w it may keep any c <= U_w knowing B_{w-1}. So, for each y and every causal policy,

    E[cost c_w - y W(N_w, c_w) | B_{w-L-1}] >= h(B_{w-L-1}) = min_U E[ min_{c <= U} E[cost c - y
        Wbar(c, lam(B_w)) | B_{w-1}, path] | B_{w-L-1}],

and summing over the run, E[E] >= E[sum_w h(B_{w-L-1})] + y attainment E[sum_w lam_w dt]. The value
reported evaluates h along the realised bursts and lam along the realised curve: for each y, an
unbiased estimate of that bound (its error is a sum over the run of zero-mean terms), maximised over
y. The chain's paths are enumerated up to ONSET_LIMIT new bursts over the L + 1 steps of a decision;
paths with more are bounded below by -y times their expected arrivals (W <= N, a policy's energy >= 0),
which E[F^P; P > ONSET_LIMIT] x F^(bursts active) bounds. Starts are not charged in this bound: a
replica started ahead of a burst that does not come costs nothing in it. The causal bound and the
causal sharing bound take it charged ahead, below.

Bursts, with each ready replica charged where it had to be resident (`burst_state_bound(ahead=True)`).
In the engine a replica bound to a node at the tick of step j draws its context power and
its share of the node's base power (`bound.replica_power_w`: `cost` per step) in every step from j on,
loading or ready, until it is removed, and it is ready from step j + L on (`Cluster.bind`,
`Simulation._account`). Let E_t be a model's replicas resident in step t (bound: loading or ready)
and c_t its ready ones. Then (i) the energy of the measured steps is at least cost x sum_t E_t plus
the busy energy; (ii) a replica ready in step w was resident in step w - L, so c_w <= E_{w-L}; (iii)
E_{w-L} is fixed by the tick of step w - L, so it is a function of what the relaxed policy knows then,
B up to w - L - 1 (its counts tell it nothing more about the future, given B). Pair each E_{w-L}
with the step w it can serve: the E_t of the window's last L steps are dropped (>= 0), and for the
window's first L steps E_{w-L} lies before the window and is not charged (the replicas resident then
are free). So with U_w = E_{w-L}, for each y and every causal policy,

    E[E] >= E[sum_w cost U_w [w - L in the window] - y W(N_w, c_w)] + y attainment E[sum_w N_w],
    c_w <= U_w,

and conditioning on B_{w-L-1} as above gives, per measured step, h(B_{w-L-1}) = min_U [cost U [w - L
in the window] + E[min_{c <= U} E[-y Wbar(c, lam(B_w)) | B_{w-1}, path] | B_{w-L-1}]]: the burst-state
bound with U charged instead of c. U is charged on every path (it is fixed before them), those past
ONSET_LIMIT included. A replica started for a burst that does not come thus costs at least one step
in it, as holding one idle does; not its whole loading (L steps), and a start that is used costs no
more than holding: the rate oracle charges each start in full but knows the onsets, and the bursty
scenarios report the larger of the two (each bounds the expected energy).

Diurnal and long-tail noise (AR(1), 600 s) and the Azure curves keep the rate oracle: it is a valid,
looser relaxation there (a causal policy does not know the noise ahead either).

Shared GPUs (`causal_sharing_bound`): the relaxation of `bound.sharing_aware_bound`. Its per-model,
per-step options (dedicated c >= 0 with within-SLO requests W, or a share of a GPU priced kappa x load
plus the memory term) are chosen before the count; a shared GPU's Lagrangian is at least kappa x its
realised load on every draw, whose expectation is kappa x lam s, and the dedicated options take Wbar.
The per-model price max(kappa x load, floor) (`SharedPrice.shared`) is convex in the load, so its value
at the expected load is at most its expectation over the draws (Jensen). The busy energy is attainment
x the expected arrivals' work. On the bursty shape the same burst-state information applies, charged
ahead: the dedicated replicas that may be ready at w are charged at w - L as for whole GPUs (U_w), and
on each path at w the model may instead be on a shared GPU, whose GPU is charged at w itself (a pool
GPU resident at w is not a replica resident at w - L, so no GPU-step is charged twice; the shared
option may be taken at any tick without a lead, which only relaxes it further). This is at the cost
split theta that is best for the rate oracle (any theta gives a bound).

Whole nodes (`whole_nodes`). The rate oracle's step relaxations, whole-GPU without starts and shared,
take nodes whole as the foresight bounds do (`bound.whole_node_steps`): a step's configuration is
independent of its count given lam, so its expected Lagrangian is a G + b N - y Wbar, and the step's
least value over configurations bounds it, with N >= ceil(G / gpus_per_node) as on every draw. The
start-charged paths and the burst-state bound keep fractional nodes; the causal bounds report the
largest of what applies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from greenserve.policy.queueing import replicas_for_attainment
from greenserve.simulator.bound import (
    THETAS,
    EnergyBound,
    SharedPrice,
    busy_joules,
    dedicated_minimum,
    dual_argmax,
    maximise_dual,
    node_bound_value,
    path_dual,
    replica_power_w,
    shared_node_value,
    whole_node_dual,
)
from greenserve.simulator.engine import ModelSpec, Scenario

# The Poisson distribution of a step's count is summed within this many standard deviations of its mean.
TAIL_SD = 12.0
# New bursts enumerated over a decision's L + 1 steps; the rest are bounded (module docstring).
ONSET_LIMIT = 3


@dataclass(frozen=True)
class BurstProcess:
    """The bursty shape's generator (simulator/matrix.py `_burst_events`) and its realised bursts."""

    base: np.ndarray  # per-model rate outside bursts (req/s)
    events: tuple[tuple[tuple[int, int], ...], ...]  # per model: (first step, length in steps)
    onsets_per_step: float  # mean new bursts per model and step (Poisson)
    mean_steps: float  # BURST_S / dt: length max(1, floor(Exp(mean_steps)))
    ramp_steps: float  # steps to full height
    factor: float  # the rate's multiplier at full height

    def multiplier(self, ages: tuple[int, ...]) -> float:
        """The rate multiplier of a state: counts of active bursts per age class (the last: >= ramp)."""
        out = 1.0
        for age, n in enumerate(ages):
            out *= (1.0 + (self.factor - 1.0) * min(1.0, age / self.ramp_steps)) ** n
        return out

    @property
    def classes(self) -> int:
        return max(1, math.ceil(self.ramp_steps)) + 1

    def state(self, m: int, t: int) -> tuple[int, ...]:
        """Model m's active bursts at step t by age class."""
        out = [0] * self.classes
        for start, length in self.events[m]:
            if start <= t < start + length:
                out[min(t - start, self.classes - 1)] += 1
        return tuple(out)


@dataclass(frozen=True)
class RateCurve:
    """A scenario's expected rates before the Poisson counts (models x all steps, req/s)."""

    lam: np.ndarray
    bursts: BurstProcess | None = None


@dataclass(frozen=True)
class CausalBound(EnergyBound):
    rate_oracle_j: float = 0.0  # the rate oracle's bound
    burst_state_j: float | None = None  # the burst-state bound (bursty shapes; charged ahead)


# --- the within-SLO requests of a step, in expectation over its count ----------------------------------


def within_grid(n: np.ndarray, width: int, spec: ModelSpec, dt: float) -> np.ndarray:
    """serve_step(n / dt, c, mu, 0, dt, slo)[1] (engine.py) for counts n and c = 0..width-1, as an
    array (len(n), width): the same arithmetic, vectorised (a test holds it to serve_step)."""
    mu, slo_s = spec.capacity_rps, spec.slo_ms / 1000.0
    lam = n.astype(np.float64) / dt
    arrivals = lam * dt
    out = np.zeros((n.size, width))
    budget = slo_s - 1.0 / mu
    if budget < 0:
        return out
    a = lam / mu
    b = np.ones_like(a)
    for c in range(1, width):
        b = a * b / (c + a * b)  # Erlang B, iteratively (policy/queueing.erlang_c)
        cap = c * mu
        under = lam < cap
        rho = a / c
        ec = np.where(a <= 0, 0.0, np.where(a >= c, 1.0, b / (1.0 - rho + rho * b)))
        slack = cap - lam
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            p_ok = 1.0 - ec * np.exp(-slack * budget)
            within_under = arrivals * np.maximum(0.0, p_ok)
            growth = lam - cap
            on_time = np.where(growth <= 0, 0.0, np.minimum(dt, np.maximum(0.0, budget * cap / growth)))
        out[:, c] = np.where(under, within_under, arrivals * on_time / dt)
    return out


def _log_factorials(n_max: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n_max + 1, dtype=np.float64)))])


def _window(mean: float) -> tuple[int, int]:
    sd = math.sqrt(mean)
    return max(0, math.floor(mean - TAIL_SD * sd - 10)), math.ceil(mean + TAIL_SD * sd + 10)


def table_width(spec: ModelSpec, dt: float, lam_max: float) -> int:
    """Ready counts 0..width-1 in a table of `expected_within` for rates up to lam_max: one past the
    count at which all but 1e-9 of the arrivals of the window's largest count are within the SLO."""
    top_n = _window(lam_max * dt)[1]
    slo_s = spec.slo_ms / 1000.0
    return replicas_for_attainment(top_n / dt, spec.capacity_rps, slo_s, 1.0 - 1e-9) + 2


def expected_within(spec: ModelSpec, dt: float, lams: np.ndarray, width: int) -> np.ndarray:
    """Wbar[i, c] >= E[W(N, c)], N ~ Poisson(lams[i] dt), c = 0..width-1 (the module docstring): exact
    within the window, the tails' largest contribution added, and the last column every arrival."""
    lams = np.asarray(lams, dtype=np.float64)
    out = np.zeros((lams.size, width))
    if lams.size == 0:
        return out
    means = lams * dt
    windows = [_window(x) for x in means.tolist()]
    # The counts of every window (windows of distant rates do not overlap: no grid between them).
    counts = np.unique(np.concatenate([np.arange(lo, hi + 1) for lo, hi in windows]))
    grid = within_grid(counts, width, spec, dt)
    logf = _log_factorials(int(counts[-1]))
    for i, (x, (lo, hi)) in enumerate(zip(means.tolist(), windows, strict=True)):
        n = np.arange(lo, hi + 1)
        pmf = (n == 0).astype(np.float64) if x <= 0 else np.exp(n * math.log(x) - x - logf[lo : hi + 1])
        at = int(np.searchsorted(counts, lo))
        out[i] = pmf @ grid[at : at + n.size]
        # E[N; N > hi] = x P(N >= hi) and E[N; N < lo] <= lo P(N < lo): every such arrival counted.
        outside = max(0.0, 1.0 - float(pmf.sum()))
        out[i] = np.minimum(out[i] + (x + lo) * outside + x * float(pmf[-1]), x)
    out[:, -1] = means
    return out


def expected_table(scenario: Scenario, lam: np.ndarray) -> np.ndarray:
    """Wbar[m, t, c] over the measured steps of rates lam (models x measured steps), c = 0..width-1 with
    one width for all models (a model's columns past its own width are every arrival)."""
    dt = scenario.trace.step_s
    widths = [table_width(spec, dt, float(lam[m].max())) for m, spec in enumerate(scenario.models)]
    width = max(widths)
    out = np.repeat((lam * dt)[:, :, None], width, axis=2)
    for m, spec in enumerate(scenario.models):
        uniq, inv = np.unique(lam[m], return_inverse=True)
        out[m, :, : widths[m]] = expected_within(spec, dt, uniq, widths[m])[inv]
    return out


# --- the bounds --------------------------------------------------------------------------------------


def _measured(scenario: Scenario, curve: RateCurve) -> np.ndarray:
    if curve.lam.shape != scenario.trace.rates.shape:
        raise ValueError("the rate curve and the scenario's trace differ in shape")
    return np.asarray(curve.lam[:, scenario.warmup_steps :], dtype=np.float64)


def rate_oracle_bound(
    scenario: Scenario,
    curve: RateCurve,
    attainment: float,
    min_replicas: int = 1,
    starts: bool = True,
    whole_nodes: bool = False,
) -> float:
    """The rate oracle's bound (J, busy energy of the expected arrivals included): the dual of
    `bound.startup_aware_bound` over the expected within-SLO requests and the expected arrivals
    (without `starts`: of `bound.energy_lower_bound`, no start charged); with `whole_nodes`, the larger
    of that and the dual of `bound.whole_node_bound` (per step, no start charged) on the same tables."""
    lam = _measured(scenario, curve)
    dt = scenario.trace.step_s
    need = attainment * float(lam.sum() * dt)
    table = expected_table(scenario, lam)
    cost = replica_power_w(scenario) * dt
    dedicated = dedicated_minimum(table, min_replicas)
    paths = path_dual(scenario, table, min_replicas) if starts else None

    def dual(y: float) -> float:
        if paths is not None:
            return paths(y) + y * need
        return float(dedicated(y, cost).sum()) + y * need

    value = maximise_dual(dual, cost, 60)
    if whole_nodes:
        fractional, whole = whole_node_dual(scenario, table, min_replicas)
        _, y0 = dual_argmax(lambda y: fractional(y) + y * need, cost, 60)
        value = max(value, node_bound_value(lambda y: whole(y) + y * need, y0, cost, 60))
    return value + busy_joules(scenario, lam)


def expected_foresight_bound(
    scenario: Scenario, curve: RateCurve, attainment: float, min_replicas: int = 1
) -> float:
    """`bound.energy_lower_bound` in the same expectation as the causal bound: the least expected
    energy of any policy that knows each step's count before it sizes the step (so it takes the min over
    c inside the expectation) at expected attainment. By Jensen (E min <= min E) the rate oracle's
    bound without starts is never below it, at every multiplier."""
    lam = _measured(scenario, curve)
    dt = scenario.trace.step_s
    cost = replica_power_w(scenario) * dt
    need = attainment * float(lam.sum() * dt)
    parts: list[tuple[np.ndarray, np.ndarray]] = []  # per (model, rate): the pmf and W[n, c]
    for m, spec in enumerate(scenario.models):
        uniq, n_steps = np.unique(lam[m], return_counts=True)
        width = table_width(spec, dt, float(uniq.max()))
        for x, k in zip((uniq * dt).tolist(), n_steps.tolist(), strict=True):
            lo, hi = _window(x)
            n = np.arange(lo, hi + 1)
            logf = _log_factorials(hi)
            pmf = (n == 0).astype(np.float64) if x <= 0 else np.exp(n * math.log(x) - x - logf[lo:])
            grid = within_grid(n, width, spec, dt)
            grid[:, -1] = n  # past the table every arrival, as in `expected_within`
            parts.append((k * pmf, grid))

    def dual(y: float) -> float:
        total = 0.0
        for weights, grid in parts:
            f = np.arange(grid.shape[1], dtype=np.float64)[None, :] * cost - y * grid
            f[:, : min(min_replicas, grid.shape[1])] = np.inf
            total += float(weights @ f.min(axis=1))
        return total + y * need

    return maximise_dual(dual, cost, 60) + busy_joules(scenario, lam)


def causal_bound(
    scenario: Scenario, curve: RateCurve, attainment: float, min_replicas: int = 1, whole_nodes: bool = False
) -> CausalBound:
    """The least expected energy (J) of any causal policy that keeps `min_replicas` ready replicas per
    model and answers `attainment` of the requests within the SLO in expectation: the rate oracle's
    bound, and on bursty curves the larger of it and the burst-state bound charged ahead; with
    `whole_nodes`, also at least the rate oracle's per-step bound with whole nodes (no start charged)."""
    busy = busy_joules(scenario, _measured(scenario, curve))
    oracle = rate_oracle_bound(scenario, curve, attainment, min_replicas, whole_nodes=whole_nodes)
    burst = (
        None
        if curve.bursts is None
        else burst_state_bound(scenario, curve, attainment, min_replicas, ahead=True)
    )
    total = oracle if burst is None else max(oracle, burst)
    return CausalBound(attainment, total, busy, whole_nodes, oracle, burst)


def causal_sharing_bound(
    scenario: Scenario, curve: RateCurve, attainment: float, min_replicas: int = 0, whole_nodes: bool = False
) -> CausalBound:
    """`bound.sharing_aware_bound` for causal policies (module docstring): policies that may share GPUs;
    `min_replicas` 1: that keep every model at a home (a ready dedicated replica or a shared copy);
    `whole_nodes`: the rate oracle's steps with whole nodes."""
    lam = _measured(scenario, curve)
    dt = scenario.trace.step_s
    price = SharedPrice.of(scenario)
    table = expected_table(scenario, lam)  # (models, steps, width)
    mem = np.array([price.memory_share(spec.memory_gib) for spec in scenario.models])
    loads = lam * price.s
    need = attainment * float(lam.sum() * dt)
    dedicated = dedicated_minimum(table, min_replicas)  # below the floor: shared or not at all

    def dual_at(theta: float) -> Callable[[float], float]:
        def dual(y: float) -> float:
            shared = price.shared(theta, y)(loads) + (1.0 - theta) * price.cost * mem[:, None]
            best = np.minimum(dedicated(y, price.cost), shared)
            return float(best.sum()) + y * need

        return dual

    busy = attainment * busy_joules(scenario, lam)
    values = {theta: dual_argmax(dual_at(theta), price.cost, 60) for theta in THETAS}
    theta = max(values, key=lambda th: values[th][0])
    value, y = values[theta]
    if whole_nodes:
        value = max(value, shared_node_value(scenario, table, loads, theta, y, min_replicas, need))
    oracle = value + busy
    burst = None
    if curve.bursts is not None:
        burst = burst_state_bound(scenario, curve, attainment, min_replicas, price, (theta,), ahead=True)
    total = oracle if burst is None else max(oracle, burst)
    return CausalBound(attainment, total, busy, whole_nodes, oracle, burst)


# --- bursts ------------------------------------------------------------------------------------------

State = tuple[int, ...]


def _survivors(state: State, q: tuple[float, ...]) -> Iterable[tuple[State, float]]:
    """The next step's aged bursts (age class a -> min(a + 1, last)) with their probabilities."""
    last = len(state) - 1
    outcomes: list[tuple[list[int], float]] = [([0] * len(state), 1.0)]
    for a, n in enumerate(state):
        if n == 0:
            continue
        nxt = []
        for counts, p in outcomes:
            for k in range(n + 1):
                pk = math.comb(n, k) * q[a] ** k * (1.0 - q[a]) ** (n - k)
                c = list(counts)
                c[min(a + 1, last)] += k
                nxt.append((c, p * pk))
        outcomes = nxt
    for counts, p in outcomes:
        yield tuple(counts), p


def _advance(dist: dict[tuple[State, int], float], bursts: BurstProcess) -> dict[tuple[State, int], float]:
    """One step of the chain over (state, new bursts so far), new bursts up to ONSET_LIMIT."""
    q = tuple(
        [math.exp(-2.0 / bursts.mean_steps)] + [math.exp(-1.0 / bursts.mean_steps)] * (bursts.classes - 1)
    )
    r = bursts.onsets_per_step
    out: dict[tuple[State, int], float] = {}
    for (state, used), p in dist.items():
        for aged, ps in _survivors(state, q):
            for j in range(ONSET_LIMIT - used + 1):
                pj = math.exp(-r) * r**j / math.factorial(j)
                key = ((j, *aged[1:]), used + j)
                out[key] = out.get(key, 0.0) + p * ps * pj
    return out


@dataclass(frozen=True)
class _Decision:
    """From a state at w - L - 1: the joint probability of each (state at w - 1, path) node and each
    rate multiplier at w, the multipliers, and the bound on the paths with more new bursts."""

    joint: np.ndarray  # (nodes, multipliers)
    mults: np.ndarray  # (multipliers,)
    overflow: float  # E[mult at w; more than ONSET_LIMIT new bursts] bounded above


def _decision(source: State, lead: int, bursts: BurstProcess) -> _Decision:
    dist: dict[tuple[State, int], float] = {(source, 0): 1.0}
    for _ in range(lead):
        dist = _advance(dist, bursts)
    nodes = list(dist)
    children = [_advance({node: dist[node]}, bursts) for node in nodes]
    mults = sorted({bursts.multiplier(s) for ch in children for s, _ in ch})
    index = {v: i for i, v in enumerate(mults)}
    joint = np.zeros((len(nodes), len(mults)))
    for i, ch in enumerate(children):
        for (s, _), p in ch.items():
            joint[i, index[bursts.multiplier(s)]] += p
    # More than ONSET_LIMIT new bursts over the L + 1 steps (P ~ Poisson(rho)): the multiplier at w is at
    # most F^(active + P), and E[F^P; P > k] = e^(rho (F - 1)) P(Poisson(rho F) > k).
    rho, f = bursts.onsets_per_step * (lead + 1), bursts.factor
    head = sum(math.exp(-rho * f) * (rho * f) ** j / math.factorial(j) for j in range(ONSET_LIMIT + 1))
    tail = math.exp(rho * (f - 1.0)) * max(0.0, 1.0 - head)
    return _Decision(joint, np.array(mults), f ** sum(source) * tail)


def burst_state_bound(
    scenario: Scenario,
    curve: RateCurve,
    attainment: float,
    min_replicas: int = 1,
    price: SharedPrice | None = None,
    thetas: tuple[float, ...] = (1.0,),
    ahead: bool = False,
) -> float:
    """The burst-state bound (J, busy energy included; module docstring); with `price`, models may also
    share GPUs at the cost splits `thetas` (`causal_sharing_bound`: then the busy energy of `attainment`
    of the arrivals); `ahead`: each ready replica charged at the tick it had to be resident."""
    dual, arrivals = burst_state_dual(scenario, curve, attainment, min_replicas, price, ahead)
    cost = replica_power_w(scenario) * scenario.trace.step_s

    def at(theta: float) -> Callable[[float], float]:
        return lambda y: dual(y, theta)

    value = max(maximise_dual(at(th), cost, 40) for th in thetas)
    busy = busy_joules(scenario, arrivals[:, None] / scenario.trace.step_s)
    return value + (attainment * busy if price is not None else busy)


def burst_state_dual(
    scenario: Scenario,
    curve: RateCurve,
    attainment: float,
    min_replicas: int = 1,
    price: SharedPrice | None = None,
    ahead: bool = False,
) -> tuple[Callable[[float, float], float], np.ndarray]:
    """(y, theta) -> the sum over the measured steps of h(B_{w-L-1}) + y attainment E[N_w | B_{w-L-1}]
    (module docstring), and each model's expected arrivals, sum_w E[N_w | B_{w-L-1}] (a lower bound:
    the paths with more than ONSET_LIMIT new bursts left out). `ahead`: the replicas that may be ready
    at w are charged at the tick of w - L, where they had to be resident (a shared GPU at w itself)."""
    bursts = curve.bursts
    if bursts is None:
        raise ValueError("the burst-state bound needs the bursty shape's burst process")
    _measured(scenario, curve)
    dt, warm = scenario.trace.step_s, scenario.warmup_steps
    n_steps = scenario.trace.n_steps
    power = replica_power_w(scenario)
    cost = power * dt
    leads = {math.ceil(spec.cold_start_s / dt - 1e-9) for spec in scenario.models}
    if len(leads) != 1:
        raise ValueError("the burst-state bound assumes one cold start for all models")
    lead = leads.pop()
    # Per model, how often each state is the one known at the decision (B at w - L - 1; empty before 0),
    # and whether the decision is charged ahead (`ahead`: at w - L, in the measured window).
    counts: list[dict[tuple[State, bool], int]] = []
    for m in range(len(scenario.models)):
        seen: dict[tuple[State, bool], int] = {}
        for w in range(warm, n_steps):
            t = w - lead - 1
            s = bursts.state(m, t) if t >= 0 else (0,) * bursts.classes
            key = (s, ahead and w - lead >= warm)
            seen[key] = seen.get(key, 0) + 1
        counts.append(seen)
    decisions = {s: _decision(s, lead, bursts) for seen in counts for s, _ in seen}
    # Per model: the expected within-SLO table at each multiplier any decision reaches.
    all_mults = np.array(sorted({float(v) for d in decisions.values() for v in d.mults}))
    tables: list[np.ndarray] = []
    for m, spec in enumerate(scenario.models):
        # Up to one full burst more than the curve ever reaches; past the table's last count every
        # arrival counts as within the SLO (an upper bound: the bound stays valid, a little looser).
        width = table_width(spec, dt, float(curve.lam[m].max()) * bursts.factor)
        tables.append(expected_within(spec, dt, bursts.base[m] * all_mults, width))
    where = {v: i for i, v in enumerate(all_mults.tolist())}
    cols = {s: np.array([where[float(v)] for v in d.mults]) for s, d in decisions.items()}
    # E[N_w | B_{w-L-1} = s] / base, per decision state.
    mean_mult = {s: float(d.joint.sum(axis=0) @ d.mults) for s, d in decisions.items()}
    arrivals = np.array(
        [
            float(bursts.base[m]) * dt * sum(n * mean_mult[s] for (s, _), n in counts[m].items())
            for m in range(len(scenario.models))
        ]
    )
    mem = (
        np.array([price.memory_share(spec.memory_gib) for spec in scenario.models])
        if price is not None
        else None
    )

    def dual(y: float, theta: float) -> float:
        share = None if price is None else price.shared(theta, y)
        total = 0.0
        for m, table in enumerate(tables):
            width = table.shape[1]
            held = np.arange(width, dtype=np.float64) * cost
            # (multipliers, c): a ready replica's cost at w, or (ahead) none: U is charged instead.
            f = (0.0 if ahead else held[None, :]) - y * table
            base = float(bursts.base[m])
            for (s, charged), n in counts[m].items():
                d = decisions[s]
                phi = d.joint @ f[cols[s]]  # (nodes, c): P(node) E[f | node]
                phi[:, : min(min_replicas, width)] = np.inf
                phi = np.minimum.accumulate(phi, axis=1)  # the best c <= U
                if price is not None and mem is not None and share is not None:
                    priced = d.joint @ share(d.mults * base * price.s)
                    shared = priced + (1.0 - theta) * cost * float(mem[m]) * d.joint.sum(axis=1)
                    phi = np.minimum(phi, shared[:, None])
                # Charged ahead, U costs on every path, those past ONSET_LIMIT included.
                h = float((phi.sum(axis=0) + (held if charged else 0.0)).min()) - y * base * dt * d.overflow
                total += n * h
        return total + y * attainment * float(arrivals.sum())

    return dual, arrivals
