"""The stand-in placement rule (policy/pool_rule.py): who shares, who gets its own replicas."""

from __future__ import annotations

from dataclasses import replace

from greenserve.policy import pool_rule as r

GI = 2**30
LIMITS = r.PoolLimits(gpu_memory_bytes=16 * GI)


def cand(name: str, load: float | None = 0.05, memory: int = GI, **kw: object) -> r.Candidate:
    base = r.Candidate(service=name, model_name=name, memory_bytes=memory, load=load, shared=False, new=False)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_low_traffic_models_share_and_busy_ones_do_not() -> None:
    out = r.place([cand("a", 0.1), cand("b", 0.3), cand("c", None, new=True), cand("d", None)], LIMITS)
    assert {k: v.shared for k, v in out.items()} == {"a": True, "b": False, "c": True, "d": False}
    assert out["a"].reason == r.JOINS and out["b"].reason == r.BUSY and out["c"].reason == r.STARTS_SHARED


def test_hysteresis_and_missing_metrics_never_move_a_member() -> None:
    assert r.place([cand("a", 0.4, shared=True)], LIMITS)["a"].shared  # between the two thresholds
    assert r.place([cand("a", None, shared=True)], LIMITS)["a"].shared  # no metric: stays
    out = r.place([cand("a", 0.6, shared=True)], LIMITS)["a"]
    assert not out.shared and out.reason == r.BUSY


def test_blocked_models_never_share() -> None:
    out = r.place(
        [cand("a", 0.0, blocked=r.EXCLUSIVE), cand("b", 0.0, blocked="gpu.memory is not set")], LIMITS
    )
    assert (out["a"].shared, out["a"].reason) == (False, r.EXCLUSIVE)
    assert (out["b"].shared, out["b"].reason, out["b"].message) == (
        False,
        r.NOT_SHAREABLE,
        "gpu.memory is not set",
    )


def test_packing_respects_gpu_memory_and_keeps_members_first() -> None:
    # Members first: a newcomer never displaces a model already in the pool.
    cands = [
        cand("z-member", memory=10 * GI, shared=True),
        cand("a-big", memory=8 * GI),
        cand("b", memory=6 * GI),
    ]
    out = r.place(cands, LIMITS)
    assert out["z-member"].shared and out["b"].shared
    assert (out["a-big"].shared, out["a-big"].reason) == (False, r.POOL_FULL)


def test_eight_small_models_fit_one_gpu() -> None:
    out = r.place([cand(f"m{i}", 0.02, memory=GI, new=True) for i in range(8)], r.PoolLimits(8 * GI))
    assert all(p.shared for p in out.values())
    out = r.place([cand(f"m{i}", 0.02, memory=GI, new=True) for i in range(9)], r.PoolLimits(8 * GI))
    assert sum(p.shared for p in out.values()) == 8


def test_load_cap_and_one_model_name_per_pool() -> None:
    out = r.place([cand(f"m{i}", 0.2) for i in range(5)], LIMITS)
    assert sum(p.shared for p in out.values()) == 4  # 4 x 0.2 = 0.8, the cap
    out = r.place([cand("a"), replace(cand("b"), model_name="a")], LIMITS)
    assert out["a"].shared and (out["b"].shared, out["b"].reason) == (False, r.NAME_TAKEN)


def test_no_placement_exceeds_the_gpu_memory() -> None:
    import random

    rng = random.Random(7)
    for _ in range(300):
        cands = []
        for i in range(rng.randint(1, 12)):
            load = rng.choice([None, rng.random()])
            shared, new = rng.random() < 0.3, rng.random() < 0.3
            cands.append(cand(f"m{i}", load, rng.randint(1, 12) * GI, shared=shared, new=new))
        out = r.place(cands, LIMITS)
        chosen = [c for c in cands if out[c.service].shared]
        assert sum(c.memory_bytes for c in chosen) <= LIMITS.gpu_memory_bytes
        assert sum(c.load or 0.0 for c in chosen) <= LIMITS.pool_load_cap + 1e-9
        assert len({c.model_name for c in chosen}) == len(chosen)


def test_load_fraction() -> None:
    assert r.load_fraction(5.0, None, 50.0, None, 0.8) == 0.1
    assert r.load_fraction(None, 2.0, None, 8.0, 0.8) == 0.2
    assert r.load_fraction(None, None, 50.0, None, 0.8) is None
    assert r.load_fraction(3.0, 1.0, None, None, 0.8) is None  # gpuUtilization: no rate to compare


def demand(name: str, load: float | None, memory_gib: float = 1.0, **kw: object) -> r.sharing.ModelDemand:
    return r.sharing.ModelDemand(
        name=name, load=load, memory_gib=memory_gib, service_time_s=0.02, slo_s=None, attainment=0.99, **kw
    )  # type: ignore[arg-type]


def with_demand(name: str, load: float | None, memory_gib: float = 1.0, **kw: object) -> r.Candidate:
    c = cand(name, load, int(memory_gib * GI), **kw)
    return replace(c, demand=demand(name, load, memory_gib))


def test_sharing_placer_runs_the_sharing_policy_over_the_pools_gpu() -> None:
    cands = [
        with_demand("idle", 0.01),
        with_demand("busy", 0.9),  # above the policy's entry threshold: its own replicas
        with_demand("new", None, new=True),  # no reading yet: a new model starts shared
        with_demand("held", None),  # no reading, placed before on its own replicas: stays there
        with_demand("member", None, shared=True),  # no reading, in the pool: stays
        cand("nodemand", 0.01),  # no demand: the simple rule
        replace(with_demand("excl", 0.0), blocked=r.EXCLUSIVE),
    ]
    out = r.sharing_placer(cands, LIMITS)
    assert {k: v.shared for k, v in out.items()} == {
        "idle": True,
        "busy": False,
        "new": True,
        "held": False,
        "member": True,
        "nodemand": True,
        "excl": False,
    }
    assert out["busy"].reason == r.BUSY and out["excl"].reason == r.EXCLUSIVE


def test_sharing_placer_packs_one_gpu_by_memory_and_one_model_per_name() -> None:
    cands = [with_demand(f"m{i}", 0.01, memory_gib=3.0) for i in range(7)]  # 21 GiB wanted, 16 GiB GPU
    out = r.sharing_placer(cands, LIMITS)
    assert sum(p.shared for p in out.values()) == 5
    assert {p.reason for p in out.values() if not p.shared} == {r.POOL_FULL}
    twins = [with_demand("a", 0.01), replace(with_demand("b", 0.01), model_name="a")]
    out = r.sharing_placer(twins, LIMITS)
    assert out["a"].shared and (out["b"].shared, out["b"].reason) == (False, r.NAME_TAKEN)


def test_sharing_placer_spreads_over_the_pools_gpus_up_to_its_most() -> None:
    cands = [with_demand(f"m{i}", 0.01, memory_gib=3.0) for i in range(7)]  # 21 GiB wanted, 16 GiB GPUs
    out = r.sharing_placer(cands, replace(LIMITS, max_gpus=2))
    assert all(p.shared for p in out.values())
    on = {g: sorted(k for k, p in out.items() if p.gpu == g) for g in ("0", "1")}
    assert [len(v) for v in on.values()] == [5, 2]
    # At its most GPUs, a model the plan would put on a further one keeps its own replicas.
    out = r.sharing_placer(cands[:4] + [replace(c, shared=True, gpu="1") for c in cands[4:]], LIMITS)
    assert {p.gpu for p in out.values() if p.shared} == {"1"}
    assert sum(p.reason == r.POOL_FULL for p in out.values()) == 2


def test_memory_still_held_by_a_model_moving_away_is_not_given_to_another() -> None:
    joiner = with_demand("j", 0.01, memory_gib=4.0)
    out = r.sharing_placer([joiner], replace(LIMITS, max_gpus=2), leaving={"0": 14 * GI})
    assert out["j"].shared and out["j"].gpu == "1"
    out = r.sharing_placer([joiner], LIMITS, leaving={"0": 14 * GI})
    assert not out["j"].shared and out["j"].reason == r.POOL_FULL


def test_no_placement_exceeds_a_pool_gpus_memory_or_the_pools_most_gpus() -> None:
    import random

    rng = random.Random(11)
    for _ in range(300):
        most = rng.randint(1, 4)
        cands = []
        for i in range(rng.randint(1, 16)):
            load = rng.choice([None, rng.random() * 0.3])
            shared, new = rng.random() < 0.4, rng.random() < 0.3
            gpu = str(rng.randrange(most)) if shared else None
            c = with_demand(f"m{i}", load, rng.randint(1, 12), shared=shared, new=new, gpu=gpu)
            cands.append(replace(c, model_name=f"n{rng.randrange(12)}"))
        leaving = {str(g): rng.randint(0, 8) * GI for g in range(most) if rng.random() < 0.3}
        out = r.sharing_placer(cands, replace(LIMITS, max_gpus=most), leaving=leaving)
        for g in {p.gpu for p in out.values() if p.shared}:
            assert g is not None and int(g) < most
            chosen = [c for c in cands if out[c.service].shared and out[c.service].gpu == g]
            assert sum(c.memory_bytes for c in chosen) + leaving.get(g, 0) <= LIMITS.gpu_memory_bytes
            assert len({c.model_name for c in chosen}) == len(chosen)


def test_the_operators_placer_puts_every_model_where_the_simulators_plan_does() -> None:
    """The simulator calls `sharing.plan` over its pool GPUs (simulator/sharing.py `pool_view`); the
    operator's placer over the same models, GPUs and held memory gives the same homes, a new GPU of the
    plan taking the lowest free index."""
    import random

    rng = random.Random(5)
    for _ in range(200):
        gpus = rng.randint(1, 4)
        cands = []
        for i in range(rng.randint(1, 14)):
            shared = rng.random() < 0.5
            c = with_demand(f"m{i}", rng.random() * 0.3, rng.randint(1, 8), shared=shared)
            cands.append(replace(c, gpu=str(rng.randrange(gpus)) if shared else None))
        leaving = {str(g): rng.randint(0, 4) * GI for g in range(gpus) if rng.random() < 0.3}
        out = r.sharing_placer(cands, replace(LIMITS, max_gpus=64), leaving=leaving)
        used = sorted({c.gpu for c in cands if c.gpu} | {g for g, b in leaving.items() if b}, key=int)
        view = [
            r.sharing.PoolGpu(
                g, 16.0, tuple(sorted(c.service for c in cands if c.gpu == g)), leaving.get(g, 0) / GI
            )
            for g in used
        ]
        planned = r.sharing.plan([c.demand for c in cands if c.demand], view, r.sharing.SharingLimits(16.0))
        free = iter(str(i) for i in range(64) if str(i) not in used)
        ids = {g.gpu: next(free) for g in planned.gpus if g.gpu.startswith(r.sharing.NEW_GPU_PREFIX)}
        homes = {m: ids.get(g, g) for m, g in planned.home.items()}
        assert {k: p.gpu for k, p in out.items() if p.shared} == homes


def test_a_second_model_of_one_name_shares_another_pool_gpu_where_the_pool_has_one() -> None:
    twins = [with_demand("a", 0.01), replace(with_demand("b", 0.01), model_name="a")]
    out = r.sharing_placer(twins, replace(LIMITS, max_gpus=2))
    assert (out["a"].shared, out["a"].gpu) == (True, "0") and (out["b"].shared, out["b"].gpu) == (True, "1")
    # One GPU at most: it keeps its own replicas, and says why.
    out = r.sharing_placer(twins, LIMITS)
    assert (out["b"].shared, out["b"].reason) == (False, r.NAME_TAKEN)
