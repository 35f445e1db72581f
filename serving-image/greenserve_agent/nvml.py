"""The NVML port: what the agent needs from a GPU, as a Protocol, and its pynvml implementation.

The collector talks only to :class:`NvmlPort`/:class:`GpuDevice`, so unit tests inject a fake and machines
without a GPU use :mod:`greenserve_agent.simulated`. Readings are in NVML's native units (mW, mJ, %, bytes,
MHz); the collector converts them to the contract's base units. A reading that NVML cannot provide raises
:class:`FieldUnavailable`, which costs that one field, never the exporter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

log = logging.getLogger(__name__)

ClockKind = Literal["sm", "mem"]
T = TypeVar("T")


class FieldUnavailable(Exception):
    """NVML could not provide one field (NotSupported, NoPermission, GpuIsLost, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NvmlUnavailable(Exception):
    """NVML itself cannot be used here (no driver, no library, no device)."""


@dataclass(frozen=True)
class Utilization:
    gpu_percent: int
    memory_percent: int


@dataclass(frozen=True)
class MemoryInfo:
    used_bytes: int
    total_bytes: int


class GpuDevice(Protocol):
    @property
    def index(self) -> int: ...
    def uuid(self) -> str: ...
    def name(self) -> str: ...
    def power_mw(self) -> int: ...
    def total_energy_mj(self) -> int: ...
    def utilization(self) -> Utilization: ...
    def memory(self) -> MemoryInfo: ...
    def clock_mhz(self, kind: ClockKind) -> int: ...
    def power_limit_mw(self) -> int: ...


class NvmlPort(Protocol):
    @property
    def simulated(self) -> bool: ...
    def devices(self) -> Sequence[GpuDevice]: ...
    def shutdown(self) -> None: ...


# --- pynvml ---------------------------------------------------------------------------------------------


def _error_name(exc: BaseException) -> str:
    """`NVMLError_NotSupported` -> `NotSupported`; falls back to the exception's text."""
    cls = type(exc).__name__
    return cls.removeprefix("NVMLError_") if cls.startswith("NVMLError_") else (str(exc) or cls)


class PynvmlDevice:
    def __init__(self, nvml: Any, index: int) -> None:
        self._n = nvml
        self._index = index
        self._handle = self._call(nvml.nvmlDeviceGetHandleByIndex, index)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except self._n.NVMLError as exc:
            raise FieldUnavailable(_error_name(exc)) from exc

    @property
    def index(self) -> int:
        return self._index

    def uuid(self) -> str:
        return _text(self._call(self._n.nvmlDeviceGetUUID, self._handle))

    def name(self) -> str:
        return _text(self._call(self._n.nvmlDeviceGetName, self._handle))

    def power_mw(self) -> int:
        return int(self._call(self._n.nvmlDeviceGetPowerUsage, self._handle))

    def total_energy_mj(self) -> int:
        # Volta and newer; mJ since the driver was last loaded.
        return int(self._call(self._n.nvmlDeviceGetTotalEnergyConsumption, self._handle))

    def utilization(self) -> Utilization:
        rates = self._call(self._n.nvmlDeviceGetUtilizationRates, self._handle)
        return Utilization(int(rates.gpu), int(rates.memory))

    def memory(self) -> MemoryInfo:
        info = self._call(self._n.nvmlDeviceGetMemoryInfo, self._handle)
        return MemoryInfo(int(info.used), int(info.total))

    def clock_mhz(self, kind: ClockKind) -> int:
        clock = self._n.NVML_CLOCK_SM if kind == "sm" else self._n.NVML_CLOCK_MEM
        return int(self._call(self._n.nvmlDeviceGetClockInfo, self._handle, clock))

    def power_limit_mw(self) -> int:
        # The enforced limit accounts for every limiter (user cap, default, board).
        return int(self._call(self._n.nvmlDeviceGetEnforcedPowerLimit, self._handle))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class PynvmlPort:
    """The real NVML through ``pynvml`` (provided by the ``nvidia-ml-py`` distribution)."""

    simulated = False

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as exc:
            raise NvmlUnavailable(f"pynvml is not installed: {exc}") from exc
        self._n = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"nvmlInit failed: {_error_name(exc)}") from exc
        try:
            count = int(pynvml.nvmlDeviceGetCount())
            devices: list[PynvmlDevice] = []
            for i in range(count):
                try:
                    devices.append(PynvmlDevice(pynvml, i))
                except FieldUnavailable as exc:
                    # A lost or inaccessible GPU is skipped; the others are still exported.
                    log.warning("GPU %d is not readable (%s); skipping it", i, exc.reason)
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise NvmlUnavailable(f"cannot enumerate GPUs: {_error_name(exc)}") from exc
        if not devices:
            pynvml.nvmlShutdown()
            raise NvmlUnavailable("NVML sees no GPU")
        self._devices = devices

    def devices(self) -> Sequence[GpuDevice]:
        return self._devices

    def shutdown(self) -> None:
        try:
            self._n.nvmlShutdown()
        except self._n.NVMLError as exc:  # already shut down: nothing to release
            log.debug("nvmlShutdown: %s", _error_name(exc))
