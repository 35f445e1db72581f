"""Held replicas give way to a scale-up that would otherwise open a node (policy/release.py)."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from greenserve.policy import autoscaling as pa
from greenserve.policy.release import (
    Headroom,
    Held,
    ScaleUp,
    Unplaced,
    give_way,
    place,
    plan_scale_ups,
    release,
    release_headroom,
    shortfall,
)


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


def test_headroom_gives_way_one_replica_at_a_time_from_the_model_with_the_most_left() -> None:
    headroom = [Headroom("a", 6, 2), Headroom("b", 3, 2), Headroom("c", 4, 4)]
    # a has 4 spare, b 1, c none: a gives until it has as few as b, then they alternate.
    assert release_headroom([1] * 4, headroom) == {"a": 3, "b": 2}
    assert release_headroom([1] * 3, headroom) == {"a": 3}
    # Never below the load seen, however many are short.
    assert release_headroom([1] * 20, headroom) == {"a": 2, "b": 2}
    # A replica of one GPU does not make room for a short one of two.
    assert release_headroom([2], [Headroom("a", 6, 2), Headroom("d", 2, 0, gpus=2)]) == {"d": 1}


def test_load_seen_without_a_gpu_takes_headroom_but_a_scale_up_for_headroom_does_not() -> None:
    spare = [Headroom("a", 5, 2)]
    # b's load asks for 3 replicas that no node holds and no GPU is free: a's headroom gives way.
    assert give_way([], [], spare, [Unplaced("b", 3)], [0, 0], [], 0.0, 120.0) == {"a": 2}
    # One GPU is free: it takes one of them, the headroom the rest.
    assert give_way([], [], spare, [Unplaced("b", 3)], [1, 0], [], 0.0, 120.0) == {"a": 3}
    # b scales up for its rise headroom only (nothing unplaced that its load asks for): a keeps its own.
    assert give_way([ScaleUp("b", 2, 5, 2)], [], spare, [], [0], [], 0.0, 120.0) == {}
    # A model that is itself short gives none of its headroom.
    assert give_way([], [], spare, [Unplaced("a", 1)], [0], [], 0.0, 120.0) == {}


def test_window_holds_give_way_before_headroom_and_their_gpus_count() -> None:
    held = [Held("w", 4, 2, 60.0)]
    spare = [Headroom("a", 5, 2), Headroom("w", 4, 1, wanted=2)]
    ups = [ScaleUp("b", 1, 4, 1)]
    # b adds 3 replicas, 3 of them for load seen: w's window releases 2 (to its wanted count); the third
    # comes from the headroom left, a's first (3 spare against w's 1 once w is at 2).
    assert give_way(ups, held, spare, [Unplaced("b", 3)], [0], [], 0.0, 120.0) == {"w": 2, "a": 4}
    # A hold that outlasts a node's provisioning keeps the replicas above w's count without the window
    # (2): only its headroom (one above its bare 1) and a's give way, a's first (3 spare against 1).
    late = [Held("w", 4, 2, 600.0)]
    spare = [Headroom("a", 5, 2), Headroom("w", 4, 1, wanted=2)]
    assert give_way(ups, late, spare, [Unplaced("b", 3)], [0], [], 0.0, 120.0) == {"a": 3, "w": 3}
    assert give_way(ups, late, spare, [Unplaced("b", 5)], [0], [], 0.0, 120.0) == {"a": 2, "w": 3}
    # For the part of a scale-up that is headroom only, nothing but the window's release applies.
    assert give_way(ups, late, spare, [], [0], [], 0.0, 120.0) == {}


def _risen(max_replicas: int) -> pa.ScalingInputs:
    """20 req/s seen, sized with a rise factor of 3 (10 req/s a replica at a target of 0.5)."""
    return pa.ScalingInputs(
        current_replicas=2,
        ready_replicas=2,
        min_replicas=1,
        max_replicas=max_replicas,
        target_utilization=0.5,
        capacity_rps=10.0,
        request_rate=60.0,
        gpu_utilization=None,
        sampled_at=0.0,
        rise_factor=3.0,
    )


def test_decide_reports_the_count_the_load_seen_asks_for_without_the_rise_headroom() -> None:
    inputs = _risen(max_replicas=20)
    d = pa.decide(inputs, pa.ScalerState(), 0.0)
    assert (d.desired_replicas, d.wanted, d.bare) == (12, 12, 4)
    assert pa.decide(replace(inputs, rise_factor=1.0), pa.ScalerState(), 0.0).bare == 12


def test_a_model_whose_own_rise_is_under_way_keeps_its_headroom() -> None:
    """A sustained rise (or a queue) is the rise the headroom was held for: none of it is given way, and
    the replicas asked for count as load seen (seen: 5 ms bursts met their own model's burst after its
    headroom had gone to another model's load, README.md "How it scales")."""
    inputs = _risen(max_replicas=40)
    rising = pa.decide(replace(inputs, request_rate_trend=0.05), pa.ScalerState(), 0.0)
    assert rising.bare == rising.wanted == rising.desired_replicas > 12
    queued = pa.decide(replace(inputs, queued_requests=30.0), pa.ScalerState(), 0.0)
    assert queued.bare == queued.desired_replicas > 12
    # A steady model's headroom stays spare, and so can give way.
    steady = pa.decide(inputs, pa.ScalerState(), 0.0)
    assert steady.bare is not None and steady.bare < steady.desired_replicas
    # A steady model whose in-flight gauge reads above its busy count only by chance (20 req/s at 10 a
    # replica keep 2 in service; an instant's gauge of 5 is within its noise) is asked for no replica
    # more, but keeps its headroom: about half of a steady model's readings do, which leaves that share
    # of the fleet's headroom out of each tick's give-way (autoscaling.decide).
    gauge = (pa.queued_from_inflight(5.0, 20.0, 10.0), pa.inflight_noise(20.0, 10.0))
    gauged = pa.decide(
        replace(inputs, queued_requests=gauge[0], queued_noise=gauge[1]), pa.ScalerState(), 0.0
    )
    assert gauged.desired_replicas == steady.desired_replicas
    assert gauged.bare == gauged.desired_replicas


@given(
    st.lists(st.integers(1, 4), max_size=12),
    st.lists(
        st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(0, 8), st.integers(1, 4)), max_size=8
    ),
)
def test_headroom_gives_what_it_can_and_keeps_every_model_at_its_bare_and_window_counts(
    short: list[int], raw: list[tuple[int, int, int, int]]
) -> None:
    rooms = [Headroom(f"m{i}", c, b, g, w) for i, (c, b, w, g) in enumerate(raw)]
    out = release_headroom(short, rooms)
    by_key = {h.key: h for h in rooms}
    for k, n in out.items():
        h = by_key[k]
        assert h.current - h.spare <= n < h.current  # never below bare, never a window-held replica
    released = [by_key[k].gpus for k, n in out.items() for _ in range(by_key[k].current - n)]
    assert len(released) <= len(short) and _covered(short, released) >= len(released)
    if short and all(g == 1 for g in short) and all(h.gpus == 1 for h in rooms):
        assert len(released) == min(len(short), sum(h.spare for h in rooms))
