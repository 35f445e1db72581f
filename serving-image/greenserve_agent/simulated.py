"""A simulated NVML device for machines without a GPU.

Power follows the operator's state model (``operator/greenserve/policy/energy.py``):

* no model resident (no CUDA context):      P = P_bare
* model resident, no work:                  P = P_loaded (context idle, the "parking tax")
* serving at activity a in [0, 1]:          P = P_loaded + (P_serving - P_loaded) * a ** gamma, gamma = 1

``a`` is the fraction of wall time in which the agent had at least one request in flight since the last
reading (a proxy for SM activity). The energy counter integrates that power exactly, in mJ, like NVML's.
Every series the collector derives from this device carries ``simulated="true"`` and the agent logs it.

Per-product figures (W): idle figures from public nvidia-smi snapshots ("S"); P_serving is a sustained
batched-inference peak, an estimate ("E"); the H200's are measured; see :data:`PRODUCTS`. The operator's
own power model (``greenserve.policy.energy``) uses the same figures.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from greenserve.policy.energy import GPU_MODELS, GpuPowerModel
from greenserve_agent.nvml import ClockKind, GpuDevice, MemoryInfo, Utilization


@dataclass(frozen=True)
class SimulatedProduct:
    """What NVML reports about a product; its power figures are the operator's model (one table)."""

    name: str  # as NVML reports it
    power: GpuPowerModel
    memory_gib: int
    sm_clock_max_mhz: int
    mem_clock_mhz: int
    sm_clock_idle_mhz: int = 300

    @property
    def bare_w(self) -> float:
        return self.power.bare_w

    @property
    def loaded_w(self) -> float:
        return self.power.loaded_idle_w

    @property
    def serving_w(self) -> float:
        return self.power.busy_w

    @property
    def limit_w(self) -> float:  # TDP / default power cap
        return self.power.tdp_w


def _sim(name: str, model: str, memory_gib: int, sm_mhz: int, mem_mhz: int) -> SimulatedProduct:
    return SimulatedProduct(name, GPU_MODELS[model], memory_gib, sm_mhz, mem_mhz)


#: NVML identity per product; power from greenserve.policy.energy.GPU_MODELS.
PRODUCTS: dict[str, SimulatedProduct] = {
    "T4": _sim("Tesla T4", "T4", 16, 1590, 5001),
    "L4": _sim("NVIDIA L4", "L4", 24, 2040, 6251),
    "A10": _sim("NVIDIA A10", "A10", 24, 1695, 6251),
    "A10G": _sim("NVIDIA A10G", "A10G", 24, 1710, 6251),
    "A100-PCIE-40GB": _sim("NVIDIA A100-PCIE-40GB", "A100-PCIE-40GB", 40, 1410, 1215),
    "A100-PCIE-80GB": _sim("NVIDIA A100 80GB PCIe", "A100-PCIE-80GB", 80, 1410, 1512),
    "A100-SXM4-80GB": _sim("NVIDIA A100-SXM4-80GB", "A100-SXM", 80, 1410, 1593),
    "H100-PCIE": _sim("NVIDIA H100 PCIe", "H100-PCIE", 80, 1755, 1593),
    "H100-SXM": _sim("NVIDIA H100 80GB HBM3", "H100-SXM", 80, 1980, 2619),
    # As NVML reported it on a real one (tests/gpu/power_profile.py): 140.4 GiB, 3201 MHz memory clock.
    "H200": _sim("NVIDIA H200", "H200", 140, 1980, 3201),
}
DEFAULT_PRODUCT = "T4"
#: Device memory a resident TF Serving model holds in the simulation (context plus a small model).
RESIDENT_MEMORY_BYTES = 1 << 30


def product(key: str) -> SimulatedProduct:
    try:
        return PRODUCTS[key]
    except KeyError:
        raise ValueError(f"unknown simulated GPU {key!r}; one of {', '.join(PRODUCTS)}") from None


class SimulatedState:
    """What the supervisor tells the simulation: is a model resident, and a monotonic count of the seconds
    in which at least one request was in flight (each device derives its own activity from it)."""

    def __init__(self, busy_seconds: Callable[[], float] | None = None) -> None:
        self.resident = False
        self.busy_seconds = busy_seconds or (lambda: 0.0)


class SimulatedDevice:
    def __init__(
        self,
        index: int,
        spec: SimulatedProduct,
        state: SimulatedState,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._index = index
        self.spec = spec
        self._state = state
        self._clock = clock
        self._lock = threading.Lock()
        seed = f"greenserve-sim/{socket.gethostname()}/{index}"
        self._uuid = "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_DNS, seed))
        self._last = clock()
        self._last_busy = state.busy_seconds()
        self._energy_mj = 0.0
        self._power_w = self._model_power(0.0)
        self._activity = 0.0

    def _model_power(self, activity: float) -> float:
        s = self.spec
        if not self._state.resident:
            return s.bare_w
        return s.loaded_w + (s.serving_w - s.loaded_w) * activity

    def _advance(self) -> None:
        """Integrate the power of the elapsed interval, then take the new state's power."""
        with self._lock:
            now = self._clock()
            dt = now - self._last
            if dt <= 0:
                return  # same instant (power then energy in one scrape): keep the reading
            busy = self._state.busy_seconds()
            # The busy fraction of the interval just ended sets that interval's power.
            activity = min(1.0, max(0.0, (busy - self._last_busy) / dt))
            power = self._model_power(activity)
            self._energy_mj += power * dt * 1000.0
            self._last, self._last_busy = now, busy
            self._power_w = power
            self._activity = activity if self._state.resident else 0.0

    @property
    def index(self) -> int:
        return self._index

    def uuid(self) -> str:
        return self._uuid

    def name(self) -> str:
        return self.spec.name

    def power_mw(self) -> int:
        self._advance()
        return round(self._power_w * 1000)

    def total_energy_mj(self) -> int:
        self._advance()
        return int(self._energy_mj)

    def utilization(self) -> Utilization:
        pct = round(self._activity * 100)
        return Utilization(pct, round(pct * 0.4))

    def memory(self) -> MemoryInfo:
        total = self.spec.memory_gib << 30
        return MemoryInfo(RESIDENT_MEMORY_BYTES if self._state.resident else 0, total)

    def clock_mhz(self, kind: ClockKind) -> int:
        s = self.spec
        if kind == "mem":
            return s.mem_clock_mhz if self._state.resident else s.mem_clock_mhz // 10
        if not self._state.resident:
            return s.sm_clock_idle_mhz
        span = s.sm_clock_max_mhz - s.sm_clock_idle_mhz
        return round(s.sm_clock_idle_mhz + span * max(self._activity, 0.5))

    def power_limit_mw(self) -> int:
        return round(self.spec.limit_w * 1000)


class SimulatedNvml:
    """An :class:`~greenserve_agent.nvml.NvmlPort` of ``count`` simulated GPUs of one product."""

    simulated = True

    def __init__(
        self,
        product_key: str = DEFAULT_PRODUCT,
        count: int = 1,
        state: SimulatedState | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state or SimulatedState()
        spec = product(product_key)
        self._devices = [SimulatedDevice(i, spec, self.state, clock) for i in range(count)]

    def devices(self) -> Sequence[GpuDevice]:
        return self._devices

    def shutdown(self) -> None:
        return None
