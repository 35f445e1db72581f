"""GPU placement (policy/sharing.py): memory and the saturation cap are never exceeded, a model with
traffic always has a home, hysteresis, scale to zero, and holding on a missing reading."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from greenserve.policy import profile, sharing
from greenserve.policy.queueing import GUARD_ATTAINMENT, shared_attainment, shared_load_cap
from greenserve.policy.sharing import ModelDemand, PoolGpu, Sharing, SharingLimits, fits, plan, solo_cap

LIMITS = SharingLimits(gpu_memory_gib=23.0)


def demand(name: str, load: float | None, **kw: object) -> ModelDemand:
    base = ModelDemand(name, load, memory_gib=2.0, service_time_s=0.1, slo_s=0.5, attainment=0.995)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_shared_gpu_is_mm1_for_one_model_and_slows_as_it_saturates() -> None:
    from greenserve.policy.queueing import attainment

    assert math.isclose(shared_attainment(0.3, 0.1, 0.1, 0.5), attainment(3.0, 10.0, 1, 0.5))
    values = [shared_attainment(x / 20, 0.1, 0.1, 0.5) for x in range(21)]
    assert values == sorted(values, reverse=True) and values[-1] == 0.0
    cap = shared_load_cap(0.1, 0.5, 0.995)
    assert shared_attainment(cap, 0.1, 0.1, 0.5) >= 0.995 > shared_attainment(cap + 1e-3, 0.1, 0.1, 0.5)
    # A looser target or a longer SLO lets a GPU carry more.
    assert shared_load_cap(0.1, 0.5, 0.95) > cap and shared_load_cap(0.1, 1.0, 0.995) > cap


def test_a_vanishing_load_fits_where_its_slo_can_be_met() -> None:
    # Hypothesis found it: a load of 5e-324 made the request rate underflow to 0, which read as an
    # unservable GPU, so the planner placed a model that `fits` then refused.
    tiny = demand("tiny", 5e-324, service_time_s=2.0, slo_s=10.0)
    assert fits([tiny], LIMITS)
    assert fits([tiny, demand("other", 0.01)], LIMITS)


def test_small_models_share_and_a_large_one_is_dedicated() -> None:
    ds = [demand(f"m{i}", 0.01) for i in range(10)] + [demand("big", 0.6)]
    p = plan(ds, (), LIMITS)
    assert p.dedicated == {"big"}
    assert p.shared == {f"m{i}" for i in range(10)}
    # Ten models of 1% fit on one GPU at a cap of ~15% (100 ms service, 500 ms SLO, 99.5%).
    assert len(p.gpus) == 1


def test_exclusive_never_shares_and_idle_model_at_min_zero_unloads() -> None:
    ds = [
        demand("x", 0.01, sharing=Sharing.EXCLUSIVE),
        demand("idle", 0.0, min_replicas=0, idle_s=600.0, unload_after_s=300.0),
        demand("recent", 0.0, min_replicas=0, idle_s=100.0, unload_after_s=300.0),
        demand("floor", 0.0, min_replicas=1, idle_s=1e9, unload_after_s=300.0),
    ]
    p = plan(ds, (), LIMITS)
    assert p.dedicated == {"x"}
    assert p.unloaded == {"idle"}
    assert p.shared == {"recent", "floor"}


def test_missing_reading_moves_and_unloads_nothing() -> None:
    gpus = (PoolGpu("g0", 23.0, ("a", "b")),)
    ds = [demand("a", None, min_replicas=0, idle_s=1e9, unload_after_s=1.0), demand("b", 0.12)]
    p = plan(ds, gpus, LIMITS)
    assert p.home["a"] == "g0"
    held = plan([demand("c", None, has_dedicated=True), demand("d", None)], (), LIMITS)
    assert held.dedicated == {"c"} and held.unloaded == {"d"} and not held.gpus


def test_hysteresis_between_shared_and_dedicated() -> None:
    cap = shared_load_cap(0.1, 0.5, 0.995)
    between = 0.65 * cap  # above enter (0.5 cap), below leave (0.8 cap)
    gpus = (PoolGpu("g0", 23.0, ("m",)),)
    assert plan([demand("m", between)], gpus, LIMITS).home == {"m": "g0"}  # shared stays shared
    assert plan([demand("m", between, has_dedicated=True)], (), LIMITS).dedicated == {"m"}  # and dedicated
    # Past the thresholds it moves.
    assert plan([demand("m", 0.85 * cap)], gpus, LIMITS).dedicated == {"m"}
    assert plan([demand("m", 0.45 * cap, has_dedicated=True)], (), LIMITS).home == {"m": "new-0"}


def test_a_shared_gpu_keeps_room_for_its_largest_members_rise_not_their_sum() -> None:
    cap = shared_load_cap(0.1, 0.5, 0.995)
    # Models of a fifth of the cap whose rises (within a scale-up's lead time) add 28% of it: a GPU
    # keeps room for one member's rise. Three fit (60% + 28%, at the 1.1x placing margin 97%); summed,
    # two members' rises alone would take 56% more.
    rising = [demand(f"m{i}", 0.2 * cap, rise=0.28 * cap) for i in range(4)]
    assert fits(rising[:3], LIMITS, LIMITS.place_margin)
    assert not fits(rising, LIMITS) and not fits(
        [*rising[:3], demand("big", 0.2 * cap, rise=0.45 * cap)], LIMITS
    )
    assert sorted(len(g.models) for g in plan(rising, (), LIMITS).gpus) == [1, 3]
    # Without rises the four share one GPU (80% of the cap, 88% at the margin).
    assert len(plan([replace(d, rise=0.0) for d in rising], (), LIMITS).gpus) == 1


def test_a_model_whose_rise_would_outgrow_a_shared_gpu_keeps_dedicated_replicas() -> None:
    cap = shared_load_cap(0.1, 0.5, 0.995)
    # It joins while its load and its rise together are at most half its solo cap, and leaves past 80%.
    assert sharing.wants_shared(demand("m", 0.2 * cap), now_shared=False, limits=LIMITS)
    assert not sharing.wants_shared(demand("m", 0.2 * cap, rise=0.4 * cap), now_shared=False, limits=LIMITS)
    assert sharing.wants_shared(demand("m", 0.3 * cap, rise=0.4 * cap), now_shared=True, limits=LIMITS)
    assert not sharing.wants_shared(demand("m", 0.3 * cap, rise=0.6 * cap), now_shared=True, limits=LIMITS)
    p = plan([demand("bursty", 0.1 * cap, rise=0.5 * cap), demand("steady", 0.1 * cap)], (), LIMITS)
    assert p.dedicated == {"bursty"} and p.shared == {"steady"}


def test_an_overfull_gpu_gives_up_its_largest_model_and_keeps_the_rest() -> None:
    cap = shared_load_cap(0.1, 0.5, 0.995)
    gpus = (PoolGpu("g0", 23.0, ("a", "b", "c")),)
    ds = [demand("a", 0.3 * cap), demand("b", 0.3 * cap), demand("c", 0.7 * cap)]
    p = plan(ds, gpus, LIMITS)
    assert p.home["a"] == p.home["b"] == "g0" and p.home["c"] != "g0"


def test_consolidation_empties_a_light_gpu_only_with_margin() -> None:
    cap = shared_load_cap(0.1, 0.5, 0.995)
    gpus = (PoolGpu("g0", 23.0, ("a",)), PoolGpu("g1", 23.0, ("b",)))
    p = plan([demand("a", 0.3 * cap), demand("b", 0.2 * cap)], gpus, LIMITS)
    assert [g.gpu for g in p.gpus] == ["g0"] and p.home == {"a": "g0", "b": "g0"}
    # Together at 0.9 of the cap: they would fit, but not with the margin; nothing moves.
    q = plan([demand("a", 0.45 * cap), demand("b", 0.45 * cap)], gpus, LIMITS)
    assert q.home == {"a": "g0", "b": "g1"}


def test_consolidation_tries_the_next_gpu_when_the_lightest_cannot_be_emptied() -> None:
    # Memory-bound pools: the least-loaded GPU is full of memory that fits nowhere else, while the next
    # one's model fits beside another GPU's; that GPU is the one to empty.
    cap = shared_load_cap(0.1, 0.5, 0.995)
    gpus = (
        PoolGpu("g0", 23.0, ("a", "b")),
        PoolGpu("g1", 23.0, ("small",)),
        PoolGpu("g2", 23.0, ("d",)),
    )
    ds = [
        demand("a", 0.01 * cap, memory_gib=11.5),
        demand("b", 0.01 * cap, memory_gib=11.5),
        demand("small", 0.2 * cap, memory_gib=2.0),
        demand("d", 0.05 * cap, memory_gib=12.0),
    ]
    p = plan(ds, gpus, LIMITS)
    assert [g.gpu for g in p.gpus] == ["g0", "g1"]
    assert p.home == {"a": "g0", "b": "g0", "small": "g1", "d": "g1"}


def test_the_profile_mapping_sets_load_and_unload_time() -> None:
    prof = profile.ServiceProfile(
        service_rate_rps=10.0,
        target_utilization=0.7,
        min_replicas=0,
        max_replicas=4,
        slo_p95_ms=500.0,
        slo_attainment=0.995,
        cold_start_s=20.0,
    )
    d = profile.sharing_demand(prof, "m", 0.5, memory_gib=4.0, gpu_memory_gib=24.0, idle_s=10.0)
    assert math.isclose(d.load or 0.0, 0.05) and d.slo_s == 0.5 and d.attainment == 0.995
    assert d.rise == 0.0
    # The autoscaler's rise headroom (x1.6) is kept apart from the load: 60% of it more in a rise.
    risen = profile.sharing_demand(prof, "m", 0.5, memory_gib=4.0, gpu_memory_gib=24.0, rise_factor=1.6)
    assert risen.load == d.load and math.isclose(risen.rise, 0.03)
    # A reload holds a GPU at resident-model power for 20 s; a sixth of a GPU idles at a sixth of a
    # replica's power: the break-even is longer than the reload.
    expected = prof.gpu.loaded_idle_w * 20.0 / (prof.replica_power_w * 4.0 / 24.0)
    assert math.isclose(d.unload_after_s, max(20.0, expected))
    assert profile.sharing_demand(prof, "m", None, memory_gib=4.0, gpu_memory_gib=24.0).load is None


def test_a_shared_gpu_keeps_at_least_the_p95_guard_for_its_models() -> None:
    # A model on its own replicas is never sized below the p95 guard (the SLO is a p95); an attainment
    # target under it does not let a shared GPU run its members hotter than that either.
    low = profile.ServiceProfile(10.0, 0.7, 1, 4, slo_p95_ms=10_000.0, slo_attainment=0.5)
    d = profile.sharing_demand(low, "m", 0.01, memory_gib=2.0, gpu_memory_gib=23.0)
    assert d.attainment == GUARD_ATTAINMENT == 0.95
    assert solo_cap(d, LIMITS) == shared_load_cap(0.1, 10.0, 0.95) < shared_load_cap(0.1, 10.0, 0.5)
    high = profile.sharing_demand(
        replace(low, slo_attainment=0.999), "m", 0.01, memory_gib=2.0, gpu_memory_gib=23.0
    )
    assert high.attainment == 0.999


loads = st.one_of(st.none(), st.floats(0.0, 0.6), st.sampled_from([0.0, 0.001, 0.01, 0.04]))
Raw = tuple[float | None, float, float, Sharing, int, float, bool, float]
models = st.lists(
    st.tuples(
        loads,
        st.floats(0.5, 30.0),  # memory (GiB): some do not fit a 23 GiB GPU
        st.sampled_from([0.005, 0.1, 2.0]),
        st.sampled_from([Sharing.AUTO, Sharing.AUTO, Sharing.EXCLUSIVE]),
        st.integers(0, 1),
        st.floats(0.0, 1000.0),
        st.booleans(),
        st.sampled_from([0.0, 0.0, 0.01, 0.05, 0.2]),  # rise
    ),
    min_size=1,
    max_size=40,
)


def _demands(raw: list[Raw]) -> list[ModelDemand]:
    return [
        ModelDemand(
            f"m{i}",
            load,
            mem,
            svc,
            svc * 5,
            0.995,
            mode,
            min_replicas=mn,
            idle_s=idle,
            unload_after_s=300.0,
            has_dedicated=ded,
            rise=rise,
        )
        for i, (load, mem, svc, mode, mn, idle, ded, rise) in enumerate(raw)
    ]


@settings(max_examples=300, deadline=None)
@given(models, st.integers(0, 4), st.randoms(use_true_random=False))
def test_property_memory_cap_and_a_home_for_every_model_with_traffic(
    raw: list[Raw], n_gpus: int, rnd: object
) -> None:
    ds = _demands(raw)
    # A current placement that may be anything the last plan left (memory respected there).
    gpus: list[PoolGpu] = []
    pool = [d for d in ds if d.memory_gib <= LIMITS.gpu_memory_gib and not d.has_dedicated]
    for g in range(n_gpus):
        chosen, used = [], 0.0
        for d in pool[g :: max(1, n_gpus)]:
            if used + d.memory_gib <= LIMITS.gpu_memory_gib:
                chosen.append(d.name)
                used += d.memory_gib
        gpus.append(PoolGpu(f"g{g}", LIMITS.gpu_memory_gib, tuple(chosen)))
    p = plan(ds, gpus, LIMITS)
    by = {d.name: d for d in ds}
    placed = [m for g in p.gpus for m in g.models]
    assert len(placed) == len(set(placed)), "a model on two GPUs"
    for g in p.gpus:
        # No placement exceeds a GPU's memory.
        assert sum(by[m].memory_gib for m in g.models) <= g.memory_gib + 1e-9
        # Every GPU meets every member's target, held models (no reading) aside.
        assert fits([by[m] for m in g.models if by[m].load is not None], LIMITS)
    # Every model is in exactly one of shared, dedicated and unloaded.
    assert p.shared | p.dedicated | p.unloaded == set(by)
    assert not (p.shared & p.dedicated) and not (p.shared & p.unloaded) and not (p.dedicated & p.unloaded)
    for d in ds:
        if d.load is not None and (d.load > 0 or d.min_replicas > 0):
            assert d.name not in p.unloaded, "a model with traffic left without a home"
        if d.sharing is Sharing.EXCLUSIVE and d.load is not None:
            assert d.name not in p.shared
        if d.load is None:  # held where it was
            was = next((g.gpu for g in gpus if d.name in g.models), None)
            assert p.home.get(d.name) == was or (was is None and d.name not in p.shared)


@settings(max_examples=100, deadline=None)
@given(models)
def test_property_a_plan_is_stable_when_nothing_changes(
    raw: list[Raw],
) -> None:
    # Planning again from the plan's own placement moves nothing between GPUs but a consolidation.
    ds = _demands(raw)
    first = plan(ds, (), LIMITS)
    ds2 = [replace(d, has_dedicated=d.name in first.dedicated) for d in ds]
    second = plan(ds2, first.gpus, LIMITS)
    assert second.dedicated == first.dedicated and second.unloaded == first.unloaded
    moved = {m for m, g in second.home.items() if first.home.get(m) != g}
    emptied = {g.gpu for g in first.gpus} - {g.gpu for g in second.gpus}
    assert all(first.home[m] in emptied for m in moved)
    assert len(emptied) <= 1


def test_new_gpus_are_named_for_the_caller() -> None:
    p = plan([demand("a", 0.1), demand("b", 0.1)], (), LIMITS)
    assert all(g.gpu.startswith(sharing.NEW_GPU_PREFIX) for g in p.gpus)
