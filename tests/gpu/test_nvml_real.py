"""The real NVML path (nvidia-ml-py): run on a GPU machine with ``pytest -m gpu tests/gpu -s``.

Skips cleanly where NVML cannot initialise (no driver, no library, no GPU).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from greenserve import contract as k
from greenserve_agent.collectors import GpuCollector, GpuSampler
from greenserve_agent.nvml import NvmlUnavailable, PynvmlPort

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def port() -> Iterator[PynvmlPort]:
    try:
        p = PynvmlPort()
    except NvmlUnavailable as exc:
        pytest.skip(f"no usable NVML here: {exc}")
    yield p
    p.shutdown()


def test_every_gpu_reads_through_nvml(port: PynvmlPort) -> None:
    sampler = GpuSampler(port)
    first = sampler.sample()
    time.sleep(2.0)
    second = sampler.sample()
    assert port.simulated is False and len(second) >= 1
    for a, b in zip(first, second, strict=True):
        print(f"\nGPU {b.index} {b.name} {b.uuid}: {b}")
        assert b.uuid.startswith(("GPU-", "MIG-"))
        assert b.name
        # Fields NVML refuses (NotSupported/NoPermission) are None and listed, never zero.
        for name in b.errors:
            print(f"  unavailable: {name}")
        if b.power_w is not None:
            assert 0 < b.power_w < 2000
        if b.power_limit_w is not None and b.power_w is not None:
            assert b.power_w <= b.power_limit_w * 1.5
        if b.memory_total_bytes is not None and b.memory_used_bytes is not None:
            assert 0 <= b.memory_used_bytes <= b.memory_total_bytes
        if b.utilization is not None:
            assert 0.0 <= b.utilization <= 1.0
        if b.sm_clock_hz is not None:
            assert b.sm_clock_hz > 1e6
        # The counter (or the power integral where unsupported) advances with an idle GPU's power.
        assert a.energy_j is not None and b.energy_j is not None
        assert b.energy_j > a.energy_j
        if b.power_w is not None:
            assert b.energy_j - a.energy_j < b.power_w * 2.0 * 5


def test_exposition_is_labelled_real(port: PynvmlPort) -> None:
    registry = CollectorRegistry()
    registry.register(GpuCollector(GpuSampler(port)))
    text = generate_latest(registry).decode()
    print("\n" + text)
    assert f'{k.GPU_POWER.name}{{gpu="0"' in text or "read_errors" in text
    assert 'simulated="false"' in text
    assert f"{k.AGENT_SIMULATED.name} 0.0" in text
