"""Benchmark: greenserve against static peak, HPA-like, Knative-like and the oracle lower bound.

Scenarios (all deterministic for a seed; energy is SIMULATED with the power model of
shared/research/energy_anchors.md section 7 — L4 GPUs, 8 per node, 300 W node base):

* `azure-code`, `azure-conv`: the Azure LLM inference 2023 one-hour traces (real arrival times), each
  split over four TF Serving models by popularity and scaled to a mean demand of `mean_gpus` GPUs;
* `diurnal-24h`: a seeded synthetic day, five models (one sparse, long-tail);
* `bursty-2h`: seeded on/off bursts (not part of the acceptance targets; a stress case).

Policies: `oracle` (lower bound), `static-peak`, `hpa-like`, `knative-like` (sim/baselines.py),
`greenserve` (the operator's policy with the same target utilization, 0.7, and scale-down window, 300 s,
as HPA-like: what differs is bin packing, consolidation, deletion costs, scale to zero for minReplicas-0
models and spare slots) and `greenserve-eco` (the same at target 0.8: less energy, lower attainment).

`--quick` shortens every scenario (CI: well under a minute).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from greenserve.sim.baselines import HpaLike, KnativeLike, StaticPeak, oracle, peak_replicas
from greenserve.sim.engine import (
    ClusterConfig,
    ModelSpec,
    Policy,
    Result,
    SimConfig,
    sample_arrivals,
    simulate,
)
from greenserve.sim.greenserve_policy import GreenserveConfig, GreenservePolicy
from greenserve.sim.traces import (
    AZURE_FILES,
    Trace,
    azure_trace,
    bursty_trace,
    default_traces_dir,
    diurnal_trace,
)

# TF Serving models on an L4 (capacity = requests/s at 100% utilization with server-side batching).
AZURE_MODELS = (
    ModelSpec("resnet50", capacity_rps=150.0, cold_start_s=30.0, slo_ms=50.0),
    ModelSpec("bert-base", capacity_rps=60.0, cold_start_s=45.0, slo_ms=100.0),
    ModelSpec("efficientdet", capacity_rps=30.0, cold_start_s=40.0, slo_ms=150.0),
    ModelSpec("t5-small", capacity_rps=20.0, cold_start_s=60.0, slo_ms=250.0),
)
# The long-tail model is the one declared with minReplicas 0 (scale to zero allowed).
DIURNAL_MODELS = (
    *AZURE_MODELS,
    ModelSpec("nightly-ocr", capacity_rps=25.0, cold_start_s=45.0, slo_ms=200.0, min_replicas=0),
)
AZURE_SHARES = (0.45, 0.30, 0.15, 0.10)

HPA_TARGET = 0.7
ATTAINMENT_TARGET = 0.995


@dataclass(frozen=True)
class Scenario:
    trace: Trace
    models: tuple[ModelSpec, ...]


@dataclass
class TraceReport:
    trace: str
    results: list[Result] = field(default_factory=list)

    def by_name(self, name: str) -> Result | None:
        return next((r for r in self.results if r.policy == name), None)


def scenarios(
    traces_dir: Path | None,
    *,
    quick: bool,
    seed: int,
    dt_s: float,
    mean_gpus: float,
    only: Sequence[str] = (),
) -> tuple[list[Scenario], list[str]]:
    """The benchmark scenarios, and notes on the ones skipped (e.g. Azure traces not found)."""
    out: list[Scenario] = []
    notes: list[str] = []
    tdir = traces_dir or default_traces_dir()
    caps = tuple(m.capacity_rps for m in AZURE_MODELS)
    for key, fname in AZURE_FILES.items():
        name = f"azure-{key}"
        if only and name not in only:
            continue
        path = tdir / fname
        if not path.is_file():
            notes.append(f"{name}: skipped, {path} not found (pass --traces DIR)")
            continue
        t = azure_trace(
            path, shares=AZURE_SHARES, capacity_rps=caps, mean_gpus=mean_gpus, dt_s=dt_s, seed=seed, name=name
        )
        out.append(Scenario(t.truncated(1200.0) if quick else t, AZURE_MODELS))
    dcaps = tuple(m.capacity_rps for m in DIURNAL_MODELS)
    if not only or "diurnal-24h" in only:
        d = diurnal_trace(capacity_rps=dcaps, mean_gpus=mean_gpus, dt_s=dt_s, seed=seed, hours=24.0)
        if quick:
            # Keep the evening ramp-down (where consolidation matters) in a 4 h window.
            start = int(17 * 3600 / dt_s)
            d = Trace(d.name, dt_s, d.intensity[:, start : start + int(4 * 3600 / dt_s)].copy())
        out.append(Scenario(d, DIURNAL_MODELS))
    if not only or "bursty-2h" in only:
        b = bursty_trace(capacity_rps=caps, mean_gpus=mean_gpus / 2, dt_s=dt_s, seed=seed, hours=2.0)
        out.append(Scenario(b.truncated(1800.0) if quick else b, AZURE_MODELS))
    return out, notes


def initial_replicas(arrivals: np.ndarray, models: Sequence[ModelSpec], dt: float) -> list[int]:
    """Replicas for the peak 60 s mean rate of the first 10 minutes at HPA's target (the same start for
    every policy, so no policy pays for a cold cluster at t=0)."""
    win = max(1, round(60.0 / dt))
    head = max(win, round(600.0 / dt))
    out = []
    for m, spec in enumerate(models):
        r = arrivals[m, :head]
        rate = float(np.convolve(r, np.ones(win) / win, mode="valid").max()) / dt if r.size >= win else 0.0
        out.append(math.ceil(rate / (spec.capacity_rps * HPA_TARGET)) if rate > 0 else 0)
    return out


PolicyFactory = Callable[[Scenario, SimConfig, np.ndarray], tuple[Policy, list[int]]]


def policy_factories(gs_config: GreenserveConfig | None = None) -> dict[str, PolicyFactory]:
    def static(s: Scenario, c: SimConfig, arr: np.ndarray) -> tuple[Policy, list[int]]:
        peak = peak_replicas(s.trace.rates(), s.models, s.trace.dt_s, HPA_TARGET)
        return StaticPeak(peak), peak

    def hpa(s: Scenario, c: SimConfig, arr: np.ndarray) -> tuple[Policy, list[int]]:
        init = [max(1, n) for n in initial_replicas(arr, s.models, s.trace.dt_s)]
        return HpaLike(len(s.models), target=HPA_TARGET), init

    def knative(s: Scenario, c: SimConfig, arr: np.ndarray) -> tuple[Policy, list[int]]:
        return KnativeLike(len(s.models)), initial_replicas(arr, s.models, s.trace.dt_s)

    def greenserve(s: Scenario, c: SimConfig, arr: np.ndarray) -> tuple[Policy, list[int]]:
        pol = GreenservePolicy(len(s.models), c.cluster.gpu, gs_config)
        return pol, initial_replicas(arr, s.models, s.trace.dt_s)

    def eco(s: Scenario, c: SimConfig, arr: np.ndarray) -> tuple[Policy, list[int]]:
        pol = GreenservePolicy(len(s.models), c.cluster.gpu, GreenserveConfig.eco())
        return pol, initial_replicas(arr, s.models, s.trace.dt_s)

    return {
        "static-peak": static,
        "hpa-like": hpa,
        "knative-like": knative,
        "greenserve": greenserve,
        "greenserve-eco": eco,
    }


def run_scenario(
    scenario: Scenario, config: SimConfig, policies: Sequence[str], gs_config: GreenserveConfig | None = None
) -> TraceReport:
    arrivals = sample_arrivals(scenario.trace, config.seed)
    report = TraceReport(scenario.trace.name)
    factories = policy_factories(gs_config)
    for name in policies:
        if name == "oracle":
            report.results.append(
                oracle(arrivals, scenario.models, config, scenario.trace.dt_s, scenario.trace.name)
            )
            continue
        policy, init = factories[name](scenario, config, arrivals)
        report.results.append(simulate(scenario.trace, scenario.models, policy, config, init, arrivals))
    return report


ALL_POLICIES = ("oracle", "static-peak", "hpa-like", "knative-like", "greenserve", "greenserve-eco")


def _kwh(j: float) -> float:
    return j / 3.6e6


def format_report(report: TraceReport) -> str:
    ora = report.by_name("oracle")
    hpa = report.by_name("hpa-like")
    head = (
        f"{'policy':<14}{'busy':>8}{'idle':>8}{'base':>8}{'total':>8}{'GPU-h':>8}{'node-h':>8}"
        f"{'SLO %':>8}{'cold':>6}{'moves':>6}{'E/orac':>8}{'E/HPA':>7}{'GPUh/o':>8}{'nodeh/o':>8}"
    )
    lines = [
        f"== {report.trace} ({report.results[0].duration_s / 3600:.2f} h) — energy in kWh, SIMULATED "
        "(power model: energy_anchors.md s.7; L4, 8 GPUs + 300 W base per node)",
        head,
    ]
    for r in report.results:
        e_o = r.total_j / ora.total_j if ora and ora.total_j else math.nan
        e_h = r.total_j / hpa.total_j if hpa and hpa.total_j else math.nan
        g_o = r.gpu_seconds / ora.gpu_seconds if ora and ora.gpu_seconds else math.nan
        n_o = r.node_seconds / ora.node_seconds if ora and ora.node_seconds else math.nan
        lines.append(
            f"{r.policy:<14}{_kwh(r.busy_gpu_j):>8.2f}{_kwh(r.idle_gpu_j):>8.2f}{_kwh(r.node_base_j):>8.2f}"
            f"{_kwh(r.total_j):>8.2f}{r.gpu_seconds / 3600:>8.1f}{r.node_seconds / 3600:>8.1f}"
            f"{100 * r.attainment:>8.2f}{r.cold_starts:>6d}{r.moves:>6d}"
            f"{e_o:>8.3f}{e_h:>7.3f}{g_o:>8.3f}{n_o:>8.3f}"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Verdict:
    trace: str
    saving_vs_hpa: float
    attainment: float
    hpa_attainment: float
    vs_oracle: float

    @property
    def ok(self) -> bool:
        return (
            self.saving_vs_hpa >= 0.35
            and self.attainment >= max(ATTAINMENT_TARGET, self.hpa_attainment - 1e-12)
            and self.vs_oracle <= 1.25
        )

    def line(self) -> str:
        return (
            f"{self.trace}: greenserve saves {100 * self.saving_vs_hpa:.1f}% energy vs HPA-like "
            f"(target >= 35%), SLO {100 * self.attainment:.2f}% vs HPA {100 * self.hpa_attainment:.2f}% "
            f"(target >= 99.5% and >= HPA), {self.vs_oracle:.3f}x oracle (target <= 1.25x): "
            f"{'MET' if self.ok else 'NOT MET'}"
        )


def verdict(report: TraceReport) -> Verdict | None:
    gs, hpa, ora = report.by_name("greenserve"), report.by_name("hpa-like"), report.by_name("oracle")
    if not (gs and hpa and ora) or hpa.total_j <= 0 or ora.total_j <= 0:
        return None
    return Verdict(
        report.trace, 1.0 - gs.total_j / hpa.total_j, gs.attainment, hpa.attainment, gs.total_j / ora.total_j
    )


def default_config(seed: int) -> SimConfig:
    return SimConfig(cluster=ClusterConfig(), seed=seed)
