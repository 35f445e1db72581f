"""The energy lower bound (simulator/bound.py): below every simulated policy at its own SLO, tight where
the optimum is known, and monotone in the SLO target."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenserve.simulator import traces
from greenserve.simulator.bench import POLICY_NAMES, BenchConfig, make_scenario, run_policy
from greenserve.simulator.bound import (
    energy_lower_bound,
    gpu_hours_bound,
    node_prices,
    startup_aware_bound,
    whole_node_bound,
    whole_node_dual,
)
from greenserve.simulator.engine import Scenario, run_oracle


@pytest.mark.parametrize("trace", ["diurnal", "bursty"])
def test_no_policy_beats_the_bound_at_its_own_attainment(trace: str) -> None:
    cfg = BenchConfig()
    sc = make_scenario(trace, cfg, traces.default_traces_dir(), quick=True)
    for name in POLICY_NAMES:
        r = run_policy(name, sc, cfg)
        b = energy_lower_bound(sc, r.slo_attainment)
        # Busy energy counts every measured arrival; a policy's backlog across the window edges shifts
        # its own by far less than 0.1%.
        assert b.total_j <= r.total_j * 1.001, (name, b.kwh, r.total_j / 3.6e6)


def test_bound_equals_the_oracle_where_packing_is_exact() -> None:
    # 8 models at a constant rate that needs the same replica count each: whole nodes, no bare GPU, so
    # the perfectly packed oracle is optimal and the bound must meet it.
    cfg = BenchConfig()
    rates = np.full((cfg.n_models, 200), 42.0)
    sc = Scenario(traces.Trace("flat", 10.0, rates), cfg.models(), cfg.cluster, cfg.metrics_window_s, 20)
    o = run_oracle(sc)
    assert int(o.nodes[0]) * cfg.cluster.gpus_per_node == int(o.replicas[0])  # exact packing
    b = energy_lower_bound(sc, o.slo_attainment)
    assert math.isclose(b.total_j, o.total_j, rel_tol=1e-3)
    # Its GPU-hours are the oracle's: the cost above the busy energy is a replica's power per GPU.
    assert math.isclose(gpu_hours_bound(sc, b), o.gpu_hours, rel_tol=1e-3)
    # Asking for less lets the bound mix in steps with a replica fewer: strictly cheaper.
    assert energy_lower_bound(sc, o.slo_attainment - 0.01).total_j < b.total_j * 0.999
    # Whole nodes change nothing where the oracle fills whole nodes: it still meets the oracle.
    assert math.isclose(whole_node_bound(sc, o.slo_attainment).total_j, o.total_j, rel_tol=1e-3)


def test_bound_grows_with_the_target() -> None:
    cfg = BenchConfig()
    sc = make_scenario("diurnal", cfg, traces.default_traces_dir(), quick=True)
    values = [energy_lower_bound(sc, a).total_j for a in (0.9, 0.99, 0.995, 0.999)]
    assert values == sorted(values) and values[0] < values[-1]


@pytest.mark.parametrize("trace", ["diurnal", "bursty"])
def test_policies_that_keep_a_replica_never_beat_the_floored_bound(trace: str) -> None:
    # HPA-like, static peak and greenserve run at least one ready replica per model all the time (warm
    # start, minReplicas 1, start-before-stop moves); the bound with that floor holds for them, and it
    # is never below the bound for any policy.
    cfg = BenchConfig()
    sc = make_scenario(trace, cfg, traces.default_traces_dir(), quick=True)
    for name in ("static-peak", "hpa", "greenserve"):
        r = run_policy(name, sc, cfg)
        b = energy_lower_bound(sc, r.slo_attainment, min_replicas=1)
        assert b.total_j <= r.total_j * 1.001, (name, b.kwh, r.total_j / 3.6e6)
        assert b.total_j >= energy_lower_bound(sc, r.slo_attainment).total_j
        # With nodes charged whole: never below the fractional bound, still below every run.
        nodes = whole_node_bound(sc, r.slo_attainment, min_replicas=1)
        assert b.total_j * (1 - 1e-9) <= nodes.total_j <= r.total_j * 1.001, (name, nodes.kwh)


def test_the_floor_binds_where_a_model_could_go_without_replicas() -> None:
    # One busy model and seven with a request every few minutes: the bound for any policy lets the seven
    # answer nothing in time (too few requests to matter at 99%); with a replica each kept, it pays for
    # seven replicas all the time.
    cfg = BenchConfig()
    rates = np.full((cfg.n_models, 200), 0.01)
    rates[0] = 60.0
    sc = Scenario(traces.Trace("sparse", 10.0, rates), cfg.models(), cfg.cluster, cfg.metrics_window_s, 20)
    free = energy_lower_bound(sc, 0.99)
    floored = energy_lower_bound(sc, 0.99, min_replicas=1)
    per_replica_w = 30.0 + cfg.cluster.base_w / cfg.cluster.gpus_per_node  # L4 loaded idle + node share
    seven_replicas_j = 7 * per_replica_w * 180 * 10.0
    assert floored.total_j - free.total_j == pytest.approx(seven_replicas_j, rel=0.02)


@pytest.mark.parametrize("trace", ["diurnal", "bursty"])
def test_the_startup_aware_bound_is_tighter_and_still_below_every_policy_that_keeps_a_replica(
    trace: str,
) -> None:
    cfg = BenchConfig()
    sc = make_scenario(trace, cfg, traces.default_traces_dir(), quick=True)
    for name in ("static-peak", "hpa", "greenserve"):
        r = run_policy(name, sc, cfg)
        tight = startup_aware_bound(sc, r.slo_attainment, min_replicas=1)
        assert tight.total_j <= r.total_j * 1.001, (name, tight.kwh, r.total_j / 3.6e6)
        assert tight.total_j >= energy_lower_bound(sc, r.slo_attainment, min_replicas=1).total_j * 0.9999


def test_every_start_is_charged_its_cold_start() -> None:
    # One model whose rate alternates between a level that needs one replica and one that needs several,
    # every 20 steps: the plain bound follows it for free; with starts charged the bound either pays for
    # the starts or keeps the replicas through the low phases, and is strictly higher.
    cfg = BenchConfig()
    rates = np.full((cfg.n_models, 400), 1.0)
    rates[0] = np.where((np.arange(400) // 20) % 2 == 0, 5.0, 60.0)
    sc = Scenario(traces.Trace("steps", 10.0, rates), cfg.models(), cfg.cluster, cfg.metrics_window_s, 20)
    plain = energy_lower_bound(sc, 0.995, min_replicas=1)
    tight = startup_aware_bound(sc, 0.995, min_replicas=1)
    assert tight.total_j > plain.total_j * 1.005
    # A flat trace needs no start after the first cold start of the window: the two agree.
    flat = Scenario(
        traces.Trace("flat", 10.0, np.full((cfg.n_models, 200), 42.0)), cfg.models(), cfg.cluster, 30.0, 20
    )
    assert startup_aware_bound(flat, 0.995).total_j == pytest.approx(
        energy_lower_bound(flat, 0.995, min_replicas=1).total_j, rel=1e-6
    )


def test_a_fleet_one_gpu_over_a_node_is_charged_two_whole_nodes() -> None:
    # Nine models at a rate one replica serves, each kept at a replica: every step holds nine GPUs, so
    # two nodes (8 GPUs each), one of them with seven bare GPUs. Packed into fractional nodes the bound
    # charged 9/8 of a node; whole, it charges two and the bare GPUs' power. HPA-like pays that too.
    cfg = BenchConfig()
    n_steps, warm = 200, 20
    models = tuple(dataclasses.replace(cfg.models()[0], name=f"m{i}") for i in range(9))
    sc = Scenario(traces.Trace("nine", 10.0, np.full((9, n_steps), 1.0)), models, cfg.cluster, 30.0, warm)
    fractional = energy_lower_bound(sc, 0.995, min_replicas=1)
    whole = whole_node_bound(sc, 0.995, min_replicas=1)
    _, b = node_prices(sc)
    missing = (n_steps - warm) * (2 * b - 9 * b / cfg.cluster.gpus_per_node)  # 7/8 of a node per step
    assert whole.total_j - fractional.total_j == pytest.approx(missing, rel=0.01)
    r = run_policy("hpa", sc, cfg)
    assert r.slo_attainment >= 0.995 and whole.total_j <= r.total_j
    with pytest.raises(ValueError, match="not GPUs"):
        gpu_hours_bound(sc, whole)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(2, 4),
    st.integers(1, 3),
    st.integers(0, 1),
    st.lists(st.floats(0.0, 50.0), min_size=12, max_size=12),
    st.floats(0.0, 400.0),
)
def test_whole_nodes_never_price_a_step_below_its_best_configuration(
    n_models: int, width: int, per_node: int, min_replicas: int, within: list[float], y: float
) -> None:
    # One step, any table of within-SLO requests: the whole-node value (bound.whole_node_steps, with
    # the multipliers it tries) is at most the least a G + b ceil(G / gpus_per_node) - y W over every
    # configuration, enumerated, and at least the fractional-node value.
    cfg = BenchConfig()
    cluster = dataclasses.replace(cfg.cluster, gpus_per_node=per_node)
    models = tuple(dataclasses.replace(cfg.models()[0], name=f"m{i}") for i in range(n_models))
    sc = Scenario(traces.Trace("one", 10.0, np.ones((n_models, 2))), models, cluster, 30.0, 1)
    table = np.array(within[: n_models * width]).reshape(n_models, 1, width)
    fractional, whole = whole_node_dual(sc, table, min_replicas)
    a, b = node_prices(sc)
    best = min(
        a * sum(cs) + b * math.ceil(sum(cs) / per_node) - y * sum(table[m, 0, c] for m, c in enumerate(cs))
        for cs in itertools.product(range(min_replicas, width), repeat=n_models)
    )
    scale = abs(best) + b
    assert whole(y) <= best + 1e-9 * scale
    assert fractional(y) <= whole(y) + 1e-9 * scale
