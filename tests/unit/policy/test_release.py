"""Held replicas give way to a scale-up that would otherwise open a node (policy/release.py)."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from greenserve.policy import autoscaling as pa
from greenserve.policy.release import Held, ScaleUp, plan_scale_ups, release, shortfall


def test_nothing_is_released_without_a_shortfall() -> None:
    held = [Held("a", 3, 1, 100.0)]
    assert shortfall([ScaleUp("b", 1, 2, 1)], free_gpus=1) == 0
    assert release(0, held, 0.0, math.inf) == {}


def test_the_hold_that_ends_soonest_gives_way_first_and_never_below_what_the_load_asks() -> None:
    held = [Held("late", 4, 2, 300.0), Held("soon", 3, 2, 120.0)]
    assert release(1, held, 0.0, math.inf) == {"soon": 2}
    # Two GPUs short: "soon" has only one held replica, the rest comes from the next hold to end.
    assert release(2, held, 0.0, math.inf) == {"soon": 2, "late": 3}
    # More than is held: everything held goes, nobody below its wanted count.
    assert release(10, held, 0.0, math.inf) == {"soon": 2, "late": 2}


def test_only_holds_that_end_before_a_new_node_would_be_ready_give_way() -> None:
    held = [Held("soon", 3, 1, 1_090.0), Held("late", 3, 1, 1_200.0)]
    # At 1,000 s with nodes ready 120 s after they are asked for: "late" holds past that; a node serves.
    assert release(4, held, 1_000.0, 120.0) == {"soon": 1}
    assert release(4, held, 1_100.0, 120.0) == {"soon": 1, "late": 1}


def test_a_replica_of_several_gpus_covers_a_smaller_shortfall() -> None:
    assert release(1, [Held("big", 2, 1, 0.0, gpus=2), Held("small", 2, 1, 5.0)], 0.0, 60.0) == {"big": 1}


def test_the_shortfall_counts_gpus_per_replica() -> None:
    ups = [ScaleUp("a", 1, 3, 1, gpus=2), ScaleUp("b", 0, 1, 0)]
    assert shortfall(ups, free_gpus=2) == 3
    assert shortfall(ups, free_gpus=-4) == 5  # pending pods already took more than is free: none free


def test_scale_ups_apply_at_once_when_no_gpu_is_being_freed() -> None:
    ups = [ScaleUp("a", 2, 4, 2), ScaleUp("b", 1, 2, 1)]
    assert plan_scale_ups(ups, free_now=0, freeing=0) == {"a": 4, "b": 2}
    assert plan_scale_ups(ups, free_now=3, freeing=5) == {"a": 4, "b": 2}


def test_the_part_waiting_for_draining_gpus_waits_and_the_rest_goes_now() -> None:
    ups = [ScaleUp("a", 2, 4, 2), ScaleUp("cold", 0, 1, 0), ScaleUp("b", 1, 3, 1)]
    # 5 asked, 1 free now, 2 being freed: 2 wait; the other 3 are created now (one fits, two need a node).
    out = plan_scale_ups(ups, free_now=1, freeing=2)
    assert out["cold"] == 1  # a model with no ready replica never waits
    assert out == {"a": 2, "cold": 1, "b": 3}  # the model with the most ready replicas waits first
    assert sum(out[u.key] - u.current for u in ups) == 5 - 2


@given(
    st.integers(0, 20),
    st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 6), st.floats(0, 1e4), st.integers(1, 4)), max_size=8
    ),
)
def test_release_frees_what_it_can_and_keeps_every_model_at_its_wanted_count(
    short: int, raw: list[tuple[int, int, float, int]]
) -> None:
    held = [Held(f"m{i}", max(c, w), w, t, g) for i, (c, w, t, g) in enumerate(raw)]
    out = release(short, held, 0.0, math.inf)
    by_key = {h.key: h for h in held}
    freed = sum((by_key[k].current - n) * by_key[k].gpus for k, n in out.items())
    spare = sum((h.current - h.wanted) * h.gpus for h in held)
    for k, n in out.items():
        assert by_key[k].wanted <= n < by_key[k].current
    assert freed >= min(short, spare)
    # No more than needed: without its last model's release the shortfall would not be covered.
    if out and short > 0:
        last = max(out, key=lambda k: (by_key[k].held_until, k))
        assert freed - (by_key[last].current - out[last]) * by_key[last].gpus < short


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
