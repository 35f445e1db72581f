"""Shared GPUs in the simulator (engine.serve_shared, pool GPUs, the activator), greenserve with the
placement policy (simulator/sharing.py) and the sharing-aware bound (bound.sharing_aware_bound)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenserve.policy.queueing import shared_attainment
from greenserve.policy.sharing import Sharing
from greenserve.simulator import traces
from greenserve.simulator.bound import (
    SharedPrice,
    energy_lower_bound,
    gpu_hours_bound,
    node_prices,
    sharing_aware_bound,
)
from greenserve.simulator.cluster import ClusterConfig
from greenserve.simulator.engine import (
    POOL,
    POOL_RESERVED_GIB,
    ModelSpec,
    Result,
    Scenario,
    Simulation,
    serve_shared,
    serve_step,
)
from greenserve.simulator.policies import Greenserve, HpaLike
from greenserve.simulator.sharing import GreenserveShared

DT = 10.0


def _scenario(
    rates: np.ndarray, *, warm: int = 30, timeout: float | None = None, service_s: float = 0.1
) -> Scenario:
    models = tuple(
        ModelSpec(f"m{i}", 1.0 / service_s, 60.0, service_s * 5000.0, memory_gib=2.0)
        for i in range(rates.shape[0])
    )
    return Scenario(
        traces.Trace("t", DT, rates.astype(np.float64)),
        models,
        ClusterConfig(),
        30.0,
        warm,
        activator_timeout_s=timeout,
    )


def test_one_model_on_a_shared_gpu_is_one_replica_below_saturation() -> None:
    for lam, backlog in ((0.5, 0.0), (3.0, 0.0), (6.0, 20.0)):
        served, within, new, busy = serve_shared([lam], [0.1], [backlog], DT, [0.5])
        ref = serve_step(lam, 1, 10.0, backlog, DT, 0.5)
        assert served[0] == pytest.approx(ref[0]) and within[0] == pytest.approx(ref[1])
        assert new[0] == pytest.approx(ref[2]) and busy == pytest.approx(served[0] * 0.1)


def test_a_shared_gpu_slows_as_it_saturates() -> None:
    # Five models: the more load the GPU carries, the smaller each one's share within the SLO.
    shares = []
    for lam in (0.1, 0.5, 1.0, 1.5, 1.9, 2.5):
        _, within, _, busy = serve_shared([lam] * 5, [0.1] * 5, [0.0] * 5, DT, [0.5] * 5)
        shares.append(within[0] / (lam * DT))
        assert busy <= DT + 1e-9
    assert shares == sorted(shares, reverse=True) and shares[-1] == 0.0 and shares[0] > 0.99


def test_idle_power_of_a_shared_gpu_is_counted_once() -> None:
    # Eight models of 0.05 req/s each (0.5% of a GPU): greenserve shares one GPU, HPA-like holds eight.
    rates = np.full((8, 150), 0.05)
    sc = _scenario(rates)
    shared = Simulation(sc).run(GreenserveShared(slo_attainment=0.995))
    whole = Simulation(sc).run(HpaLike())
    hours = sc.trace.step_s * (sc.trace.n_steps - sc.warmup_steps) / 3600.0
    assert shared.gpu_hours == pytest.approx(hours) and shared.shared_gpu_hours == pytest.approx(hours)
    assert whole.gpu_hours == pytest.approx(8 * hours)
    idle_w = Simulation(sc).gpu.loaded_idle_w
    # One context, seven GPUs bare on the node (the node exists either way).
    bare = Simulation(sc).gpu.bare_w
    assert shared.idle_gpu_j == pytest.approx((idle_w + 7 * bare) * hours * 3600.0)
    assert shared.busy_gpu_j == pytest.approx(whole.busy_gpu_j, rel=1e-6)  # the same work
    assert shared.slo_attainment > 0.999 and shared.total_j < whole.total_j


def _idle_gap(n_steps: int = 240) -> np.ndarray:
    rates = np.full((2, n_steps), 0.5)
    rates[1, 60:150] = 0.0  # model 1 idles for 900 s, then comes back
    return rates


class Watched(Simulation):
    """Records, per step, the models with traffic that had no ready home (dedicated or shared)."""

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario)
        self.homeless: list[tuple[int, int]] = []
        self.unloaded_steps: dict[int, int] = {}

    def _account(self, k: int, lam: np.ndarray, res: Result) -> None:
        for m in range(len(self.models)):
            home = self.ready_count(m) > 0 or bool(self.shared_homes(m))
            if lam[m] > 0 and not home:
                self.homeless.append((k, m))
            if not home and not self.logical(m) and not self.shared_homes(m, ready=False):
                self.unloaded_steps[m] = self.unloaded_steps.get(m, 0) + 1
        super()._account(k, lam, res)


def test_scale_to_zero_and_back_through_the_activator() -> None:
    sc = _scenario(_idle_gap(), warm=10, timeout=120.0)
    sim = Watched(sc)
    res = sim.run(GreenserveShared(slo_attainment=0.995, min_replicas=0))
    # Model 1 was unloaded while idle (the break-even is a few minutes) and came back when its traffic
    # did: its first requests waited for the reload (held, late), none failed (reload < timeout).
    assert sim.unloaded_steps.get(1, 0) > 10 and 0 not in sim.unloaded_steps
    late = [k for k, m in sim.homeless if m == 1]
    assert late and min(late) == 150 and max(late) < 150 + 60 / DT
    assert res.failed == 0.0
    assert sim.shared_homes(1), "model 1 is back on a shared GPU"
    # With a timeout shorter than the reload, the held requests fail past it.
    short = Simulation(_scenario(_idle_gap(), warm=10, timeout=5.0)).run(
        GreenserveShared(slo_attainment=0.995, min_replicas=0)
    )
    assert short.failed > 0 and short.failed < 0.5 * 60 / DT * DT


def test_a_model_with_traffic_at_min_one_never_scales_to_zero() -> None:
    sim = Watched(_scenario(_idle_gap(), warm=10))
    sim.run(GreenserveShared(slo_attainment=0.995))
    assert not sim.unloaded_steps and not sim.homeless


# Per-model levels (req/s; 10 = one GPU): shared below 0.75, dedicated above 1.2 (with headroom).
LEVELS = st.sampled_from([0.0, 0.1, 0.3, 1.0, 2.0, 6.0])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(LEVELS, min_size=4, max_size=4),
    st.lists(LEVELS, min_size=4, max_size=4),  # ... after the change
    st.integers(40, 120),  # the step of the change
    st.integers(0, 2**16),
)
def test_property_moves_and_reloads_never_leave_a_model_with_traffic_homeless(
    before: list[float], after: list[float], change: int, seed: int
) -> None:
    # Loads that cross the sharing thresholds both ways (a model moves shared <-> dedicated); every model
    # keeps min 1: after the warm start a model with traffic always has a ready home and nothing fails.
    rng = np.random.default_rng(seed)
    n = 180
    level = np.array([before] * change + [after] * (n - change)).T
    rates = rng.poisson(level * DT) / DT
    sim = Watched(_scenario(rates, warm=20, timeout=60.0))
    res = sim.run(GreenserveShared(slo_attainment=0.995))
    assert not sim.homeless, sim.homeless[:5]
    assert res.failed == 0.0
    # Memory of every pool GPU is respected by what the policy placed there.
    for models in sim.pool.values():
        assert sum(sim.models[m].memory_gib for m in models) <= sim.pool_memory_gib


def test_a_pool_gpu_moved_off_its_node_serves_from_the_old_pod_until_the_new_one_has_every_model() -> None:
    # As the operator's pool pod move (reconcile/pool_moves.py): the replacement takes over only once
    # every model of the old pod is loaded there; until then the old pod serves them all.
    sc = _scenario(np.full((2, 120), 0.3))
    sim = Simulation(sc)
    placement = Greenserve().placement
    sim.bootstrap([0, 0], placement, [[0, 1]])
    (old,) = sim.pool
    target = sim.cluster.add_node(0.0, ready=True)
    assert sim.start_move(old, target.nid)
    (new,) = sim.pool_moving
    served_by: list[set[int]] = []
    for k in range(1, 40):
        sim.k, sim.now = k, k * DT
        sim.cluster.schedule(placement, sim.now)
        sim._complete_moves()
        sim._start_loads()
        served_by.append({rid for m in (0, 1) for rid in sim.shared_homes(m)})
        assert sim.shared_homes(0) and sim.shared_homes(1), f"a model without a ready home at step {k}"
    # The old pod alone, then the new one alone: no step without a ready home, and a handover that
    # waited for the reload of both models after the new pod started.
    assert served_by[0] == {old} and served_by[-1] == {new}
    handover = next(i for i, s in enumerate(served_by) if new in s) + 1
    ready_at = sim.cluster.replicas[new].ready_at
    assert handover * DT >= ready_at + max(spec.reload_s for spec in sc.models)
    assert sim.pool_moved == {old: new} and old not in sim.cluster.replicas
    assert set(sim.pool[new]) == {0, 1} and sim.cluster.replicas[new].node == target.nid


def test_pool_pods_are_not_model_replicas_and_hold_no_more_than_their_memory() -> None:
    sc = _scenario(np.full((3, 60), 0.2))
    big = tuple(dataclasses.replace(spec, memory_gib=10.0) for spec in sc.models)
    sim = Simulation(dataclasses.replace(sc, models=big))
    r = sim.add_pool_gpu()
    assert r.model == POOL and all(not sim.logical(m) for m in range(3))
    assert sim.load_shared(0, r.rid) and sim.load_shared(1, r.rid)  # 20 of 23 GiB
    assert not sim.load_shared(2, r.rid) and set(sim.pool[r.rid]) == {0, 1}
    sim.unload_shared(0, r.rid)
    assert sim.load_shared(2, r.rid)


def test_the_sharing_aware_bound_counts_memory() -> None:
    # Forty tiny models: by load they fit one GPU, by memory (6 GiB each, 23 GiB a GPU) ten GPUs.
    rates = np.full((40, 120), 0.02)
    sc = _scenario(rates)
    small = sharing_aware_bound(sc, 0.995).total_j
    big = dataclasses.replace(sc, models=tuple(dataclasses.replace(m, memory_gib=6.0) for m in sc.models))
    large = sharing_aware_bound(big, 0.995).total_j
    assert large > small * 1.5
    r = Simulation(big).run(GreenserveShared(slo_attainment=0.995))
    assert large <= r.total_j


@pytest.mark.parametrize("service_s", [0.1, 2.0])
def test_no_policy_beats_the_sharing_aware_bound(service_s: float) -> None:
    rng = np.random.default_rng(3)
    mean = np.clip(2.0 / service_s * np.arange(1, 13, dtype=np.float64) ** -2.0, 0.01, None)
    rates = rng.poisson(mean[:, None] * np.ones((12, 240)) * DT) / DT
    sc = _scenario(rates, warm=40, service_s=service_s)
    for policy in (HpaLike(), Greenserve(), GreenserveShared(slo_attainment=0.99), GreenserveShared()):
        r = Simulation(sc).run(policy)
        b = sharing_aware_bound(sc, r.slo_attainment)
        assert b.total_j <= r.total_j, (policy.name, b.kwh, r.total_j / 3.6e6)
        assert b.total_j <= energy_lower_bound(sc, r.slo_attainment).total_j * (1 + 1e-9)
        # Each of them keeps every model at a home (minReplicas 1).
        homes = sharing_aware_bound(sc, r.slo_attainment, min_replicas=1)
        assert b.total_j * (1 - 1e-9) <= homes.total_j <= r.total_j, (policy.name, homes.kwh)
        assert homes.total_j <= energy_lower_bound(sc, r.slo_attainment, min_replicas=1).total_j * (1 + 1e-9)
        # With nodes charged whole: never below the fractional bound, still below the run.
        nodes = sharing_aware_bound(sc, r.slo_attainment, min_replicas=1, whole_nodes=True)
        assert homes.total_j * (1 - 1e-9) <= nodes.total_j <= r.total_j, (policy.name, nodes.kwh)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.2), min_size=1, max_size=6),
    st.floats(0.0, 1.0),
    st.floats(0.0, 50.0),
    st.sampled_from([0.005, 0.1, 2.0]),
    st.floats(0.0, 4.0),
)
def test_a_shared_gpus_members_are_never_priced_below_its_lagrangian(
    loads: list[float], theta: float, y_per_cost: float, service_s: float, gpu_cost: float
) -> None:
    # The per-model prices summed over one GPU's members (summed load X) are at most what that GPU
    # costs at the split theta, less y x the requests it can answer within the SLO, (dt / s) X a(X): the
    # step the bound's validity rests on, with each model's credit capped at one GPU's. At any GPU cost
    # c (`gpu_cost` x the fractional one: the whole-node bound prices GPUs at a + z), priced through
    # theta c / cost as bound.shared_node_value does.
    price = SharedPrice.of(_scenario(np.full((2, 40), 1.0), service_s=service_s))
    y = y_per_cost * price.cost * price.s / price.dt
    total = sum(loads)
    answered = total * shared_attainment(total, price.s, price.s, 5.0 * service_s) if total < 1 else 0.0
    priced = float(price.shared(theta * gpu_cost, y)(np.array(loads)).sum())
    cost = gpu_cost * price.cost
    assert priced <= theta * cost - y * price.dt / price.s * answered + 1e-9 * price.cost


def test_models_that_each_need_a_gpu_of_memory_are_charged_whole_nodes() -> None:
    # Nine models that each fill a shared GPU's memory (24 GiB less the server's 1): every step holds
    # nine GPUs, two nodes, seven of one node's GPUs bare. The fractional bound charged 9/8 of a node.
    # (The bound prices memory by its share, so nine of 20 GiB would fit its 7.8 GPUs: a relaxation.)
    rates = np.full((9, 120), 0.2)
    sc = _scenario(rates, warm=20)
    full = sc.cluster.gpu_memory_gib - POOL_RESERVED_GIB
    sc = dataclasses.replace(sc, models=tuple(dataclasses.replace(m, memory_gib=full) for m in sc.models))
    fractional = sharing_aware_bound(sc, 0.995, min_replicas=1)
    whole = sharing_aware_bound(sc, 0.995, min_replicas=1, whole_nodes=True)
    _, b = node_prices(sc)
    assert whole.total_j - fractional.total_j == pytest.approx(100 * (2 * b - 9 * b / 8), rel=0.01)
    r = Simulation(sc).run(GreenserveShared(slo_attainment=0.995))
    assert r.slo_attainment >= 0.995 and whole.total_j <= r.total_j


def test_a_model_needing_several_gpus_is_not_priced_as_a_share_of_one() -> None:
    # One model at a load of 3 GPUs (small memory) beside twenty small models whose memory fills nine
    # GPUs. Sharing cannot serve the large one (one shared GPU per model, at most one GPU's answers):
    # the fleet costs about its two halves apart. Priced per load at any split theta, the large model
    # rode on the memory price of the small ones' GPUs (0.86 of the halves' sum).
    def scenario(rates: np.ndarray, memory: list[float]) -> Scenario:
        sc = _scenario(rates, warm=10)
        models = tuple(dataclasses.replace(m, memory_gib=g) for m, g in zip(sc.models, memory, strict=True))
        return dataclasses.replace(sc, models=models)

    big, small = np.full((1, 120), 30.0), np.full((20, 120), 0.1)
    fleet = sharing_aware_bound(scenario(np.vstack([big, small]), [0.5] + [10.0] * 20), 0.995).total_j
    halves = (
        sharing_aware_bound(scenario(big, [0.5]), 0.995).total_j
        + sharing_aware_bound(scenario(small, [10.0] * 20), 0.995).total_j
    )
    assert fleet >= 0.95 * halves


def test_keeping_every_model_at_home_costs_the_memory_of_the_idle_ones() -> None:
    # Thirty models with a request every 1,000 s and 6 GiB each beside one busy model: the bound of any
    # policy may leave the idle ones without a home (their few requests are within the 0.5% slack); a
    # policy that keeps every model at home (greenserve-shared at minReplicas 1) pays their memory, and
    # still uses more than that bound.
    rates = np.vstack([np.full((1, 120), 40.0), np.full((30, 120), 0.001)])
    sc = _scenario(rates, warm=10)
    sc = dataclasses.replace(sc, models=tuple(dataclasses.replace(m, memory_gib=6.0) for m in sc.models))
    free = sharing_aware_bound(sc, 0.995).total_j
    homes = sharing_aware_bound(sc, 0.995, min_replicas=1).total_j
    assert homes > 1.3 * free
    r = Simulation(sc).run(GreenserveShared(slo_attainment=0.995))
    assert homes <= r.total_j


def test_sharing_aware_bound_grows_with_the_target_and_refuses_mixed_classes() -> None:
    rates = np.full((4, 120), 0.3)
    sc = _scenario(rates)
    values = [sharing_aware_bound(sc, a).total_j for a in (0.9, 0.99, 0.995, 0.999)]
    assert values == sorted(values)
    mixed = Scenario(
        sc.trace, (*sc.models[:3], ModelSpec("x", 5.0, 60.0, 1000.0)), sc.cluster, 30.0, sc.warmup_steps
    )
    with pytest.raises(ValueError, match="one service class"):
        sharing_aware_bound(mixed, 0.995)
    assert math.isfinite(values[-1])


def test_the_shared_gpus_aim_is_the_headroom_quantile_never_below_the_p95_guard() -> None:
    # On the bench's quantile path (fleet target 0.5) a shared GPU keeps the quantile's attainment, as
    # the headroom of the dedicated models aims at it; 0.5 alone would let a GPU run its models at a
    # load where half their requests are late. At quantile 0 (the least headroom) too: the GPU is still
    # judged within the SLO at the guard, not by the utilisation cap of models without an SLO.
    sc = _scenario(np.full((4, 60), 0.05), warm=10)
    for quantile, aim in ((0.99, 0.99), (0.5, 0.95), (0.0, 0.95), (None, 0.995)):
        pol = GreenserveShared(slo_attainment=0.5 if quantile is not None else 0.995, rise_quantile=quantile)
        sim = Simulation(sc)
        pol.initial(sim)
        demands = pol.demands(sim)
        assert {d.attainment for d in demands} == {aim}, quantile
        assert all(d.slo_s == sc.models[0].slo_ms / 1000.0 for d in demands), quantile


def test_with_every_model_exclusive_the_sharing_policy_is_greenserve() -> None:
    # Both run one control step (simulator/policies.py Greenserve._scale and its moves): with nothing
    # to share, the sharing policy sizes, scales in and consolidates exactly as greenserve does.
    rng = np.random.default_rng(3)
    rates = rng.poisson(np.array([[40.0], [8.0], [2.0], [0.3]]) * DT * (1 + (np.arange(240) > 120)), (4, 240))
    sc = _scenario(rates / DT, warm=30)
    whole = Simulation(sc).run(Greenserve())
    shared = Simulation(sc).run(GreenserveShared(sharing=Sharing.EXCLUSIVE))
    assert shared.shared_gpu_hours == 0.0
    for field_ in ("total_j", "gpu_hours", "within_slo", "cold_starts", "moves"):
        assert getattr(shared, field_) == getattr(whole, field_), field_


@pytest.mark.parametrize("service_s", [0.1, 2.0])
def test_no_policy_uses_fewer_gpu_hours_than_the_bounds_allow(service_s: float) -> None:
    # The GPU-hours any policy needs at its own attainment (bound.gpu_hours_bound): below every policy
    # run, sharing or not, and the sharing-aware figure below the whole-GPU one.
    rng = np.random.default_rng(3)
    mean = np.clip(2.0 / service_s * np.arange(1, 13, dtype=np.float64) ** -2.0, 0.01, None)
    rates = rng.poisson(mean[:, None] * np.ones((12, 240)) * DT) / DT
    sc = _scenario(rates, warm=40, service_s=service_s)
    for policy in (HpaLike(), Greenserve(), GreenserveShared(slo_attainment=0.99), GreenserveShared()):
        r = Simulation(sc).run(policy)
        shared = gpu_hours_bound(sc, sharing_aware_bound(sc, r.slo_attainment))
        whole = gpu_hours_bound(sc, energy_lower_bound(sc, r.slo_attainment))
        assert 0 < shared <= r.gpu_hours, (policy.name, shared, r.gpu_hours)
        assert shared <= whole * (1 + 1e-9)
