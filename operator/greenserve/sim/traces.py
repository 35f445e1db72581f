"""Arrival traces for the simulator: the Azure LLM inference CSVs and seeded synthetic traces.

A `Trace` holds the *expected* arrivals per model and step (an intensity, requests per step); the engine
draws Poisson counts from it with its own seed, so a trace scaled up in rate keeps realistic (square-root)
noise instead of multiplying every burst by the scale factor.

* Azure (`AzureLLMInferenceTrace_{code,conv}.csv`, CC-BY-4.0, ~1 h each): every request is assigned to
  one of the models by a seeded draw with the given popularity shares, counted in `bin_s` bins (60 s by
  default, interpolated between bin centres), and scaled so that the mean demand is `mean_gpus` GPUs.
  The trace's own rate is only 2.5-5.5 requests/s: finer bins would mostly carry its Poisson noise, which
  the rate scaling would then turn into bursts that never happened. The minute-scale burstiness (peak/mean
  4.2x for code, 1.5x for conv, energy_anchors.md section 9) is kept; the engine adds Poisson noise at
  the scaled rate.
* Diurnal (24 h): per model a day-shaped curve (trough/peak ratio, phase shift), slow log-normal noise and
  a flash crowd every ~4 h (1.5-2.5x, rising over 1-2 min, ~5 min long), all from one seed. The last model
  is "sparse": traffic only in a few windows, the case where scale to zero pays.
* Bursty: on/off bursts over a low base, from a seed.

The traces directory is never copied into the repository: `default_traces_dir()` is
`../shared/data/traces` relative to the repository root (CI clones the repository with shared/ beside it).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

AZURE_FILES = {"code": "AzureLLMInferenceTrace_code.csv", "conv": "AzureLLMInferenceTrace_conv.csv"}


@dataclass(frozen=True)
class Trace:
    name: str
    dt_s: float
    intensity: FloatArray  # shape (models, steps): expected arrivals per step

    @property
    def n_models(self) -> int:
        return int(self.intensity.shape[0])

    @property
    def n_steps(self) -> int:
        return int(self.intensity.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_steps * self.dt_s

    def rates(self) -> FloatArray:
        """Expected requests per second, per model and step."""
        return self.intensity / self.dt_s

    def truncated(self, duration_s: float) -> Trace:
        steps = max(1, min(self.n_steps, int(duration_s / self.dt_s)))
        return Trace(self.name, self.dt_s, self.intensity[:, :steps].copy())


def repo_root() -> Path:
    # operator/greenserve/sim/traces.py -> repository root
    return Path(__file__).resolve().parents[3]


def default_traces_dir() -> Path:
    return repo_root().parent / "shared" / "data" / "traces"


def scale_to_mean_gpus(rates: FloatArray, capacity_rps: FloatArray, mean_gpus: float) -> float:
    """Factor that makes sum_m mean(rate_m) / capacity_m equal `mean_gpus` (replicas at 100% load)."""
    demand = float(np.sum(rates.mean(axis=1) / capacity_rps))
    return mean_gpus / demand if demand > 0 else 0.0


def _parse_ts(raw: str) -> float:
    # "2023-11-16 18:17:03.9799600": Python parses at most 6 fractional digits.
    head, _, frac = raw.strip().partition(".")
    base = datetime.strptime(head, "%Y-%m-%d %H:%M:%S").timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def load_azure_timestamps(path: Path) -> FloatArray:
    """Arrival times in seconds from the first request."""
    with path.open(newline="") as f:
        times = [_parse_ts(row["TIMESTAMP"]) for row in csv.DictReader(f)]
    arr: FloatArray = np.sort(np.asarray(times, dtype=np.float64))
    out: FloatArray = arr - arr[0]
    return out


def azure_trace(
    path: Path,
    *,
    shares: tuple[float, ...],
    capacity_rps: tuple[float, ...],
    mean_gpus: float,
    dt_s: float,
    seed: int,
    bin_s: float = 60.0,
    name: str | None = None,
) -> Trace:
    """Split one Azure CSV into len(shares) models and scale it to `mean_gpus` (see the module docstring)."""
    times = load_azure_timestamps(path)
    rng = np.random.default_rng(seed)
    share = np.asarray(shares, dtype=np.float64)
    model_of = rng.choice(len(shares), size=times.size, p=share / share.sum())
    n_bins = math.ceil((times[-1] + 1e-9) / bin_s)
    counts = np.zeros((len(shares), n_bins))
    np.add.at(counts, (model_of, np.minimum((times / bin_s).astype(np.int64), n_bins - 1)), 1.0)
    per_bin_rate = counts / bin_s
    # Piecewise-linear between bin centres: the minute-scale rate curve without step edges.
    steps = int(n_bins * bin_s / dt_s)
    t = (np.arange(steps) + 0.5) * dt_s
    centres = (np.arange(n_bins) + 0.5) * bin_s
    rates = np.vstack([np.interp(t, centres, row) for row in per_bin_rate])
    factor = scale_to_mean_gpus(rates, np.asarray(capacity_rps), mean_gpus)
    return Trace(name or path.stem, dt_s, rates * factor * dt_s)


def _trapezoid(t: FloatArray, start: float, ramp: float, hold: float) -> FloatArray:
    """0 before `start`, rising linearly to 1 over `ramp` s, 1 for `hold` s, falling over `ramp` s."""
    up = np.clip((t - start) / ramp, 0.0, 1.0)
    down = np.clip((start + 2 * ramp + hold - t) / ramp, 0.0, 1.0)
    return np.minimum(up, down)


def diurnal_trace(
    *,
    capacity_rps: tuple[float, ...],
    mean_gpus: float,
    dt_s: float,
    seed: int,
    hours: float = 24.0,
    trough_ratio: float = 0.15,
    sparse_last: bool = True,
    name: str = "diurnal-24h",
) -> Trace:
    """A seeded day: per model 1 - depth*cos(...) with a phase shift, slow noise and short bursts."""
    rng = np.random.default_rng(seed)
    n_models = len(capacity_rps)
    steps = int(hours * 3600 / dt_s)
    t: FloatArray = np.arange(steps, dtype=np.float64) * dt_s
    day = 86_400.0
    out = np.zeros((n_models, steps))
    for m in range(n_models):
        phase = rng.uniform(-2.0, 2.0) * 3600  # peaks a few hours apart (different user bases)
        # Peak mid-afternoon (14:00 +- phase), trough at night at `trough_ratio` of the peak.
        shape = trough_ratio + (1.0 - trough_ratio) * 0.5 * (
            1.0 + np.cos(2 * math.pi * (t - 14 * 3600 - phase) / day)
        )
        # Slow multiplicative noise: a random walk in log space sampled every 5 min, interpolated.
        knots = np.arange(0, steps * dt_s + 300, 300.0)
        walk = np.cumsum(rng.normal(0.0, 0.04, knots.size))
        walk -= walk.mean()
        noise = np.exp(np.interp(t, knots, walk))
        bursts = np.ones(steps)
        for _ in range(int(hours / 4)):  # ~one flash crowd every 4 hours: 1.5-2.5x, rising over 1-2 min
            start = float(rng.uniform(0, hours * 3600))
            bursts *= 1.0 + (rng.uniform(1.5, 2.5) - 1.0) * _trapezoid(t, start, rng.uniform(60, 120), 300.0)
        out[m] = shape * noise * bursts
    if sparse_last and n_models > 1:
        # The long-tail model: a few active windows a day (ramping up over 5 min), silent otherwise.
        active = np.zeros(steps)
        for _ in range(max(1, int(hours / 6))):
            start = float(rng.uniform(0, hours * 3600))
            active = np.maximum(active, _trapezoid(t, start, 300.0, rng.uniform(900, 2700)))
        out[-1] *= active
    # Normalise each model's share of demand (in GPUs) by popularity, then scale the total.
    popularity = np.array([1.0 / (m + 1) for m in range(n_models)])
    cap = np.asarray(capacity_rps, dtype=np.float64)
    for m in range(n_models):
        mean = out[m].mean()
        if mean > 0:
            out[m] *= popularity[m] * cap[m] / mean  # mean GPUs of model m ~ popularity[m]
    factor = scale_to_mean_gpus(out, cap, mean_gpus)
    return Trace(name, dt_s, out * factor * dt_s)


def bursty_trace(
    *,
    capacity_rps: tuple[float, ...],
    mean_gpus: float,
    dt_s: float,
    seed: int,
    hours: float = 2.0,
    name: str = "bursty-2h",
) -> Trace:
    """On/off traffic: a low base with bursts of 3-8x lasting 1-5 minutes, per model, from a seed."""
    rng = np.random.default_rng(seed)
    n_models = len(capacity_rps)
    steps = int(hours * 3600 / dt_s)
    out = np.full((n_models, steps), 1.0)
    for m in range(n_models):
        k = 0
        while k < steps:
            k += int(rng.exponential(900.0) / dt_s)
            length = int(rng.uniform(60, 300) / dt_s)
            out[m, k : k + length] *= rng.uniform(3.0, 8.0)
            k += length
    cap = np.asarray(capacity_rps, dtype=np.float64)
    out *= cap[:, None] / np.arange(1, n_models + 1)[:, None]
    factor = scale_to_mean_gpus(out, cap, mean_gpus)
    return Trace(name, dt_s, out * factor * dt_s)
