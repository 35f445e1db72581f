"""Arrival traces as request rates per model and simulation step.

A trace here is a matrix `rates[model, step]` (requests/s, averaged over the step): the simulator is a
fluid model per step, so individual arrivals are binned. Real traces are the Azure LLM inference 2023 CSVs
(TIMESTAMP, ContextTokens, GeneratedTokens; about one hour each), shipped gzip-compressed in
`greenserve/simulator/data/` (CC BY 4.0, attribution in its README.md); synthetic ones are diurnal or bursty.
Everything random takes a seed, so a trace is reproducible.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

AZURE_FILES = {
    "azure-code": "AzureLLMInferenceTrace_code.csv",
    "azure-conv": "AzureLLMInferenceTrace_conv.csv",
}


@dataclass(frozen=True)
class Trace:
    name: str
    step_s: float
    rates: FloatArray  # shape (models, steps), requests/s

    @property
    def n_models(self) -> int:
        return int(self.rates.shape[0])

    @property
    def n_steps(self) -> int:
        return int(self.rates.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_steps * self.step_s

    def total_requests(self) -> float:
        return float(self.rates.sum() * self.step_s)


def default_traces_dir() -> Path:
    """The traces shipped inside the package (`greenserve/simulator/data/`), so a clone or an installed
    wheel runs the benchmark alone."""
    return Path(__file__).resolve().parent / "data"


def resolve_trace_file(path: Path) -> Path:
    """`path`, or its gzip-compressed sibling `path.gz` when only that exists (the shipped form), so a
    directory of plain CSVs given with `--traces` works too."""
    gz = path.with_name(path.name + ".gz")
    if not path.exists() and gz.exists():
        return gz
    return path


def read_azure_timestamps(path: Path) -> FloatArray:
    """Arrival times (s from the first request) of an Azure LLM inference CSV, plain or gzip-compressed."""
    path = resolve_trace_file(path)
    stamps: list[str] = []
    with gzip.open(path, "rt") if path.suffix == ".gz" else path.open() as fh:
        header = fh.readline()
        if not header.startswith("TIMESTAMP"):
            raise ValueError(f"{path}: not an Azure LLM inference trace (header {header.strip()!r})")
        for line in fh:
            raw = line.split(",", 1)[0].strip()
            if raw:
                # numpy parses ISO 8601 with microseconds; the files carry 7 fractional digits.
                stamps.append(raw[:26].replace(" ", "T"))
    t = np.array(stamps, dtype="datetime64[us]").astype(np.int64).astype(np.float64) / 1e6
    t.sort()
    return np.asarray(t - t[0], dtype=np.float64)


def split_and_bin(
    arrivals: FloatArray,
    *,
    step_s: float,
    n_models: int,
    duration_s: float,
    seed: int,
    weights: FloatArray | None = None,
) -> FloatArray:
    """Assign each arrival to a model at random (a hash-like split, deterministic by seed) and bin."""
    rng = np.random.default_rng(seed)
    p = None if weights is None else weights / weights.sum()
    model = rng.choice(n_models, size=arrivals.size, p=p)
    n_steps = max(1, math.ceil(duration_s / step_s))
    keep = arrivals < n_steps * step_s
    bins = (arrivals[keep] // step_s).astype(np.int64)
    counts = np.zeros((n_models, n_steps))
    np.add.at(counts, (model[keep], bins), 1.0)
    return counts / step_s


def load_azure(
    path: Path,
    *,
    name: str = "azure",
    step_s: float = 5.0,
    n_models: int = 8,
    rate_scale: float = 1.0,
    stretch: float = 1.0,
    jitter_s: float = 120.0,
    stretch_bin_s: float = 10.0,
    seed: int = 0,
) -> Trace:
    """An Azure trace split into `n_models` models.

    `rate_scale` superposes copies of the trace, each shifted circularly by a random offset of up to
    `jitter_s` seconds: the shape above a few minutes is kept while second-scale bursts add up like
    independent tenants, as real traffic does when volume grows (multiplying the counts instead would
    scale the one-hour sample's low-volume burstiness with it). A fractional rest is a Bernoulli-thinned
    extra copy.

    `stretch` > 1 slows the trace down at the same request rate (24 turns the hour into a day): the rate
    curve, binned at `stretch_bin_s` of the original time, is stretched and sampled as Poisson counts per
    step (deterministic by seed).
    """
    base = read_azure_timestamps(path)
    duration = float(base[-1]) + 1e-6
    rng = np.random.default_rng(seed + 7919)
    copies: list[FloatArray] = []
    whole = math.floor(rate_scale)
    frac = rate_scale - whole
    for i in range(whole + (1 if frac > 1e-9 else 0)):
        shifted = base if i == 0 else (base + rng.uniform(0.0, jitter_s)) % duration
        if i == whole:  # the fractional copy
            shifted = shifted[rng.random(shifted.size) < frac]
        copies.append(shifted)
    arrivals = np.sort(np.concatenate(copies)) if copies else base[:0]
    if stretch <= 1.0:
        rates = split_and_bin(arrivals, step_s=step_s, n_models=n_models, duration_s=duration, seed=seed)
        return Trace(name, step_s, rates)
    hour = split_and_bin(arrivals, step_s=stretch_bin_s, n_models=n_models, duration_s=duration, seed=seed)
    n_steps = math.ceil(duration * stretch / step_s)
    idx = np.minimum(
        ((np.arange(n_steps) * step_s / stretch) // stretch_bin_s).astype(np.int64), hour.shape[1] - 1
    )
    lam = hour[:, idx]
    counts = np.random.default_rng(seed + 104_729).poisson(lam * step_s)
    return Trace(name, step_s, counts / step_s)


def with_warmup(trace: Trace, warmup_s: float) -> tuple[Trace, int]:
    """The trace with its last `warmup_s` seconds prepended (circularly), and the number of those steps:
    the simulator runs them to reach a steady state (a day of a daily cycle) and measures the rest."""
    w = min(trace.n_steps - 1, max(0, round(warmup_s / trace.step_s)))
    if w == 0:
        return trace, 0
    return Trace(trace.name, trace.step_s, np.concatenate([trace.rates[:, -w:], trace.rates], axis=1)), w


def diurnal(
    *,
    name: str = "diurnal",
    hours: float = 24.0,
    step_s: float = 10.0,
    n_models: int = 8,
    mean_rps: float = 30.0,
    peak_to_trough: float = 6.0,
    seed: int = 0,
) -> Trace:
    """Day-shaped load: a sinusoid per model (peak in the afternoon, phase jittered by +-2 h so models do
    not peak together), models of unequal popularity, minute-scale noise, and Poisson counts per step."""
    rng = np.random.default_rng(seed)
    n_steps = math.ceil(hours * 3600 / step_s)
    t = np.arange(n_steps) * step_s
    amp = (peak_to_trough - 1.0) / (peak_to_trough + 1.0)
    pop = 1.0 / (np.arange(n_models) + 1.0) ** 0.7
    pop = pop / pop.mean()
    rates = np.zeros((n_models, n_steps))
    for m in range(n_models):
        phase = rng.uniform(-2.0, 2.0) * 3600
        shape = 1.0 + amp * np.sin(2 * np.pi * (t - phase - 9 * 3600) / 86_400.0)
        # Slow multiplicative noise (AR(1) at minute scale) so the curve is not a perfect sinusoid.
        noise = np.empty(n_steps)
        x = 0.0
        decay = math.exp(-step_s / 600.0)
        eps = rng.normal(0.0, 0.08 * math.sqrt(1 - decay**2), n_steps)
        for k in range(n_steps):
            x = decay * x + eps[k]
            noise[k] = x
        lam = mean_rps * pop[m] * shape * np.exp(noise)
        rates[m] = rng.poisson(lam * step_s) / step_s
    return Trace(name, step_s, rates)


def bursty(
    *,
    name: str = "bursty",
    hours: float = 2.0,
    step_s: float = 5.0,
    n_models: int = 8,
    base_rps: float = 10.0,
    bursts_per_hour: float = 3.0,
    burst_factor: float = 4.0,
    burst_s: float = 300.0,
    seed: int = 0,
) -> Trace:
    """Flat load with bursts per model: Poisson burst starts, exponential durations, `burst_factor` x base."""
    rng = np.random.default_rng(seed)
    n_steps = math.ceil(hours * 3600 / step_s)
    rates = np.zeros((n_models, n_steps))
    for m in range(n_models):
        lam = np.full(n_steps, base_rps)
        n_bursts = rng.poisson(bursts_per_hour * hours)
        for _ in range(n_bursts):
            start = int(rng.integers(0, n_steps))
            length = max(1, int(rng.exponential(burst_s) / step_s))
            lam[start : start + length] *= burst_factor
        rates[m] = rng.poisson(lam * step_s) / step_s
    return Trace(name, step_s, rates)
