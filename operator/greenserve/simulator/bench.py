"""Benchmark scenarios: the same traces, cluster, power model and SLO for every policy.

Policies: static peak, HPA-like (target utilization 0.7, 300 s scale-down stabilisation, spreading),
Knative-like (concurrency, 60 s stable / 6 s panic window, scale to zero after 30 s), greenserve (the
operator's policy code: SLO sizing by the queueing model, trend projection, packing, deletion costs,
consolidation) and the oracle (`engine.run_oracle`: the replicas the queueing model says meet the SLO
target at every step, perfectly packed, with no cold start, stabilisation or node delay).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from greenserve.simulator import traces
from greenserve.simulator.bound import EnergyBound, energy_lower_bound
from greenserve.simulator.cluster import ClusterConfig
from greenserve.simulator.engine import (
    ATTAINMENT_TARGET,
    ModelSpec,
    Result,
    Scenario,
    Simulation,
    run_oracle,
)
from greenserve.simulator.policies import Greenserve, HpaLike, KnativeLike, StaticPeak

POLICY_NAMES = ("static-peak", "hpa", "knative", "greenserve", "oracle")


@dataclass(frozen=True)
class BenchConfig:
    """Defaults documented in the report: 8 models of 1 GPU per replica, 100 ms service time (10 req/s per
    replica), p95 SLO 500 ms, cold starts 30-120 s; 8 x L4 nodes with 300 W base, 120 s provisioning and
    cluster-autoscaler's 600 s unneeded time."""

    n_models: int = 8
    capacity_rps: float = 10.0
    slo_ms: float = 500.0
    cold_start_min_s: float = 30.0
    cold_start_max_s: float = 120.0
    target_utilization: float = 0.7
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    seed: int = 0
    metrics_window_s: float = 30.0

    def models(self) -> tuple[ModelSpec, ...]:
        colds = np.linspace(self.cold_start_min_s, self.cold_start_max_s, self.n_models)
        return tuple(
            ModelSpec(f"model-{i}", self.capacity_rps, float(colds[i]), self.slo_ms)
            for i in range(self.n_models)
        )


def make_policy(name: str, cfg: BenchConfig) -> StaticPeak | HpaLike | KnativeLike | Greenserve:
    t = cfg.target_utilization
    factories: dict[str, Callable[[], StaticPeak | HpaLike | KnativeLike | Greenserve]] = {
        "static-peak": lambda: StaticPeak(t),
        "hpa": lambda: HpaLike(t),
        "knative": lambda: KnativeLike(target_utilization=t),
        "greenserve": lambda: Greenserve(t),
    }
    if name not in factories:
        raise ValueError(f"unknown policy {name!r}; one of {', '.join(POLICY_NAMES)}")
    return factories[name]()


def run_policy(name: str, scenario: Scenario, cfg: BenchConfig) -> Result:
    if name == "oracle":
        return run_oracle(scenario)
    return Simulation(scenario).run(make_policy(name, cfg))


TRACES = ("azure-code", "azure-conv", "diurnal")
STRESS_TRACES = ("azure-code-1h", "azure-conv-1h")


def load_trace(
    name: str, cfg: BenchConfig, traces_dir: Path, *, quick: bool = False
) -> tuple[traces.Trace, int]:
    """A named trace and its warm-up steps (run, not measured).

    * azure-code, azure-conv: the real hour stretched to a day (x24) at about 250 req/s (superposed
      copies: x100 code, x50 conv); 6 h warm-up.
    * azure-code-1h, azure-conv-1h: the same at the native time scale (1 h; 10 min warm-up): a stress test
      of minute-scale swings against 30-120 s cold starts.
    * diurnal: synthetic 24 h after a 24 h warm-up (steady state of a daily cycle); bursty: synthetic 2 h.
    Quick mode: 6 h instead of 24 h, 20 s steps.
    """
    step = 20.0 if quick else 5.0
    if name.removesuffix("-1h") in traces.AZURE_FILES:
        base = name.removesuffix("-1h")
        path = traces.resolve_trace_file(traces_dir / traces.AZURE_FILES[base])
        if not path.is_file():
            raise FileNotFoundError(f"trace {path} not found (pass --traces DIR)")
        scale = 100.0 if base == "azure-code" else 50.0
        native = name.endswith("-1h")
        stretch = 1.0 if native else (6.0 if quick else 24.0)
        tr = traces.load_azure(
            path,
            name=name,
            step_s=5.0 if native else step,
            n_models=cfg.n_models,
            rate_scale=scale,
            stretch=stretch,
            seed=cfg.seed,
        )
        return traces.with_warmup(tr, 600.0 if native else stretch * 3600 / 4)
    if name == "diurnal":
        hours = 6.0 if quick else 24.0
        tr = traces.diurnal(hours=24.0, step_s=2 * step, n_models=cfg.n_models, seed=cfg.seed)
        if quick:  # the afternoon peak and the evening ramp-down of the day, after a 6 h warm-up
            k0 = round(12 * 3600 / tr.step_s)
            tr = traces.Trace(tr.name, tr.step_s, tr.rates[:, k0 - round(6 * 3600 / tr.step_s) :])
            return tr, round(6 * 3600 / tr.step_s)
        return traces.with_warmup(tr, hours * 3600)
    if name == "bursty":
        tr = traces.bursty(hours=1.0 if quick else 2.0, step_s=step, n_models=cfg.n_models, seed=cfg.seed)
        return traces.with_warmup(tr, 600.0)
    raise ValueError(f"unknown trace {name!r}")


def bench(
    trace_names: Sequence[str],
    cfg: BenchConfig,
    traces_dir: Path,
    *,
    quick: bool = False,
    policies: Sequence[str] = POLICY_NAMES,
    on_result: Callable[[Result], None] | None = None,
) -> dict[str, list[Result]]:
    out: dict[str, list[Result]] = {}
    for tname in trace_names:
        scenario = make_scenario(tname, cfg, traces_dir, quick=quick)
        results = []
        for p in policies:
            r = run_policy(p, scenario, cfg)
            results.append(r)
            if on_result is not None:
                on_result(r)
        out[tname] = results
    return out


@lru_cache(maxsize=8)
def make_scenario(name: str, cfg: BenchConfig, traces_dir: Path, *, quick: bool = False) -> Scenario:
    trace, warm = load_trace(name, cfg, traces_dir, quick=quick)
    return Scenario(trace, cfg.models(), cfg.cluster, cfg.metrics_window_s, warm)


def bounds(
    results: Mapping[str, Sequence[Result]], cfg: BenchConfig, traces_dir: Path, *, quick: bool = False
) -> dict[str, EnergyBound]:
    """Per trace, the least energy any policy needs at the issue's SLO target: equal to HPA-like's
    attainment or better, and at least 99.5% (`bound.energy_lower_bound`)."""
    out = {}
    for tname, rs in results.items():
        hpa = next((r for r in rs if r.policy == "hpa"), None)
        target = max(ATTAINMENT_TARGET, hpa.slo_attainment if hpa else 0.0)
        out[tname] = energy_lower_bound(make_scenario(tname, cfg, traces_dir, quick=quick), target)
    return out
