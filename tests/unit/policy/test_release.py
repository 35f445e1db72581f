"""Held replicas give way to a scale-up that would otherwise open a node (policy/release.py)."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from greenserve.policy import autoscaling as pa
from greenserve.policy.release import Held, ScaleUp, place, plan_scale_ups, release, shortfall


def test_nothing_is_released_without_a_shortfall() -> None:
    held = [Held("a", 3, 1, 100.0)]
    assert shortfall([ScaleUp("b", 1, 2, 1)], free=[1]) == []
    assert release([], held, 0.0, math.inf) == {}


def test_the_hold_that_ends_soonest_gives_way_first_and_never_below_what_the_load_asks() -> None:
    held = [Held("late", 4, 2, 300.0), Held("soon", 3, 2, 120.0)]
    assert release([1], held, 0.0, math.inf) == {"soon": 2}
    # Two replicas short: "soon" has only one held replica, the rest comes from the next hold to end.
    assert release([1, 1], held, 0.0, math.inf) == {"soon": 2, "late": 3}
    # More than is held: everything held goes, nobody below its wanted count.
    assert release([1] * 10, held, 0.0, math.inf) == {"soon": 2, "late": 2}


def test_only_holds_that_end_before_a_new_node_would_be_ready_give_way() -> None:
    held = [Held("soon", 3, 1, 1_090.0), Held("late", 3, 1, 1_200.0)]
    # At 1,000 s with nodes ready 120 s after they are asked for: "late" holds past that; a node serves.
    assert release([1] * 4, held, 1_000.0, 120.0) == {"soon": 1}
    assert release([1] * 4, held, 1_100.0, 120.0) == {"soon": 1, "late": 1}


def test_a_replica_of_several_gpus_takes_smaller_ones_and_a_smaller_one_no_larger() -> None:
    assert release([1], [Held("big", 2, 1, 0.0, gpus=2), Held("small", 2, 1, 5.0)], 0.0, 60.0) == {"big": 1}
    # One released replica of two GPUs takes two short replicas of one.
    assert release([1, 1], [Held("big", 3, 1, 0.0, gpus=2)], 0.0, 60.0) == {"big": 2}
    # Replicas of one GPU never make room for one of two (their node is the ReplicaSet's choice).
    assert release([2], [Held("small", 4, 1, 0.0), Held("big", 2, 1, 5.0, gpus=2)], 0.0, 60.0) == {"big": 1}
    assert release([2], [Held("small", 4, 1, 0.0)], 0.0, 60.0) == {}


def test_the_shortfall_is_counted_per_node_and_pending_pods_go_first() -> None:
    ups = [ScaleUp("a", 1, 3, 1, gpus=2), ScaleUp("b", 0, 1, 0)]
    assert sorted(shortfall(ups, free=[2])) == [1, 2]
    # Two GPUs free on each of two nodes: both two-GPU replicas fit, the one-GPU one does not.
    assert shortfall(ups, free=[2, 2]) == [1]
    # One GPU free on each of four nodes: four GPUs, but no node takes a replica of two.
    assert sorted(shortfall(ups, free=[1, 1, 1, 1])) == [2, 2]
    # Pods already pending take free GPUs first.
    assert sorted(shortfall(ups, free=[2, 2], pending=[2])) == [1, 2]


def test_place_fills_the_tightest_node_first() -> None:
    # Best fit: the one-GPU replica goes where one GPU is free, leaving the node of two for a pair.
    assert place([], [1, 2], [2, 1]) == ([], [])
    assert place([1], [2], [2, 1]) == ([], [])
    assert place([2], [2], [3, 1]) == ([], [2])


def test_scale_ups_apply_at_once_when_no_gpu_is_being_freed() -> None:
    ups = [ScaleUp("a", 2, 4, 2), ScaleUp("b", 1, 2, 1)]
    assert plan_scale_ups(ups, free_now=[0], later=[0]) == {"a": 4, "b": 2}
    assert plan_scale_ups(ups, free_now=[3], later=[8]) == {"a": 4, "b": 2}


def test_the_part_waiting_for_draining_gpus_waits_and_the_rest_goes_now() -> None:
    ups = [ScaleUp("a", 2, 4, 2), ScaleUp("cold", 0, 1, 0), ScaleUp("b", 1, 3, 1)]
    # 5 asked, 1 free now, 2 being freed: 2 wait; the other 3 are created now (one fits, two need a node).
    out = plan_scale_ups(ups, free_now=[1, 0], later=[1, 2])
    assert out["cold"] == 1  # a model with no ready replica never waits
    assert out == {"a": 2, "cold": 1, "b": 3}  # the model with the most ready replicas waits first
    assert sum(out[u.key] - u.current for u in ups) == 5 - 2
    # Two pods already pending take the GPU free now and one being freed: one scale-up replica waits
    # for the other, the rest need a node anyway.
    out = plan_scale_ups(ups, free_now=[1, 0], later=[1, 2], pending=[1, 1])
    assert sum(u.desired - out[u.key] for u in ups) == 1


def test_a_two_gpu_scale_up_waits_only_for_a_node_that_will_have_two_free() -> None:
    ups = [ScaleUp("a", 1, 2, 1, gpus=2)]
    # A GPU draining on each of two nodes: neither will take the replica; it goes now (a node is needed).
    assert plan_scale_ups(ups, free_now=[0, 0], later=[1, 1]) == {"a": 2}
    # Both on one node: it waits for them.
    assert plan_scale_ups(ups, free_now=[0, 1], later=[0, 2]) == {"a": 1}


@given(
    st.lists(st.integers(1, 4), max_size=10),
    st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 6), st.floats(0, 1e4), st.integers(1, 4)), max_size=8
    ),
    st.booleans(),
)
def test_release_frees_what_it_can_and_keeps_every_model_at_its_wanted_count(
    short: list[int], raw: list[tuple[int, int, float, int]], one_gpu: bool
) -> None:
    if one_gpu:  # the common case: every replica one GPU
        short, raw = [1] * len(short), [(c, w, t, 1) for c, w, t, _ in raw]
    held = [Held(f"m{i}", max(c, w), w, t, g) for i, (c, w, t, g) in enumerate(raw)]
    out = release(short, held, 0.0, math.inf)
    by_key = {h.key: h for h in held}
    for k, n in out.items():
        assert by_key[k].wanted <= n < by_key[k].current
    released = [by_key[k].gpus for k, n in out.items() for _ in range(by_key[k].current - n)]
    # Each released replica takes at least one short replica whole, on its own GPUs.
    assert len(released) <= len(short)
    assert all(g >= min(short) for g in released)
    spare = {h.key: out.get(h.key, h.current) - h.wanted for h in held}  # left after the release
    if one_gpu:  # as many as are short, or every spare one
        assert len(released) == min(len(short), sum(h.current - h.wanted for h in held))
    elif held and short and max(short) <= min(h.gpus for h in held):
        # Every spare replica takes at least one: none is left while a short replica is.
        assert sum(spare.values()) == 0 or _covered(short, released) == len(short)


def _covered(short: list[int], bins: list[int]) -> int:
    """How many of the short replicas, largest first, the released replicas' GPUs take (first fit)."""
    room = sorted(bins, reverse=True)
    n = 0
    for g in sorted(short, reverse=True):
        for i, r in enumerate(room):
            if g <= r:
                room[i] -= g
                n += 1
                break
    return n


def test_decide_reports_the_count_without_the_window_and_when_its_hold_ends() -> None:
    inputs = pa.ScalingInputs(
        current_replicas=4,
        ready_replicas=4,
        min_replicas=1,
        max_replicas=10,
        target_utilization=0.5,
        capacity_rps=10.0,
        request_rate=40.0,
        gpu_utilization=None,
        sampled_at=0.0,
    )
    first = pa.decide(inputs, pa.ScalerState(), 0.0)
    assert first.desired_replicas == first.wanted == 8
    # The load halves: the window holds 8 while the load asks for 4.
    calm = pa.decide(
        pa.ScalingInputs(
            **{**inputs.__dict__, "current_replicas": 8, "request_rate": 20.0, "sampled_at": 60.0}
        ),
        first.state,
        60.0,
    )
    assert calm.reason == pa.STABILIZING and calm.desired_replicas == 8 and calm.wanted == 4
    assert pa.held_until(calm.state, 8, inputs.scale_down_delay_s) == 0.0 + inputs.scale_down_delay_s
    assert pa.held_until(calm.state, 9, inputs.scale_down_delay_s) == -math.inf
    # No reading: the decision holds, and nothing in it may be released.
    missing = pa.decide(replace(inputs, request_rate=None, sampled_at=None), calm.state, 90.0)
    assert missing.wanted is None
