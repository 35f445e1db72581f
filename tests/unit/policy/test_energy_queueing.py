from __future__ import annotations

import math

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
