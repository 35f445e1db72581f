"""The NVML collector over a fake NVML port: units, types, degradation, counter resets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from greenserve import contract as k
from greenserve_agent.collectors import EnergyCounter, GpuCollector, GpuSampler
from greenserve_agent.nvml import ClockKind, FieldUnavailable, GpuDevice, MemoryInfo, Utilization


@dataclass
class FakeDevice:
    idx: int
    power: int = 70_500  # mW
    energy: int = 1_000_000  # mJ
    util: tuple[int, int] = (37, 12)
    mem: tuple[int, int] = (3 << 30, 16 << 30)
    clocks: dict[str, int] = field(default_factory=lambda: {"sm": 1590, "mem": 5001})
    limit: int = 70_000
    fail: dict[str, Exception] = field(default_factory=dict)

    def _check(self, name: str) -> None:
        if name in self.fail:
            raise self.fail[name]

    @property
    def index(self) -> int:
        return self.idx

    def uuid(self) -> str:
        return f"GPU-fake-{self.idx}"

    def name(self) -> str:
        return "Tesla T4"

    def power_mw(self) -> int:
        self._check("power")
        return self.power

    def total_energy_mj(self) -> int:
        self._check("energy")
        return self.energy

    def utilization(self) -> Utilization:
        self._check("utilization")
        return Utilization(*self.util)

    def memory(self) -> MemoryInfo:
        self._check("memory")
        return MemoryInfo(*self.mem)

    def clock_mhz(self, kind: ClockKind) -> int:
        self._check(f"{kind}_clock")
        return self.clocks[kind]

    def power_limit_mw(self) -> int:
        self._check("power_limit")
        return self.limit


class FakePort:
    def __init__(self, devices: Sequence[FakeDevice], simulated: bool = False) -> None:
        self._devices = list(devices)
        self.simulated = simulated

    def devices(self) -> Sequence[GpuDevice]:
        return self._devices

    def shutdown(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def scrape(sampler: GpuSampler) -> dict[str, tuple[str, list[tuple[dict[str, str], float]]]]:
    registry = CollectorRegistry()
    registry.register(GpuCollector(sampler))
    text = generate_latest(registry).decode()
    out: dict[str, tuple[str, list[tuple[dict[str, str], float]]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, (fam.type, []))[1].append((s.labels, s.value))
    return out


def test_fields_are_exported_in_base_units_with_contract_names_and_types() -> None:
    dev = FakeDevice(0)
    sampler = GpuSampler(FakePort([dev]))
    sampler.sample()  # baseline of the energy counter
    dev.energy += 2_500  # mJ
    m = scrape(sampler)
    labels = {"gpu": "0", "uuid": "GPU-fake-0", "simulated": "false"}
    assert m[k.GPU_POWER.name] == ("gauge", [(labels, 70.5)])
    assert m[k.GPU_ENERGY.name] == ("counter", [(labels, 2.5)])
    assert m[k.GPU_UTILIZATION.name][1] == [(labels, 0.37)]
    assert m[k.GPU_MEMORY_UTILIZATION.name][1] == [(labels, 0.12)]
    assert m[k.GPU_MEMORY_USED.name][1] == [(labels, float(3 << 30))]
    assert m[k.GPU_MEMORY_TOTAL.name][1] == [(labels, float(16 << 30))]
    assert m[k.GPU_SM_CLOCK.name][1] == [(labels, 1590e6)]
    assert m[k.GPU_MEMORY_CLOCK.name][1] == [(labels, 5001e6)]
    assert m[k.GPU_POWER_LIMIT.name][1] == [(labels, 70.0)]
    # An info family is a gauge of value 1 in the Prometheus text format.
    assert m[k.GPU_INFO.name] == ("gauge", [({**labels, "name": "Tesla T4"}, 1.0)])
    assert m[k.AGENT_SIMULATED.name] == ("gauge", [({}, 0.0)])


@pytest.mark.parametrize("reason", ["NotSupported", "NoPermission", "GpuIsLost"])
def test_an_nvml_error_costs_one_field_not_the_exporter(reason: str) -> None:
    bad = FakeDevice(0, fail={"sm_clock": FieldUnavailable(reason), "power_limit": RuntimeError("boom")})
    good = FakeDevice(1)
    sampler = GpuSampler(FakePort([bad, good]))
    m = scrape(sampler)
    m = scrape(sampler)
    assert [lbl["gpu"] for lbl, _ in m[k.GPU_SM_CLOCK.name][1]] == ["1"]
    assert [lbl["gpu"] for lbl, _ in m[k.GPU_POWER_LIMIT.name][1]] == ["1"]
    assert sorted(lbl["gpu"] for lbl, _ in m[k.GPU_POWER.name][1]) == ["0", "1"]
    errors = {(lbl["gpu"], lbl["field"]): v for lbl, v in m[k.GPU_READ_ERRORS.name][1]}
    assert errors == {("0", "sm_clock"): 2.0, ("0", "power_limit"): 2.0}


def test_energy_counter_survives_a_driver_counter_reset() -> None:
    c = EnergyCounter()
    assert c.observe_mj(5_000_000) == 0.0  # first reading is the baseline
    assert c.observe_mj(5_004_000) == pytest.approx(4.0)
    assert c.observe_mj(1_500) == pytest.approx(5.5)  # driver reloaded: 1.5 J since the reset
    assert c.observe_mj(3_500) == pytest.approx(7.5)
    assert c.resets == 1


def test_exported_energy_never_decreases_across_reset() -> None:
    dev = FakeDevice(0, energy=9_000_000)
    sampler = GpuSampler(FakePort([dev]))
    values = []
    for raw in (9_000_000, 9_010_000, 200, 10_200):
        dev.energy = raw
        values.append(sampler.sample()[0].energy_j)
    assert values == pytest.approx([0.0, 10.0, 10.2, 20.2])


def test_unsupported_energy_counter_falls_back_to_integrating_power() -> None:
    clock = Clock()
    dev = FakeDevice(0, power=100_000, fail={"energy": FieldUnavailable("NotSupported")})
    sampler = GpuSampler(FakePort([dev]), clock=clock)
    assert sampler.sample()[0].energy_j == 0.0
    clock.t += 10
    dev.power = 200_000
    # trapezoid over 10 s between 100 W and 200 W
    assert sampler.sample()[0].energy_j == pytest.approx(1500.0)
    assert sampler.read_errors == {(0, "energy"): 1}  # not retried every scrape


def test_simulated_port_labels_every_gpu_series() -> None:
    sampler = GpuSampler(FakePort([FakeDevice(0)], simulated=True))
    m = scrape(sampler)
    for spec in (k.GPU_POWER, k.GPU_UTILIZATION, k.GPU_MEMORY_USED, k.GPU_INFO):
        assert all(lbl["simulated"] == "true" for lbl, _ in m[spec.name][1]), spec.name
    assert m[k.AGENT_SIMULATED.name][1] == [({}, 1.0)]
