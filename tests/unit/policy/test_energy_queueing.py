from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from greenserve.policy import energy, queueing


def test_power_model_states() -> None:
    h100 = energy.gpu_model_for("NVIDIA-H100-80GB-HBM3")
    assert h100.product == "H100-SXM"
    assert h100.power_w(0.5, loaded=False) == h100.bare_w
    assert h100.power_w(0.0) == h100.loaded_idle_w
    assert h100.power_w(2.0) == h100.busy_w  # clamped
    assert energy.gpu_model_for("Tesla-T4").product == "T4"
    assert energy.gpu_model_for("NVIDIA-A100-SXM4-80GB").product == "A100-SXM"
    assert energy.gpu_model_for(None).product == energy.DEFAULT_GPU_PRODUCT


def test_an_h200_is_priced_at_its_measured_power_not_the_default_products() -> None:
    # GPU feature discovery's label and NVML's name; before the H200 had its own figures it fell back to the
    # L4's (15/30/68 W), a tenth of its parking tax and busy power.
    for product in ("NVIDIA-H200", "NVIDIA H200"):
        h200 = energy.gpu_model_for(product)
        assert h200.product == "H200"
        assert (h200.bare_w, h200.loaded_idle_w, h200.busy_w) == (79, 122, 688)
        assert h200.loaded_idle_w - h200.bare_w > 2 * (
            energy.GPU_MODELS["L4"].loaded_idle_w - energy.GPU_MODELS["L4"].bare_w
        )


def test_the_h200_figures_are_the_ones_measured_on_one() -> None:
    # tests/gpu/power_profile.py's output on a real H200; the table's figures are its states, rounded.
    path = Path(__file__).parents[2] / "gpu" / "measured" / "h200-2026-12-04.json"
    measured = {s["name"]: s["power_w"] for s in json.loads(path.read_text())["states"]}
    h200 = energy.GPU_MODELS["H200"]
    assert h200.bare_w == round(measured["bare"])
    assert h200.loaded_idle_w == round(measured["ctx1"])
    assert h200.busy_w == round(measured["heavy@1.0"])


def test_counter_delta_survives_resets() -> None:
    assert energy.counter_delta(100.0, 150.0) == 50.0
    assert energy.counter_delta(100.0, 20.0) == 20.0
    assert energy.counter_delta(None, 5.0) == 5.0


def test_carbon_and_break_even() -> None:
    assert energy.grams_co2e(3.6e6, 400) == pytest.approx(400)
    assert energy.break_even_idle_s(30.0, 1800.0, 10.0) == 60.0
    assert energy.break_even_idle_s(30.0, 100.0, 10.0) == 10.0  # never shorter than a cold start
    assert math.isinf(energy.break_even_idle_s(0.0, 100.0, 10.0))


def test_erlang_c_and_p95() -> None:
    assert queueing.erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert queueing.p95_response_s(10, 100, 1) < queueing.p95_response_s(90, 100, 1)
    assert math.isinf(queueing.p95_response_s(200, 100, 2))
    c = queueing.replicas_for_slo(150, 100, 0.05)
    assert queueing.p95_response_s(150, 100, c) <= 0.05 < queueing.p95_response_s(150, 100, c - 1)
