"""Simulator and benchmark: determinism, energy accounting, node autoscaler, oracle bound, behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest

from greenserve.simulator import traces
from greenserve.simulator.bench import BenchConfig, make_scenario, run_policy
from greenserve.simulator.cli import main
from greenserve.simulator.cluster import Cluster, ClusterConfig, Placement
from greenserve.simulator.engine import Scenario, serve_step

POLICIES = ("static-peak", "hpa", "knative", "greenserve", "oracle")


def _scenario(hours: float = 6.0, seed: int = 1) -> tuple[Scenario, BenchConfig]:
    cfg = BenchConfig(seed=seed)
    tr = traces.diurnal(hours=24.0, step_s=20.0, n_models=cfg.n_models, seed=seed)
    # The afternoon peak and evening ramp-down, after a 6 h warm-up.
    k0 = round(12 * 3600 / tr.step_s)
    w = round(6 * 3600 / tr.step_s)
    n = round(hours * 3600 / tr.step_s)
    tr = traces.Trace(tr.name, tr.step_s, tr.rates[:, k0 - w : k0 + n])
    return Scenario(tr, cfg.models(), cfg.cluster, cfg.metrics_window_s, w), cfg


@pytest.fixture(scope="module")
def results() -> dict[str, object]:
    # The bench's quick diurnal scenario (seed 0): 6 h afternoon peak and ramp-down after a 6 h warm-up.
    cfg = BenchConfig()
    sc = make_scenario("diurnal", cfg, traces.default_traces_dir(), quick=True)
    return {p: run_policy(p, sc, cfg) for p in POLICIES}


def test_synthetic_traces_are_deterministic_by_seed() -> None:
    a = traces.diurnal(hours=2, step_s=10, seed=3)
    b = traces.diurnal(hours=2, step_s=10, seed=3)
    c = traces.diurnal(hours=2, step_s=10, seed=4)
    assert np.array_equal(a.rates, b.rates) and not np.array_equal(a.rates, c.rates)
    assert np.array_equal(traces.bursty(seed=5).rates, traces.bursty(seed=5).rates)


def test_simulation_is_deterministic() -> None:
    sc, cfg = _scenario(hours=1.0)
    r1, r2 = run_policy("greenserve", sc, cfg), run_policy("greenserve", sc, cfg)
    assert r1.total_j == r2.total_j and r1.within_slo == r2.within_slo and r1.moves == r2.moves
    assert np.array_equal(r1.nodes, r2.nodes)


def test_energy_split_adds_up_and_matches_power_series(results: dict[str, object]) -> None:
    for r in results.values():
        total = r.busy_gpu_j + r.idle_gpu_j + r.base_j  # type: ignore[attr-defined]
        assert math.isclose(total, r.total_j, rel_tol=1e-12)  # type: ignore[attr-defined]
        step = r.t[1] - r.t[0]  # type: ignore[attr-defined]
        assert math.isclose(float(r.power_w.sum() * step), total, rel_tol=1e-9)  # type: ignore[attr-defined]
        assert min(r.busy_gpu_j, r.idle_gpu_j, r.base_j) > 0  # type: ignore[attr-defined]


def test_same_work_same_busy_energy(results: dict[str, object]) -> None:
    # Busy energy is linear in served work: policies that serve everything spend the same on it.
    busy = {p: r.busy_gpu_j for p, r in results.items()}  # type: ignore[attr-defined]
    assert busy["greenserve"] == pytest.approx(busy["static-peak"], rel=1e-3)


def test_oracle_is_a_lower_bound(results: dict[str, object]) -> None:
    oracle = results["oracle"]
    for p, r in results.items():
        assert oracle.total_j <= r.total_j + 1e-6, p  # type: ignore[attr-defined]
        assert oracle.node_hours <= r.node_hours + 1e-9, p  # type: ignore[attr-defined]


def test_greenserve_beats_hpa_on_diurnal(results: dict[str, object]) -> None:
    g, h = results["greenserve"], results["hpa"]
    assert g.total_j < h.total_j  # type: ignore[attr-defined]
    assert g.node_hours < h.node_hours  # type: ignore[attr-defined]
    assert g.slo_attainment >= h.slo_attainment  # type: ignore[attr-defined]
    assert results["static-peak"].slo_attainment == pytest.approx(1.0)  # type: ignore[attr-defined]


def test_node_autoscaler_removes_empty_nodes_after_the_delay() -> None:
    c = Cluster(ClusterConfig(gpus_per_node=2, provision_s=60, unneeded_s=600))
    r = c.add_replica(0, 1, 30.0, 0.0)
    c.autoscale_nodes(Placement.MOST_ALLOCATED, 0.0)
    assert len(c.nodes) == 1 and r.node is None  # provisioning
    c.schedule(Placement.MOST_ALLOCATED, 30.0)
    assert r.node is None  # not ready before 60 s
    c.schedule(Placement.MOST_ALLOCATED, 60.0)
    assert r.node is not None and r.is_ready(90.0) and not r.is_ready(89.0)
    c.remove_replica(r.rid, 100.0)
    c.autoscale_nodes(Placement.MOST_ALLOCATED, 699.0)
    assert len(c.nodes) == 1
    c.autoscale_nodes(Placement.MOST_ALLOCATED, 700.0)
    assert len(c.nodes) == 0 and c.nodes_removed == 1


def test_placement_packs_or_spreads() -> None:
    for placement, expect in (
        (Placement.MOST_ALLOCATED, {0: 2, 1: 0}),
        (Placement.LEAST_ALLOCATED, {0: 1, 1: 1}),
    ):
        c = Cluster(ClusterConfig(gpus_per_node=4))
        c.add_node(0.0, ready=True)
        c.add_node(0.0, ready=True)
        for _ in range(2):
            c.add_replica(0, 1, 10.0, 0.0)
        c.schedule(placement, 0.0)
        assert {n.nid: n.used for n in c.nodes.values()} == expect


def test_serve_step_queueing() -> None:
    # No replica: everything waits (cold start) and misses the SLO.
    assert serve_step(10.0, 0, 10.0, 0.0, 5.0, 0.5) == (0.0, 0.0, 50.0)
    # Light load: nearly all within the SLO, nothing queued.
    served, within, q = serve_step(5.0, 2, 10.0, 0.0, 5.0, 0.5)
    assert served == pytest.approx(25.0) and within > 24.9 and q == 0.0
    # Overload: the backlog grows and late arrivals miss.
    served, within, q = serve_step(30.0, 2, 10.0, 0.0, 10.0, 0.5)
    assert served == pytest.approx(200.0) and q == pytest.approx(100.0) and within < 300.0


def test_azure_trace_loads(azure_dir: object) -> None:
    from pathlib import Path

    assert isinstance(azure_dir, Path)
    tr = traces.load_azure(azure_dir / traces.AZURE_FILES["azure-conv"], n_models=4, step_s=10.0, seed=2)
    assert tr.n_models == 4 and 3300 < tr.duration_s < 3700
    assert tr.total_requests() == pytest.approx(19_366)
    scaled = traces.load_azure(azure_dir / traces.AZURE_FILES["azure-conv"], rate_scale=2.5, step_s=10.0)
    assert scaled.total_requests() == pytest.approx(2.5 * 19_366, rel=0.02)
    day = traces.load_azure(azure_dir / traces.AZURE_FILES["azure-code"], stretch=24.0, step_s=60.0)
    assert 22 * 3600 < day.duration_s < 25 * 3600  # the hour is about 57 min


@pytest.fixture
def azure_dir() -> object:
    d = traces.default_traces_dir()
    if not (d / traces.AZURE_FILES["azure-conv"]).is_file():
        pytest.skip(f"Azure traces not found in {d} (shared/data/traces beside the repo)")
    return d


def test_cli_quick_bench_on_diurnal(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    assert main(["bench", "--quick", "--trace", "diurnal", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "SIMULATED" in out and "greenserve" in out and "oracle" in out
    assert (tmp_path / "diurnal.png").stat().st_size > 1000


def test_cli_rejects_unknown_trace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--trace", "nope", "--quick"]) == 2
