"""The simulated NVML device: the documented power model and an exact energy integral."""

from __future__ import annotations

import pytest

from greenserve_agent.simulated import PRODUCTS, SimulatedNvml, SimulatedState


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("key", sorted(PRODUCTS))
def test_power_follows_bare_loaded_serving_states(key: str) -> None:
    spec = PRODUCTS[key]
    assert spec.bare_w < spec.loaded_w < spec.serving_w <= spec.limit_w
    busy = [0.0]
    clock = Clock()
    state = SimulatedState(lambda: busy[0])
    dev = SimulatedNvml(key, 1, state, clock=clock).devices()[0]
    clock.t += 1
    assert dev.power_mw() == round(spec.bare_w * 1000)
    state.resident = True
    clock.t += 1
    assert dev.power_mw() == round(spec.loaded_w * 1000)
    busy[0] += 1.0  # busy half of the next 2 s
    clock.t += 2
    assert dev.power_mw() == round((spec.loaded_w + 0.5 * (spec.serving_w - spec.loaded_w)) * 1000)
    assert dev.utilization().gpu_percent == 50
    assert dev.memory().used_bytes > 0


def test_energy_counter_integrates_power_over_time() -> None:
    clock = Clock()
    busy = [0.0]
    state = SimulatedState(lambda: busy[0])
    devs = SimulatedNvml("T4", 2, state, clock=clock).devices()
    clock.t = 10.0  # 10 s bare at 9 W
    assert [d.total_energy_mj() for d in devs] == [90_000, 90_000]
    state.resident = True
    busy[0] = 2.0
    clock.t = 12.0  # 2 s fully busy at 65 W; both devices see the same activity
    assert [d.total_energy_mj() for d in devs] == [90_000 + 130_000] * 2
    assert devs[1].power_mw() == 65_000  # same instant: the reading is kept, not recomputed
    clock.t = 14.0  # 2 s resident and idle at 26 W
    assert devs[0].total_energy_mj() == 90_000 + 130_000 + 52_000
    assert devs[1].index == 1


def test_unknown_product_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown simulated GPU"):
        SimulatedNvml("GTX-480")
