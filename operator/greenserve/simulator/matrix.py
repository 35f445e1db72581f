"""The matched-SLO benchmark over a scenario matrix (SIMULATED energy).

A single run compares policies at whatever SLO attainment each happens to reach, so a policy can look
green by answering fewer requests in time. Here every policy is swept over its own knob and read off its
energy-attainment frontier: at a level A (99%, 99.5%, 99.9%), the least energy of any of its settings that
answered at least A of the requests within the SLO (`frontier_energy`).

Scenarios (`scenarios`), all generated from a seed (reproducible) except the Azure shapes, which replay the
Azure LLM inference traces' aggregate arrival curve:

* service classes: 5 ms (SLO 50 ms), 100 ms (SLO 500 ms), 2 s (SLO 10 s) per request, one GPU per replica;
  cold starts 30 / 60 / 120 s;
* fleets of 8, 50 and 200 models with Zipf popularity (exponent 1; 2 for long-tail), mean per-model rates
  clipped to 0.01-500 req/s, the most popular model's mean `top_rps` of its class;
* shapes: azure-code and azure-conv (the trace's hour, binned at 10 s and stretched to a day as
  `greenserve bench` does, each model from a random point of it), diurnal (a day compressed into the
  run, 6:1 peak to trough, phase jittered per model, minute-scale noise), bursty (3 bursts an hour per
  model to x3 the rate, rising over 2 minutes, 5 minutes long on average) and
  long-tail (steep Zipf: most models well under 1 req/s); Poisson counts per step on top of every shape.

Knobs: HPA-like's target utilization (0.9 down to 0.1, in steps of 0.025 from 0.7 down), Knative-like's
target utilization (0.7 to 0.3), and greenserve's two-part knob, along five paths: its fleet attainment
target with the quantile of its rise headroom equal to it (0.8 to 0.999, as Balanced and PowerSaving
run); the quantile on its own (0 to 0.999; at 0 the headroom is the least rise the model has shown) with
the fleet target at 0.5, where the p95 guard sizes each model for the rate it sees; and the fleet targets
0.97 to 0.999 with a low headroom (quantiles 0, 0.25 and 0.5, a path each), where the fleet objective
buys the attainment above the guard's (`GREENSERVE_PATHS`).

Each knob is a set of paths along which replicas, and so attainment and energy, rise. A path's runs are
found by a search (`frontier_search`) rather than run whole: bisection for the first setting at 99%,
then every setting up to the first at 99.9%, and one more past each end. On the full sweep of the 27
scenarios at 455de2d it finds every frontier point the full sweep found, with 63% of its runs; the
"best SLO" columns are the highest attainment among the settings run. Each frontier point also counts
the models whose own p95 is over the SLO (over 5% of their requests late), which a fleet's attainment
can hide.

The bound (`simulator/bound.py`) gives the least energy any policy can use at 99.5%, and the least any
policy that keeps a replica per model can use (`min_replicas=1`); both know every step's count ahead.
The causal bound (`simulator/causal_bound.py`) gives the least expected energy of the policies that do
not: it reads the scenario's rate curve before the Poisson counts (`rate_curve`) and, on the bursty
shape, its burst process.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import numpy as np

from greenserve.policy.energy import joules_to_kwh
from greenserve.simulator import traces
from greenserve.simulator.bound import (
    energy_lower_bound,
    sharing_aware_bound,
    startup_aware_bound,
    whole_node_bound,
)
from greenserve.simulator.causal_bound import BurstProcess, RateCurve, causal_bound, causal_sharing_bound
from greenserve.simulator.cluster import ClusterConfig
from greenserve.simulator.engine import ModelSpec, Result, Scenario, Simulation
from greenserve.simulator.policies import Greenserve, HpaLike, KnativeLike
from greenserve.simulator.sharing import GreenserveShared

J = TypeVar("J")
R = TypeVar("R")

LEVELS = (0.99, 0.995, 0.999)
MATCH_LEVEL = 0.995
SHAPES = ("azure-code", "azure-conv", "diurnal", "bursty", "long-tail")
FLEETS = (8, 50, 200)


@dataclass(frozen=True)
class ServiceClass:
    name: str
    service_time_s: float
    slo_s: float
    cold_start_s: float
    top_rps: float  # mean rate of a fleet's most popular model

    @property
    def capacity_rps(self) -> float:
        return 1.0 / self.service_time_s


SERVICE_CLASSES = {
    c.name: c
    for c in (
        ServiceClass("5ms", 0.005, 0.05, 30.0, 500.0),
        ServiceClass("100ms", 0.1, 0.5, 60.0, 100.0),
        ServiceClass("2s", 2.0, 10.0, 120.0, 5.0),
    )
}
MIN_RPS, MAX_RPS = 0.01, 500.0
MEMORY_GIB = (0.5, 8.0)
AZURE_STRETCH = 24.0
# Bursts: 3 an hour per model, x3 the rate, rising over 2 minutes, 5 minutes long on average.
BURSTS_PER_H, BURST_FACTOR, BURST_RAMP_S, BURST_S = 3.0, 3.0, 120.0, 300.0


@dataclass(frozen=True, order=True)
class ScenarioKey:
    shape: str
    service: str
    fleet: int

    @property
    def name(self) -> str:
        return f"{self.shape}/{self.service}/{self.fleet}"

    @classmethod
    def parse(cls, name: str) -> ScenarioKey:
        """`shape/service/fleet`, e.g. azure-conv/100ms/8 (any fleet size of at least one model)."""
        parts = name.split("/")
        if len(parts) != 3 or parts[0] not in SHAPES or parts[1] not in SERVICE_CLASSES:
            raise ValueError(
                f"scenario {name!r}: expected SHAPE/SERVICE/FLEET with SHAPE one of {', '.join(SHAPES)} "
                f"and SERVICE one of {', '.join(SERVICE_CLASSES)}"
            )
        try:
            fleet = int(parts[2])
        except ValueError:
            fleet = 0
        if fleet < 1:
            raise ValueError(f"scenario {name!r}: the fleet size must be a positive integer")
        return cls(parts[0], parts[1], fleet)


@dataclass(frozen=True)
class MatrixConfig:
    hours: float = 2.0  # measured
    warmup_h: float = 0.5  # run, not measured
    step_s: float = 30.0
    seed: int = 0
    workers: int = 2
    traces_dir: Path | None = None

    @classmethod
    def quick(cls) -> MatrixConfig:
        return cls(hours=1.0, warmup_h=0.25, step_s=30.0)


def zipf_rates(n: int, top_rps: float, exponent: float) -> np.ndarray:
    """Mean rates of `n` models with Zipf popularity, the first at `top_rps`, clipped to 0.01-500 req/s."""
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return np.clip(top_rps * ranks**-exponent, MIN_RPS, MAX_RPS)


@lru_cache(maxsize=4)
def _azure_curve(shape: str, traces_dir: Path) -> np.ndarray:
    """The trace's aggregate arrival rate in 10 s bins over its hour, normalised to mean 1."""
    path = traces.resolve_trace_file(traces_dir / traces.AZURE_FILES[shape])
    if not path.is_file():
        raise FileNotFoundError(f"trace {path} not found (pass --traces DIR)")
    t = traces.read_azure_timestamps(path)
    counts = np.bincount((t // 10.0).astype(np.int64)).astype(np.float64)
    return np.asarray(counts / counts.mean(), dtype=np.float64)


def _burst_events(
    n: int, n_steps: int, step_s: float, rng: np.random.Generator
) -> list[list[tuple[int, int]]]:
    """Per model, its bursts as (first step, length in steps): a Poisson number over the run, each at a
    uniform step (so new bursts per model and step are Poisson, BURSTS_PER_H x step / 3600 on average),
    of length max(1, floor(Exp(BURST_S) / step))."""
    hours = n_steps * step_s / 3600.0
    return [
        [
            (int(rng.integers(0, n_steps)), max(1, int(rng.exponential(BURST_S) / step_s)))
            for _ in range(rng.poisson(BURSTS_PER_H * hours))
        ]
        for _ in range(n)
    ]


def _shape(
    key: ScenarioKey, n_steps: int, step_s: float, rng: np.random.Generator, cfg: MatrixConfig
) -> tuple[np.ndarray, list[list[tuple[int, int]]] | None]:
    """Per-model multipliers of the mean rate, shape (fleet, steps), mean about 1; and for the bursty
    shape, its bursts (`_burst_events`)."""
    n = key.fleet
    t = np.arange(n_steps) * step_s
    if key.shape in traces.AZURE_FILES:
        curve = _azure_curve(key.shape, cfg.traces_dir or traces.default_traces_dir())
        # The hour stretched to a day (x24, as `greenserve bench` does); each model starts at a random
        # point of that day, as independent tenants of the same kind of traffic.
        pos = t / (AZURE_STRETCH * 10.0)
        shift = rng.uniform(0, curve.size, n)
        idx = ((pos[None, :] + shift[:, None]).astype(np.int64)) % curve.size
        return curve[idx], None
    if key.shape == "bursty":
        out = np.ones((n, n_steps))
        ramp = np.minimum(1.0, np.arange(n_steps) * step_s / BURST_RAMP_S)
        events = _burst_events(n, n_steps, step_s, rng)
        for m, bursts in enumerate(events):
            for start, length in bursts:
                rise = ramp[: min(length, n_steps - start)]
                out[m, start : start + rise.size] *= 1.0 + (BURST_FACTOR - 1.0) * rise
        return out, events
    # diurnal and long-tail: a compressed day, 6:1 peak to trough (long-tail: 2:1), minute-scale noise
    ratio = 6.0 if key.shape == "diurnal" else 2.0
    amp = (ratio - 1.0) / (ratio + 1.0)
    period = n_steps * step_s
    phase = rng.uniform(-1.0, 1.0, n) * period / 12.0
    day = 1.0 + amp * np.sin(2 * np.pi * (t[None, :] - phase[:, None]) / period)
    decay = math.exp(-step_s / 600.0)
    eps = rng.normal(0.0, 0.1 * math.sqrt(1 - decay**2), (n, n_steps))
    noise = np.zeros((n, n_steps))
    for k in range(1, n_steps):
        noise[:, k] = decay * noise[:, k - 1] + eps[:, k]
    return day * np.exp(noise), None


@lru_cache(maxsize=4)
def rate_curve(key: ScenarioKey, cfg: MatrixConfig) -> RateCurve:
    """The scenario's expected rates before its Poisson counts (what a rate oracle knows: the causal
    bound's relaxation, simulator/causal_bound.py), and for the bursty shape its burst process."""
    return _generate(key, cfg)[0]


def _generate(key: ScenarioKey, cfg: MatrixConfig) -> tuple[RateCurve, np.ndarray]:
    """The rate curve and the Poisson counts per step (req/s), from the scenario's seed."""
    svc = SERVICE_CLASSES[key.service]
    step = cfg.step_s
    warm = round(cfg.warmup_h * 3600 / step)
    n_steps = warm + round(cfg.hours * 3600 / step)
    rng = np.random.default_rng(
        [cfg.seed, SHAPES.index(key.shape), key.fleet, int(svc.service_time_s * 1000)]
    )
    exponent = 2.0 if key.shape == "long-tail" else 1.0
    mean = zipf_rates(key.fleet, svc.top_rps, exponent)
    shape, events = _shape(key, n_steps, step, rng, cfg)
    lam = mean[:, None] * shape
    rates = rng.poisson(lam * step) / step
    bursts = (
        None
        if events is None
        else BurstProcess(
            base=mean,
            events=tuple(tuple(b) for b in events),
            onsets_per_step=BURSTS_PER_H * step / 3600.0,
            mean_steps=BURST_S / step,
            ramp_steps=BURST_RAMP_S / step,
            factor=BURST_FACTOR,
        )
    )
    return RateCurve(lam, bursts), rates


@lru_cache(maxsize=4)
def make_scenario(key: ScenarioKey, cfg: MatrixConfig) -> Scenario:
    svc = SERVICE_CLASSES[key.service]
    step = cfg.step_s
    warm = round(cfg.warmup_h * 3600 / step)
    rates = _generate(key, cfg)[1]
    trace = traces.Trace(key.name, step, rates.astype(np.float64))
    # GPU memory per model (what a shared GPU packs): log-uniform 0.5-8 GiB, from its own generator so
    # that the traces are those of the scenario without it.
    mem_rng = np.random.default_rng([cfg.seed, SHAPES.index(key.shape), key.fleet, 7])
    memory = np.exp(mem_rng.uniform(math.log(MEMORY_GIB[0]), math.log(MEMORY_GIB[1]), key.fleet))
    models = tuple(
        ModelSpec(
            f"m{i}", svc.capacity_rps, svc.cold_start_s, svc.slo_s * 1000.0, memory_gib=float(memory[i])
        )
        for i in range(key.fleet)
    )
    return Scenario(trace, models, ClusterConfig(), 30.0, warm)


# --- knobs and runs ----------------------------------------------------------------------------------

# The paths are the module docstring's. Each is fine enough around the 99-99.9% frontier that no level is
# read off a setting far from it: HPA-like in steps of 0.025 from 0.7 down, where it reaches 99-99.9% (on
# the bursty fleets at 0.3-0.15, where steps of 0.1 differed by up to 30% in energy; 0.05 until greenserve's
# third paths grew, so that neither policy's frontier gains from a denser choice of settings); greenserve's
# quantile path finer over 0.85-0.93, where the fleet's bursts enter the quantile, and over 0.97-0.999,
# where its attainment stepped by up to 0.7 points. greenserve's realised attainment runs well above its
# target (the stabilisation window and the headroom keep replicas that the sizing alone would not), hence
# the low end of its targets.
HPA_TARGETS = (0.9, 0.8, *(round(0.7 - 0.025 * i, 3) for i in range(17)))
HPA_LOW_TARGETS = tuple(round(0.275 - 0.025 * i, 3) for i in range(8))
KNATIVE_TARGETS = (0.7, 0.5, 0.3)
GREENSERVE_TARGETS = (0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)
GREENSERVE_FLOOR_TARGET = 0.5
# fmt: off
GREENSERVE_QUANTILES = (0.0, 0.25, 0.5, 0.8, 0.85, 0.88, 0.9, 0.91, 0.92, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995,
                        0.999)
# fmt: on
# The third set of paths: the fleet objective at its targets with a low rise headroom (none, a quarter's,
# the median's). The first path ties the headroom's quantile to the target, so a high target also buys
# every model its largest headroom, and the second has the objective off (the guard binds at 0.5); here
# the price per late request mostly decides where the replicas above the guard's go. Since a headroom
# replica is held only where the rises fill enough of it (a9bf06f), the second path no longer gives the
# small models at the guard a second replica, and only the objective does: its targets reach 0.999.
GREENSERVE_FLEET_TARGETS = (0.97, 0.99, 0.995, 0.999)
GREENSERVE_LOW_QUANTILES = (0.0, 0.25, 0.5)
# (knob, rise quantile): None where the policy has no second part or it equals the knob.
Setting = tuple[float, float | None]
# Each path is ordered from the fewest replicas to the most, so that attainment rises along it (the
# search below relies on that, and checks one setting past each end).
Path_ = tuple[Setting, ...]
GREENSERVE_PATHS: tuple[Path_, ...] = (
    tuple((t, None) for t in GREENSERVE_TARGETS),
    tuple((GREENSERVE_FLOOR_TARGET, q) for q in GREENSERVE_QUANTILES),
    *(tuple((t, q) for t in GREENSERVE_FLEET_TARGETS) for q in GREENSERVE_LOW_QUANTILES),
)
GREENSERVE_SETTINGS: tuple[Setting, ...] = tuple(s for path in GREENSERVE_PATHS for s in path)
QUICK_KNOBS: dict[str, tuple[Setting, ...]] = {
    "hpa": tuple((t, None) for t in (0.9, 0.7, 0.5, 0.3)),
    "knative": tuple((t, None) for t in (0.7, 0.4)),
    "greenserve": tuple((t, None) for t in (0.9, 0.95, 0.99, 0.999)),
    "greenserve-shared": tuple((t, None) for t in (0.9, 0.95, 0.99, 0.999)),
}
# greenserve with shared GPUs (simulator/sharing.py) sweeps greenserve's two-part knob (GREENSERVE_SETTINGS):
# it is greenserve with a placement on top, so the same settings; the headroom's quantile (the target on
# the first path) also sets a shared GPU's saturation cap, never below the p95 guard's.
POLICIES = ("hpa", "knative", "greenserve", "greenserve-shared")


def make_policy(
    policy: str, knob: float, rise_quantile: float | None = None
) -> HpaLike | KnativeLike | Greenserve:
    if policy == "greenserve-shared":
        return GreenserveShared(slo_attainment=knob, rise_quantile=rise_quantile)
    if policy == "hpa":
        return HpaLike(knob)
    if policy == "knative":
        return KnativeLike(target_utilization=knob)
    if policy == "greenserve":
        return Greenserve(slo_attainment=knob, rise_quantile=rise_quantile)
    raise ValueError(f"unknown policy {policy!r}")


@dataclass(frozen=True)
class Point:
    """One run: a policy at one knob setting on one scenario."""

    scenario: str
    policy: str
    knob: float
    attainment: float
    energy_j: float
    gpu_hours: float
    cpu_s: float  # CPU time of the run (scenario generation included when it was not cached)
    rise_quantile: float | None = None  # greenserve's headroom quantile where it is not the knob
    # Models with more than 5% of their requests outside the SLO (`Result.models_late`): a fleet's
    # attainment can hide a model whose own p95 is over it. None in runs saved before it was kept.
    models_late: int | None = None


Job = tuple[ScenarioKey, MatrixConfig, str, float, float | None]
BoundRow = tuple[str, float, float, float, float, float, float]


def _run(job: Job) -> Point:
    key, cfg, policy, knob, quantile = job
    start = time.process_time()
    res: Result = Simulation(make_scenario(key, cfg)).run(make_policy(policy, knob, quantile))
    cpu = time.process_time() - start
    return Point(
        key.name,
        policy,
        knob,
        res.slo_attainment,
        res.total_j,
        res.gpu_hours,
        cpu,
        quantile,
        res.models_late(),
    )


def _bound(job: tuple[ScenarioKey, MatrixConfig]) -> BoundRow:
    """The scenario's bounds at 99.5%: for any policy; for those that keep a replica per model (every
    compared policy but Knative-like; greenserve keeps one for a model with traffic); and for those,
    with every start's cold start charged (`bound.startup_aware_bound`); and for the policies that may
    also share GPUs and keep every model at a home, a dedicated replica or a shared copy
    (`bound.sharing_aware_bound`, `min_replicas=1`: greenserve-shared keeps one for every model at
    minReplicas 1). Then the last two without foresight (`causal_bound.causal_bound`,
    `causal_bound.causal_sharing_bound`). Nodes are whole in every one (`bound.whole_node_bound`, the
    `whole_nodes` of the others) but the start-charged paths, whose tight bound is the larger of the two."""
    key, cfg = job
    sc = make_scenario(key, cfg)
    curve = rate_curve(key, cfg)
    # Every bound takes nodes whole where its relaxation is step by step (bound.whole_node_steps): a
    # node is bought whole, and the GPUs a fleet leaves bare on it draw power.
    floored = max(
        energy_lower_bound(sc, MATCH_LEVEL, min_replicas=1).total_j,
        whole_node_bound(sc, MATCH_LEVEL, min_replicas=1).total_j,
    )
    return (
        key.name,
        max(energy_lower_bound(sc, MATCH_LEVEL).total_j, whole_node_bound(sc, MATCH_LEVEL).total_j),
        floored,
        max(startup_aware_bound(sc, MATCH_LEVEL, min_replicas=1).total_j, floored),
        sharing_aware_bound(sc, MATCH_LEVEL, min_replicas=1, whole_nodes=True).total_j,
        causal_bound(sc, curve, MATCH_LEVEL, min_replicas=1, whole_nodes=True).total_j,
        causal_sharing_bound(sc, curve, MATCH_LEVEL, min_replicas=1, whole_nodes=True).total_j,
    )


def frontier_energy(points: Iterable[Point], level: float) -> Point | None:
    """The least-energy point that reached at least `level` (None if no setting did): the frontier at
    `level`. Its energy is non-decreasing in `level` (a setting that reaches a level reaches every lower)."""
    ok = [p for p in points if p.attainment >= level - 1e-12]
    return min(ok, key=lambda p: (p.energy_j, -p.attainment)) if ok else None


def scenarios(quick: bool = False) -> list[ScenarioKey]:
    """The matrix: every shape x service class on the 50-model fleet, and every shape on 8 and 200 models
    at 100 ms (quick: one scenario per service class and shape family on 8 models)."""
    if quick:
        return [
            ScenarioKey("diurnal", "100ms", 8),
            ScenarioKey("bursty", "5ms", 8),
            ScenarioKey("long-tail", "2s", 8),
        ]
    keys = {ScenarioKey(s, c, 50) for s in SHAPES for c in SERVICE_CLASSES}
    keys |= {ScenarioKey(s, "100ms", f) for s in SHAPES for f in (8, 200)}
    keys |= {ScenarioKey("long-tail", "2s", f) for f in (8, 200)}
    return sorted(keys, key=lambda k: (k.fleet, k.service, k.shape))


@dataclass
class MatrixResult:
    points: list[Point]
    bounds: dict[str, float]
    keys: list[ScenarioKey]
    wall_s: float
    floored: dict[str, float] = field(default_factory=dict)  # the bound with a replica per model
    startup: dict[str, float] = field(default_factory=dict)  # ... and every start's cold start charged
    sharing: dict[str, float] = field(default_factory=dict)  # policies that share GPUs, every model at home
    causal: dict[str, float] = field(default_factory=dict)  # `startup` without foresight
    causal_sharing: dict[str, float] = field(default_factory=dict)  # `sharing` without foresight

    def of(self, scenario: str, policy: str) -> list[Point]:
        return [p for p in self.points if p.scenario == scenario and p.policy == policy]


def _pool_map(fn: Callable[[J], R], jobs: Sequence[J], workers: int) -> list[R]:
    """`fn` over `jobs`, in `workers` processes (at most 2: CI's cores)."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(fn, jobs, chunksize=1))


def paths(quick: bool = False) -> dict[str, tuple[Path_, ...]]:
    """Each policy's settings as paths along which attainment rises (`frontier_search`)."""
    if quick:
        return {p: (vs,) for p, vs in QUICK_KNOBS.items()}
    return {
        "hpa": (tuple((t, None) for t in HPA_TARGETS + HPA_LOW_TARGETS),),
        "knative": (tuple((t, None) for t in KNATIVE_TARGETS),),
        "greenserve": GREENSERVE_PATHS,
        "greenserve-shared": GREENSERVE_PATHS,
    }


def sweep(quick: bool = False) -> dict[str, tuple[Setting, ...]]:
    """Each policy's settings, every path's together (the search runs those it needs)."""
    return {p: tuple(s for path in ps for s in path) for p, ps in paths(quick).items()}


# Settings run past each end of the levels' range on a path: a path's attainment and energy mostly rise
# along it, not always. Replayed on 455de2d's full sweep (README), a margin of 0 missed one frontier
# point of 324 (a cheaper setting just past the first at 99.9%) and a margin of 1 none.
SEARCH_MARGIN = 1


def frontier_search(
    n: int, low: float = LEVELS[0], high: float = LEVELS[-1], margin: int = SEARCH_MARGIN
) -> Generator[int, float, None]:
    """Which of a path's `n` settings to run, one at a time: it yields a setting's index and is sent its
    attainment. The frontier at every level from `low` to `high` lies between the first setting that
    reaches `low` (found by bisection, as attainment rises along a path) and the first that reaches
    `high`: every setting between the two is run, and `margin` more beyond each end. On a path whose
    attainment and energy both rise, the settings below and above would only be short of `low` or
    dearer; the `margin` settings catch a step back next to either end. On the matrix, 63% of a full
    sweep's runs."""
    seen: dict[int, float] = {}
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        seen[mid] = yield mid
        if seen[mid] >= low - 1e-12:
            hi = mid
        else:
            lo = mid + 1
    for i in range(max(0, lo - margin), lo):
        if i not in seen:
            seen[i] = yield i
    past = 0
    for i in range(lo, n):
        if past > margin:
            break
        if i not in seen:
            seen[i] = yield i
        if past or seen[i] >= high - 1e-12:
            past += 1


def run_matrix(
    keys: Sequence[ScenarioKey],
    cfg: MatrixConfig,
    *,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
) -> MatrixResult:
    """Every path's `frontier_search` and every scenario's bounds, on one pool of `cfg.workers` processes
    (at most 2: CI's cores). The searches of all scenarios run side by side, so the pool stays full;
    the largest fleets go first, as their runs and bounds are the longest."""
    start = time.perf_counter()
    workers = max(1, min(cfg.workers, os.cpu_count() or 1, 2))
    rank = {k.name: r for r, k in enumerate(sorted(keys, key=lambda k: -k.fleet))}
    searches: list[tuple[ScenarioKey, str, Path_, Generator[int, float, None]]] = []
    # (rank, order, search, setting, scenario): a search of -1 is the scenario's bounds.
    queue: list[tuple[int, int, int, int, ScenarioKey]] = []
    seq = itertools.count()
    for key in keys:
        heapq.heappush(queue, (rank[key.name], next(seq), -1, -1, key))
        for policy, ps in paths(quick).items():
            for path in ps:
                searches.append((key, policy, path, frontier_search(len(path))))
                heapq.heappush(
                    queue, (rank[key.name], next(seq), len(searches) - 1, next(searches[-1][3]), key)
                )

    points: list[Point] = []
    found: list[BoundRow] = []

    def job(search: int, index: int) -> Job:
        key, policy, path, _ = searches[search]
        return (key, cfg, policy, *path[index])

    def record(search: int, point: Point) -> None:
        points.append(point)
        try:
            index = searches[search][3].send(point.attainment)
        except StopIteration:
            return
        key = searches[search][0]
        heapq.heappush(queue, (rank[key.name], next(seq), search, index, key))

    if workers <= 1:
        while queue:
            _, _, search, index, key = heapq.heappop(queue)
            if search < 0:
                found.append(_bound((key, cfg)))
            else:
                record(search, _run(job(search, index)))
    else:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            running: dict[Future[Point | BoundRow], int] = {}  # -> its search (-1: bounds)
            while queue or running:
                # A short queue of submitted work, so that the ranks decide what runs next.
                while queue and len(running) < 2 * workers:
                    _, _, search, index, key = heapq.heappop(queue)
                    fut: Future[Point | BoundRow] = (
                        ex.submit(_bound, (key, cfg)) if search < 0 else ex.submit(_run, job(search, index))
                    )
                    running[fut] = search
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    search, out = running.pop(f), f.result()
                    if isinstance(out, Point):
                        record(search, out)
                    else:
                        found.append(out)
    where, order = {k.name: i for i, k in enumerate(keys)}, {p: i for i, p in enumerate(POLICIES)}
    points.sort(
        key=lambda p: (
            where[p.scenario],
            order[p.policy],
            p.knob,
            -1.0 if p.rise_quantile is None else p.rise_quantile,
        )
    )
    if progress:
        cpu = sum(p.cpu_s for p in points)
        progress(
            f"{len(points)} runs and the bounds in {time.perf_counter() - start:.0f} s "
            f"({cpu:.0f} s CPU in the runs)"
        )
    return _result(points, keys, found, start)


def with_bounds(
    points: list[Point], keys: Sequence[ScenarioKey], cfg: MatrixConfig, start: float, workers: int
) -> MatrixResult:
    """The runs with every scenario's bounds (`_bound`), computed in `workers` processes."""
    return _result(points, keys, _pool_map(_bound, [(k, cfg) for k in keys], workers), start)


def _result(
    points: list[Point], keys: Sequence[ScenarioKey], found: Sequence[BoundRow], start: float
) -> MatrixResult:
    by = {f[0]: f[1:] for f in found}
    return MatrixResult(
        points,
        {n: b[0] for n, b in by.items()},
        list(keys),
        time.perf_counter() - start,
        {n: b[1] for n, b in by.items()},
        {n: b[2] for n, b in by.items()},
        {n: b[3] for n, b in by.items()},
        {n: b[4] for n, b in by.items()},
        {n: b[5] for n, b in by.items()},
    )


# --- report ------------------------------------------------------------------------------------------


def _fmt_ratio(a: Point | None, b: Point | None, attr: str = "energy_j") -> str:
    if a is None or b is None:
        return "-"
    return f"{getattr(a, attr) / getattr(b, attr):.2f}"


@dataclass(frozen=True)
class Row:
    """One scenario's comparison at matched attainment (frontier points, None where none reached it)."""

    scenario: str
    best: dict[str, float]  # highest attainment reached per policy
    at: dict[tuple[str, float], Point | None]  # (policy, level) -> frontier point
    bound_j: float | None
    floored_j: float | None = None  # the bound of policies that keep a replica per model
    startup_j: float | None = None  # ... with every start's cold start charged
    sharing_j: float | None = None  # the bound of policies that may share GPUs
    causal_j: float | None = None  # startup_j without foresight
    causal_sharing_j: float | None = None  # sharing_j without foresight

    def late(self, *policies: str) -> str:
        """Each policy's models over 5% late at its 99.5% point ('-' where it has none or runs saved
        before the count was kept), joined by ' / '."""
        found = [self.at.get((p, MATCH_LEVEL)) for p in policies]
        return " / ".join("-" if p is None or p.models_late is None else str(p.models_late) for p in found)

    def ratio(self, policy: str, level: float, attr: str = "energy_j", vs: str = "hpa") -> float | None:
        a, b = self.at.get((policy, level)), self.at.get((vs, level))
        return None if a is None or b is None else float(getattr(a, attr) / getattr(b, attr))

    def vs_bound(self, which: str = "bound", policy: str = "greenserve") -> float | None:
        """A policy's energy at matched 99.5% over a bound (`bound`, `floored`, `startup`, `sharing`,
        `causal`, `causal_sharing`); policy "any" is the least of HPA-like's and greenserve's (the
        compared policies that keep a replica per model), "any-shared" the least of every compared
        policy. None where it did not reach 99.5%."""
        b = {
            "bound": self.bound_j,
            "floored": self.floored_j,
            "startup": self.startup_j,
            "sharing": self.sharing_j,
            "causal": self.causal_j,
            "causal_sharing": self.causal_sharing_j,
        }[which]
        names = {"any": ("hpa", "greenserve"), "any-shared": POLICIES}.get(policy, (policy,))
        found = [p for name in names if (p := self.at.get((name, MATCH_LEVEL))) is not None]
        return None if not found or not b else min(p.energy_j for p in found) / b


def rows(result: MatrixResult) -> list[Row]:
    out = []
    for key in result.keys:
        at: dict[tuple[str, float], Point | None] = {}
        best: dict[str, float] = {}
        for policy in POLICIES:
            pts = result.of(key.name, policy)
            best[policy] = max((p.attainment for p in pts), default=0.0)
            for level in LEVELS:
                at[(policy, level)] = frontier_energy(pts, level)
        out.append(
            Row(
                key.name,
                best,
                at,
                result.bounds.get(key.name),
                result.floored.get(key.name),
                result.startup.get(key.name),
                result.sharing.get(key.name),
                result.causal.get(key.name),
                result.causal_sharing.get(key.name),
            )
        )
    return out


def _cells(r: Row) -> list[str]:
    best = " / ".join(f"{100 * r.best[p]:.2f}" for p in ("hpa", "knative", "greenserve"))
    ratios = [_fmt_ratio(r.at[("greenserve", lv)], r.at[("hpa", lv)]) for lv in LEVELS]
    at, hpa = r.at[("greenserve", MATCH_LEVEL)], r.at[("hpa", MATCH_LEVEL)]
    bounds = [
        r.vs_bound(),
        r.vs_bound("startup"),
        r.vs_bound("startup", "any"),
        _over(r.causal_j, r.startup_j),
        r.vs_bound("causal"),
        r.vs_bound("causal", "any"),
    ]
    return [
        r.scenario,
        best,
        *ratios,
        _fmt_ratio(at, hpa, "gpu_hours"),
        r.late("hpa", "greenserve"),
        _fmt_ratio(r.at[("knative", MATCH_LEVEL)], hpa),
        *("-" if b is None else f"{b:.2f}" for b in bounds),
    ]


def _over(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


HEAD = (
    "scenario",
    "best SLO % hpa/kn/gs",
    "E gs/hpa @99%",
    "@99.5%",
    "@99.9%",
    "GPU-h gs/hpa @99.5%",
    "models >5% late hpa/gs",
    "E kn/hpa @99.5%",
    "gs/bound @99.5%",
    "gs/tight bound",
    "best/tight bound",
    "causal/tight bound",
    "gs/causal bound",
    "best/causal bound",
)
NOTE = (
    "Energy is SIMULATED (power model of policy/energy.py), not measured. Ratios at matched SLO "
    "attainment: each policy's least energy over its knob settings that reached the level. "
    "bound: any policy; tight bound: policies that keep a replica per model, every start's cold start "
    "charged or nodes whole (both with foresight; nodes whole in every bound step by step); causal "
    "bound: the tight bound's policies without foresight "
    "(simulator/causal_bound.py: expected energy at expected attainment); best: the less of HPA-like's "
    "and greenserve's energy at 99.5%; models >5% late: models whose own p95 is over the SLO at each "
    "policy's 99.5% point; best SLO %: the highest attainment of the settings run."
)


def table(result: MatrixResult) -> str:
    """Per scenario: each policy's best attainment; greenserve's energy against HPA-like's at 99%, 99.5%
    and 99.9% on their frontiers; GPU-hours at 99.5%; Knative-like against HPA-like at 99.5%; greenserve
    against the bounds at 99.5%."""
    widths = (24, 26, 14, 8, 8, 20, 23, 16, 16, 15, 17, 19, 16, 18)

    def line(cells: Sequence[str]) -> str:
        return "".join(
            f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [NOTE, line(HEAD)]
    lines += [line(_cells(r)) for r in rows(result)]
    lines.append("('-': a policy did not reach that attainment at any of its settings)")
    return "\n".join(lines)


def markdown(result: MatrixResult) -> str:
    """`table` as a markdown table (for the README)."""
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows(result)]
    return "\n".join(lines)


def summary(result: MatrixResult) -> str:
    """The matched-99.5% findings in plain words."""
    rs = rows(result)
    matched = [r for r in rs if r.ratio("greenserve", MATCH_LEVEL) is not None]
    worse = [r.scenario for r in matched if (r.ratio("greenserve", MATCH_LEVEL) or 0) > 1.0]
    no_gs = [r.scenario for r in rs if r.at[("greenserve", MATCH_LEVEL)] is None]
    no_hpa = [r.scenario for r in rs if r.at[("hpa", MATCH_LEVEL)] is None]
    ratios = [r.ratio("greenserve", MATCH_LEVEL) or 0.0 for r in matched]
    lines = [
        f"at matched 99.5%: {len(matched)} of {len(rs)} scenarios comparable; greenserve/HPA-like energy "
        + (f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-")
        + f"; more energy than HPA-like on {len(worse)}"
        + (f" ({', '.join(worse)})" if worse else ""),
        f"greenserve reached 99.5% nowhere on: {', '.join(no_gs) or 'none'}",
        f"HPA-like reached 99.5% nowhere on: {', '.join(no_hpa) or 'none'}",
        _late_line(rs, ("hpa", "greenserve", "greenserve-shared")),
    ]
    for which, policy, what in (
        ("bound", "greenserve", "greenserve against the bound"),
        ("startup", "greenserve", "greenserve against the tight bound"),
        ("startup", "any", "the best of HPA-like and greenserve against the tight bound"),
        ("causal", "greenserve", "greenserve against the causal bound"),
        ("causal", "any", "the best of HPA-like and greenserve against the causal bound"),
    ):
        vs = [v for r in rs if (v := r.vs_bound(which, policy)) is not None]
        near = sum(1 for v in vs if v <= 1.25)
        lines.append(
            f"{what} at 99.5%: "
            + (f"{min(vs):.2f}-{max(vs):.2f}x, within 1.25x on {near} of {len(vs)}" if vs else "-")
        )
    return "\n".join(lines)


def _late_line(rs: Sequence[Row], policies: Sequence[str]) -> str:
    """Per policy, the scenarios where its 99.5% point leaves a model over 5% late, and how many models."""
    parts = []
    for policy in policies:
        late = [n for r in rs if (p := r.at.get((policy, MATCH_LEVEL))) and (n := p.models_late)]
        parts.append(f"{policy} on {len(late)} scenarios ({sum(late)} models)")
    return "models over 5% late (own p95 over the SLO) at matched 99.5%: " + ", ".join(parts)


def save(result: MatrixResult, path: Path) -> None:
    """Every run and bound as JSON, so that the table can be rebuilt (`load`) without re-running."""
    path.write_text(
        json.dumps(
            {
                "points": [dataclasses.asdict(p) for p in result.points],
                "bounds": result.bounds,
                "floored": result.floored,
                "startup": result.startup,
                "sharing": result.sharing,
                "causal": result.causal,
                "causal_sharing": result.causal_sharing,
                "keys": [k.name for k in result.keys],
                "wall_s": result.wall_s,
            },
            indent=1,
        )
    )


def load(path: Path) -> MatrixResult:
    raw = json.loads(path.read_text())
    return MatrixResult(
        [Point(**p) for p in raw["points"]],
        raw["bounds"],
        [ScenarioKey.parse(k) for k in raw["keys"]],
        raw["wall_s"],
        raw["floored"],
        raw["startup"],
        raw.get("sharing", {}),
        raw.get("causal", {}),
        raw.get("causal_sharing", {}),
    )


def plot(result: MatrixResult, out: Path) -> list[Path]:
    """matrix-frontiers.png (energy against attainment per policy and scenario, the bound at 99.5%) and
    matrix-ratios.png (greenserve against HPA-like and the bound at matched 99.5%)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    keys = result.keys
    cols = min(5, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.8 * nrows), squeeze=False)
    colors = {"hpa": "tab:blue", "knative": "tab:orange", "greenserve": "tab:green"}
    for ax, key in zip(axes.flat, keys, strict=False):
        for policy, color in colors.items():
            pts = sorted(result.of(key.name, policy), key=lambda p: p.attainment)
            ax.plot(
                [100 * p.attainment for p in pts],
                [joules_to_kwh(p.energy_j) for p in pts],
                "o-",
                color=color,
                ms=3,
                lw=1,
                label=policy,
            )
        b = result.bounds.get(key.name)
        if b:
            ax.plot([100 * MATCH_LEVEL], [joules_to_kwh(b)], "k*", ms=8, label="bound")
        ax.set_xlim(98.0, 100.0)
        ax.set_title(key.name, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("energy (kWh, SIMULATED) against SLO attainment (%), one point per knob setting")
    fig.tight_layout()
    paths = [out / "matrix-frontiers.png"]
    fig.savefig(paths[0], dpi=90)
    plt.close(fig)

    rs = rows(result)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rs)), 4.5))
    x = np.arange(len(rs))
    vs_hpa = [r.ratio("greenserve", MATCH_LEVEL) or np.nan for r in rs]
    vs_bound = [
        (p.energy_j / r.bound_j)
        if (p := r.at[("greenserve", MATCH_LEVEL)]) is not None and r.bound_j
        else np.nan
        for r in rs
    ]
    ax.bar(x - 0.2, vs_hpa, 0.4, label="greenserve / HPA-like energy")
    ax.bar(x + 0.2, vs_bound, 0.4, label="greenserve / bound")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(1.25, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, [r.scenario for r in rs], rotation=70, fontsize=7)
    ax.set_ylabel("ratio at matched 99.5% (SIMULATED)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "matrix-ratios.png")
    fig.savefig(paths[1], dpi=90)
    plt.close(fig)
    return paths


# --- GPU sharing -------------------------------------------------------------------------------------

SHARING_HEAD = (
    "scenario",
    "best SLO % gs-shared",
    "E shared/hpa @99.5%",
    "GPU-h shared/hpa",
    "models >5% late shared",
    "E shared/gs",
    "shared/sharing bound",
    "hpa/sharing bound",
    "causal/sharing bound",
    "shared/causal",
    "best/causal",
)
SHARING_NOTE = (
    "greenserve with shared GPUs (simulator/sharing.py) at matched 99.5% (SIMULATED energy): its energy "
    "and GPU-hours against HPA-like's, its energy against greenserve's (whole GPUs) and against the "
    "sharing-aware bound (bound.sharing_aware_bound: policies that keep every model at a home, a dedicated "
    "replica or a shared copy, shared GPUs allowed, nodes whole, perfect foresight); "
    "causal: that bound's policies without foresight (causal_bound.causal_sharing_bound); best: the least "
    "energy of every compared policy at 99.5%."
)


def _sharing_cells(r: Row) -> list[str]:
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    at = MATCH_LEVEL
    return [
        r.scenario,
        f"{100 * r.best.get('greenserve-shared', 0.0):.2f}",
        fmt(r.ratio("greenserve-shared", at)),
        fmt(r.ratio("greenserve-shared", at, "gpu_hours")),
        r.late("greenserve-shared"),
        fmt(r.ratio("greenserve-shared", at, vs="greenserve")),
        fmt(r.vs_bound("sharing", "greenserve-shared")),
        fmt(r.vs_bound("sharing", "hpa")),
        fmt(_over(r.causal_sharing_j, r.sharing_j)),
        fmt(r.vs_bound("causal_sharing", "greenserve-shared")),
        fmt(r.vs_bound("causal_sharing", "any-shared")),
    ]


def sharing_table(result: MatrixResult) -> str:
    """Per scenario, greenserve with shared GPUs at matched 99.5% against HPA-like, greenserve and the
    sharing-aware bound."""
    widths = (24, 22, 21, 18, 24, 13, 22, 19, 22, 15, 13)

    def line(cells: Sequence[str]) -> str:
        return "".join(
            f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [SHARING_NOTE, line(SHARING_HEAD)]
    lines += [line(_sharing_cells(r)) for r in rows(result)]
    return "\n".join(lines)


def sharing_markdown(result: MatrixResult) -> str:
    lines = ["| " + " | ".join(SHARING_HEAD) + " |", "|" + "---|" * len(SHARING_HEAD)]
    lines += ["| " + " | ".join(_sharing_cells(r)) + " |" for r in rows(result)]
    return "\n".join(lines)


def sharing_summary(result: MatrixResult) -> str:
    rs = rows(result)
    matched = [(r, v) for r in rs if (v := r.ratio("greenserve-shared", MATCH_LEVEL)) is not None]
    worse = [r.scenario for r, v in matched if v > 1.0]
    vs = [v for r in rs if (v := r.vs_bound("sharing", "greenserve-shared")) is not None]
    near = sum(1 for v in vs if v <= 1.2)
    cs = [v for r in rs if (v := r.vs_bound("causal_sharing", "greenserve-shared")) is not None]
    best = [v for r in rs if (v := r.vs_bound("causal_sharing", "any-shared")) is not None]
    return "\n".join(
        [
            f"greenserve-shared at matched 99.5%: {len(matched)} of {len(rs)} scenarios comparable; "
            + "energy against HPA-like "
            + (f"{min(v for _, v in matched):.2f}-{max(v for _, v in matched):.2f}" if matched else "-")
            + f"; more energy than HPA-like on {len(worse)}"
            + (f" ({', '.join(worse)})" if worse else ""),
            "greenserve-shared against the sharing-aware bound at 99.5%: "
            + (f"{min(vs):.2f}-{max(vs):.2f}x, within 1.2x on {near} of {len(vs)}" if vs else "-"),
            "greenserve-shared against the causal sharing bound at 99.5%: "
            + (
                f"{min(cs):.2f}-{max(cs):.2f}x, within 1.2x on {sum(1 for v in cs if v <= 1.2)} of {len(cs)}"
                if cs
                else "-"
            ),
            "the best compared policy against the causal sharing bound at 99.5%: "
            + (
                f"{min(best):.2f}-{max(best):.2f}x, within 1.2x on {sum(1 for v in best if v <= 1.2)} "
                f"of {len(best)}"
                if best
                else "-"
            ),
        ]
    )
