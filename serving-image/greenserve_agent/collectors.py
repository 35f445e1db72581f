"""A prometheus_client Collector over the NVML port: one NVML read per field per scrape.

Each field is read on its own, so a GPU that answers NotSupported for the energy counter (pre-Volta, MIG)
or NoPermission for clocks still exports everything else; the failed field is absent (never 0) and counted
in ``greenserve_gpu_read_errors_total{field=...}``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from greenserve import contract as k
from greenserve_agent.nvml import FieldUnavailable, GpuDevice, NvmlPort

log = logging.getLogger(__name__)
T = TypeVar("T")


class EnergyCounter:
    """Joules since the agent started, from NVML's mJ counter, monotonic across counter resets.

    NVML's counter restarts at 0 when the driver reloads (or the GPU resets). A reading below the previous
    one is taken as a reset and the new reading as the energy since it, so the exported counter never goes
    backwards. Where the counter is unsupported the caller integrates power instead (:meth:`add_power`).
    """

    def __init__(self) -> None:
        self._last_mj: int | None = None
        self._joules = 0.0
        self.resets = 0

    @property
    def joules(self) -> float:
        return self._joules

    def observe_mj(self, raw_mj: int) -> float:
        if self._last_mj is not None:
            if raw_mj >= self._last_mj:
                self._joules += (raw_mj - self._last_mj) / 1000.0
            else:
                self.resets += 1
                self._joules += raw_mj / 1000.0
        self._last_mj = raw_mj
        return self._joules

    def add_power(self, watts: float, seconds: float) -> float:
        self._joules += watts * max(0.0, seconds)
        return self._joules


@dataclass
class GpuSample:
    index: int
    uuid: str
    name: str
    power_w: float | None = None
    energy_j: float | None = None
    utilization: float | None = None
    memory_utilization: float | None = None
    memory_used_bytes: float | None = None
    memory_total_bytes: float | None = None
    sm_clock_hz: float | None = None
    memory_clock_hz: float | None = None
    power_limit_w: float | None = None
    errors: list[str] = field(default_factory=list)


class _DeviceState:
    def __init__(self) -> None:
        self.energy = EnergyCounter()
        self.energy_supported = True
        self.last_power: tuple[float, float] | None = None  # (monotonic time, watts) for the fallback


class GpuSampler:
    """Reads every device of a port into :class:`GpuSample`; thread-safe (scrapes may overlap)."""

    def __init__(self, port: NvmlPort, clock: Callable[[], float] = time.monotonic) -> None:
        self.port = port
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[int, _DeviceState] = {}
        self.read_errors: dict[tuple[int, str], int] = {}
        self._warned: set[tuple[int, str]] = set()

    def _read(self, dev: GpuDevice, name: str, fn: Callable[[], T], sample: GpuSample) -> T | None:
        try:
            return fn()
        except FieldUnavailable as exc:
            reason = exc.reason
        except Exception as exc:  # an unexpected NVML failure must not take the exporter down
            reason = f"{type(exc).__name__}: {exc}"
        key = (dev.index, name)
        self.read_errors[key] = self.read_errors.get(key, 0) + 1
        sample.errors.append(name)
        if key not in self._warned:
            self._warned.add(key)
            log.warning("GPU %d: %s unavailable (%s); exporting it as absent", dev.index, name, reason)
        return None

    def sample(self) -> list[GpuSample]:
        with self._lock:
            return [self._sample_one(dev) for dev in self.port.devices()]

    def _sample_one(self, dev: GpuDevice) -> GpuSample:
        st = self._state.setdefault(dev.index, _DeviceState())
        s = GpuSample(dev.index, "", "")
        s.uuid = self._read(dev, "uuid", dev.uuid, s) or ""
        s.name = self._read(dev, "name", dev.name, s) or ""
        now = self._clock()
        mw = self._read(dev, "power", dev.power_mw, s)
        s.power_w = None if mw is None else mw / 1000.0
        if st.energy_supported:
            raw = self._read(dev, "energy", dev.total_energy_mj, s)
            if raw is not None:
                s.energy_j = st.energy.observe_mj(raw)
            elif "energy" in s.errors:
                # Not supported here (pre-Volta, MIG): integrate power from now on instead.
                st.energy_supported = False
        if not st.energy_supported and s.power_w is not None:
            if st.last_power is not None:
                t0, w0 = st.last_power
                st.energy.add_power((w0 + s.power_w) / 2.0, now - t0)  # trapezoid
            s.energy_j = st.energy.joules
        if s.power_w is not None:
            st.last_power = (now, s.power_w)
        util = self._read(dev, "utilization", dev.utilization, s)
        if util is not None:
            s.utilization = util.gpu_percent / 100.0
            s.memory_utilization = util.memory_percent / 100.0
        mem = self._read(dev, "memory", dev.memory, s)
        if mem is not None:
            s.memory_used_bytes = float(mem.used_bytes)
            s.memory_total_bytes = float(mem.total_bytes)
        sm = self._read(dev, "sm_clock", lambda: dev.clock_mhz("sm"), s)
        s.sm_clock_hz = None if sm is None else sm * 1e6
        memclk = self._read(dev, "memory_clock", lambda: dev.clock_mhz("mem"), s)
        s.memory_clock_hz = None if memclk is None else memclk * 1e6
        limit = self._read(dev, "power_limit", dev.power_limit_mw, s)
        s.power_limit_w = None if limit is None else limit / 1000.0
        return s


_GAUGES: tuple[tuple[k.MetricSpec, str], ...] = (
    (k.GPU_POWER, "power_w"),
    (k.GPU_UTILIZATION, "utilization"),
    (k.GPU_MEMORY_UTILIZATION, "memory_utilization"),
    (k.GPU_MEMORY_USED, "memory_used_bytes"),
    (k.GPU_MEMORY_TOTAL, "memory_total_bytes"),
    (k.GPU_SM_CLOCK, "sm_clock_hz"),
    (k.GPU_MEMORY_CLOCK, "memory_clock_hz"),
    (k.GPU_POWER_LIMIT, "power_limit_w"),
)


class GpuCollector(Collector):
    """Exports the contract's GPU families; every series carries ``simulated`` so no reader mistakes a
    simulated watt for a measured one."""

    def __init__(self, sampler: GpuSampler) -> None:
        self.sampler = sampler

    def collect(self) -> Iterable[Metric]:
        samples = self.sampler.sample()
        sim = "true" if self.sampler.port.simulated else "false"
        for spec, attr in _GAUGES:
            gauge = GaugeMetricFamily(spec.family, spec.help, labels=spec.labels)
            for s in samples:
                value = getattr(s, attr)
                if value is not None:
                    gauge.add_metric([str(s.index), s.uuid, sim], value)
            yield gauge
        energy = CounterMetricFamily(k.GPU_ENERGY.family, k.GPU_ENERGY.help, labels=k.GPU_ENERGY.labels)
        for s in samples:
            if s.energy_j is not None:
                energy.add_metric([str(s.index), s.uuid, sim], s.energy_j)
        yield energy
        info = InfoMetricFamily(k.GPU_INFO.family, k.GPU_INFO.help, labels=())
        for s in samples:
            info.add_metric(
                [],
                {
                    k.LABEL_GPU: str(s.index),
                    k.LABEL_UUID: s.uuid,
                    k.LABEL_GPU_NAME: s.name,
                    k.LABEL_SIMULATED: sim,
                },
            )
        yield info
        errors = CounterMetricFamily(
            k.GPU_READ_ERRORS.family, k.GPU_READ_ERRORS.help, labels=k.GPU_READ_ERRORS.labels
        )
        for (index, name), count in sorted(self.sampler.read_errors.items()):
            errors.add_metric([str(index), name], count)
        yield errors
        simulated = GaugeMetricFamily(k.AGENT_SIMULATED.family, k.AGENT_SIMULATED.help)
        simulated.add_metric([], 1.0 if self.sampler.port.simulated else 0.0)
        yield simulated
