"""GPU and node power model, energy counters and carbon: pure, dependency-free.

Power per GPU follows a three-state model:

* no replica resident (no CUDA context):  P = P_bare
* replica resident, no work:              P = P_ctx          (the "parking tax")
* serving at utilization a in [0, 1]:     P = P_ctx + (P_peak - P_ctx) * a

Figures per product (W): P_bare and P_ctx from public nvidia-smi snapshots, P_peak a sustained
batched-inference estimate; the H200's three are measured (`tests/gpu/power_profile.py` on one NVIDIA H200,
driver 580.159.04: the NVML energy counter over 6 s per state; README, "The power model on a real GPU").
They are a model: reports built on it are labelled simulated. The node base (host CPUs, memory, fans,
NICs of an 8-GPU server at idle) is an estimate too, 300 W by default, configurable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

JOULES_PER_KWH: Final = 3.6e6


@dataclass(frozen=True)
class GpuPowerModel:
    product: str
    bare_w: float
    loaded_idle_w: float
    busy_w: float
    tdp_w: float

    def power_w(self, utilization: float, loaded: bool = True) -> float:
        """Power at `utilization` (0..1, clamped) with or without a resident model."""
        if not loaded:
            return self.bare_w
        a = min(1.0, max(0.0, utilization))
        return self.loaded_idle_w + (self.busy_w - self.loaded_idle_w) * a


GPU_MODELS: Final[dict[str, GpuPowerModel]] = {
    m.product: m
    for m in (
        GpuPowerModel("T4", 9, 26, 65, 70),
        GpuPowerModel("L4", 15, 30, 68, 72),
        GpuPowerModel("A10", 12, 37, 140, 150),
        GpuPowerModel("A10G", 15, 60, 200, 300),
        GpuPowerModel("A100-PCIE-40GB", 35, 60, 220, 250),
        GpuPowerModel("A100-PCIE-80GB", 45, 62, 250, 300),
        GpuPowerModel("A100-SXM", 52, 85, 360, 400),
        GpuPowerModel("H100-PCIE", 48, 82, 290, 350),
        GpuPowerModel("H100-SXM", 72, 110, 600, 700),
        # Measured: no context 79 W; a context holding 1 GiB keeps the SMs at 1980 MHz, 122 W; back-to-back
        # bf16 products 688 W, where the 700 W limit throttles the SMs to ~1450 MHz.
        GpuPowerModel("H200", 79, 122, 688, 700),
    )
}
DEFAULT_GPU_PRODUCT: Final = "L4"


def gpu_model_for(product: str | None) -> GpuPowerModel:
    """The power model for a product as GPU feature discovery labels it (nvidia.com/gpu.product), e.g.
    "NVIDIA-H100-80GB-HBM3", "NVIDIA-H200" or "Tesla-T4"; unknown products fall back to the default (L4)."""
    return GPU_MODELS[known_gpu_model(product) or DEFAULT_GPU_PRODUCT]


def known_gpu_model(product: str | None) -> str | None:
    """The `GPU_MODELS` key a product label names, or None where none does (`gpu_model_for` then prices
    it as the default product)."""
    p = (product or "").upper().replace(" ", "-")
    if "GH200" in p or "L40" in p:
        return None  # other products whose names contain a known one's (an L40S is not an L4)
    if "H200" in p:
        return "H200"
    if "H100" in p:
        return "H100-PCIE" if "PCIE" in p else "H100-SXM"
    if "A100" in p:
        if "SXM" in p:
            return "A100-SXM"
        return "A100-PCIE-80GB" if "80" in p else "A100-PCIE-40GB"
    for key in ("A10G", "A10", "T4", "L4"):
        if key in p:
            return key
    return None


@dataclass(frozen=True)
class NodePowerModel:
    """Host power of a GPU node apart from its GPUs (estimate; see the module docstring)."""

    base_w: float = 300.0


def counter_delta(previous: float | None, current: float) -> float:
    """Increase of a monotonic counter between two readings; a drop means a reset, counted from zero."""
    if previous is None or current < previous:
        return current
    return current - previous


def joules_to_kwh(joules: float) -> float:
    return joules / JOULES_PER_KWH


def grams_co2e(joules: float, g_per_kwh: float) -> float:
    """Operational emissions of ``joules`` at a grid intensity in gCO2e/kWh."""
    return joules_to_kwh(joules) * g_per_kwh


def break_even_idle_s(idle_power_w: float, cold_start_energy_j: float, cold_start_s: float) -> float:
    """How long keeping a warm replica idle costs as much as one cold start (the model above).

    Parking longer than this wastes more energy than a reload would; the cold start's delay is paid in
    latency, so the timeout is never shorter than the cold start itself.
    """
    if idle_power_w <= 0 or not math.isfinite(idle_power_w):
        return math.inf
    return max(cold_start_s, cold_start_energy_j / idle_power_w)
