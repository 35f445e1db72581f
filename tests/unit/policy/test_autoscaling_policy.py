from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenserve.policy import autoscaling as pa

NOW = 10_000.0


def inputs(**kw: object) -> pa.ScalingInputs:
    base = pa.ScalingInputs(
        current_replicas=2,
        ready_replicas=2,
        min_replicas=1,
        max_replicas=10,
        target_utilization=0.8,
        capacity_rps=100.0,
        request_rate=100.0,
        gpu_utilization=None,
        sampled_at=NOW - 5,
        scale_down_delay_s=300.0,
        idle_power_w=30.0,
        cold_start_energy_j=1800.0,
        cold_start_s=30.0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_scales_up_at_once_to_demand() -> None:
    d = pa.decide(inputs(request_rate=500.0), pa.ScalerState(), NOW)
    assert d.desired_replicas == 7  # ceil(500 / (100 * 0.8))
    assert d.reason == pa.SCALE_UP


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    state = pa.ScalerState()
    high = inputs(current_replicas=7, ready_replicas=7, request_rate=500.0)
    state = pa.decide(high, state, NOW).state
    low = inputs(current_replicas=7, ready_replicas=7, request_rate=50.0)
    early = pa.decide(low, state, NOW + 60)
    assert early.desired_replicas == 7 and early.reason == pa.STABILIZING
    state = early.state
    for t in (120.0, 180.0, 240.0):  # decisions keep the window filled, as the operator's resync does
        d = pa.decide(replace(low, sampled_at=NOW + t - 1), state, NOW + t)
        assert d.desired_replicas == 7 and d.reason == pa.STABILIZING
        state = d.state
    late = pa.decide(replace(low, sampled_at=NOW + 300), state, NOW + 301)
    assert late.desired_replicas == 1 and late.reason == pa.SCALE_DOWN
    # Without a decision for a whole window (operator down), one reading may not scale down alone.
    lone = pa.decide(replace(low, sampled_at=NOW + 400), early.state, NOW + 401)
    assert lone.desired_replicas == 7 and lone.reason == pa.HOLD_AFTER_GAP


def test_missing_or_stale_metrics_hold() -> None:
    missing = pa.decide(inputs(request_rate=None, sampled_at=None), pa.ScalerState(), NOW)
    assert (missing.desired_replicas, missing.reason) == (2, pa.HOLD_MISSING)
    stale = pa.decide(inputs(request_rate=0.0, sampled_at=NOW - 600), pa.ScalerState(), NOW)
    assert (stale.desired_replicas, stale.reason) == (2, pa.HOLD_STALE)


def test_gpu_utilization_metric_uses_the_hpa_formula() -> None:
    d = pa.decide(
        inputs(capacity_rps=None, request_rate=None, gpu_utilization=0.9, target_utilization=0.6),
        pa.ScalerState(),
        NOW,
    )
    assert d.desired_replicas == 3  # ceil(2 * 0.9 / 0.6)


def test_slo_guard_adds_replicas_beyond_utilisation_demand() -> None:
    # 140 req/s on replicas of 100 req/s: 2 replicas by utilisation, but queueing breaks a 15 ms p95.
    d = pa.decide(inputs(request_rate=140.0, slo_p95_ms=15.0), pa.ScalerState(), NOW)
    assert d.desired_replicas > 2 and d.reason == pa.SLO_GUARD


def test_idle_to_zero_after_break_even() -> None:
    idle = inputs(min_replicas=0, current_replicas=1, ready_replicas=1, request_rate=0.0)
    first = pa.decide(idle, pa.ScalerState(), NOW)
    assert first.desired_replicas == 1 and first.reason == pa.IDLE_WAITING
    # break-even = 1800 J / 30 W = 60 s
    still = pa.decide(replace(idle, sampled_at=NOW + 50), first.state, NOW + 55)
    assert still.desired_replicas == 1
    gone = pa.decide(replace(idle, sampled_at=NOW + 60), still.state, NOW + 61)
    assert gone.desired_replicas == 0 and gone.reason == pa.IDLE_TO_ZERO
    back = pa.decide(
        replace(idle, current_replicas=0, ready_replicas=0, request_rate=5.0, sampled_at=NOW + 70),
        gone.state,
        NOW + 71,
    )
    assert back.desired_replicas == 1 and back.state.idle_since is None


def test_state_round_trips_through_status() -> None:
    state = pa.decide(inputs(request_rate=500.0), pa.ScalerState(), NOW).state
    assert pa.ScalerState.from_dict(state.to_dict()) == state
    assert pa.ScalerState.from_dict({"recommendations": "garbage"}) == pa.ScalerState()


@settings(max_examples=300, deadline=None)
@given(
    current=st.integers(0, 20),
    lo=st.integers(0, 5),
    span=st.integers(0, 15),
    rate=st.one_of(st.none(), st.floats(0, 5000)),
    util=st.one_of(st.none(), st.floats(0, 1)),
    age=st.floats(0, 1000),
    slo=st.one_of(st.none(), st.floats(5, 500)),
)
def test_bounds_and_hold_properties(
    current: int, lo: int, span: int, rate: float | None, util: float | None, age: float, slo: float | None
) -> None:
    i = inputs(
        current_replicas=current,
        ready_replicas=current,
        min_replicas=lo,
        max_replicas=max(lo + span, 1),
        request_rate=rate,
        gpu_utilization=util,
        sampled_at=NOW - age,
        slo_p95_ms=slo,
    )
    d = pa.decide(i, pa.ScalerState(), NOW)
    if d.reason in (pa.HOLD_MISSING, pa.HOLD_STALE):
        assert d.desired_replicas == current  # missing or stale data never changes anything
    else:
        assert d.desired_replicas <= max(i.max_replicas, current)
        assert d.desired_replicas >= min(current, max(i.min_replicas, 0))
        # Never below current demand: scale-down only when the window allows it and demand is lower.
        if d.desired_replicas < current and d.demand_replicas is not None:
            assert d.desired_replicas >= min(d.demand_replicas, i.max_replicas) or d.reason == pa.IDLE_TO_ZERO
    assert age <= i.stale_after_s or d.desired_replicas == current


def test_queued_requests_are_cleared_over_the_drain_time() -> None:
    # 100 req/s at 100 req/s per replica (target 0.8): 2 replicas. 6000 waiting over 60 s add 100 req/s:
    # ceil(200 / 80) = 3; over 300 s they add only 20 req/s, which 2 replicas absorb.
    assert pa.decide(inputs(), pa.ScalerState(), NOW).desired_replicas == 2
    d = pa.decide(inputs(queued_requests=6000.0, queue_drain_s=60.0), pa.ScalerState(), NOW)
    assert d.desired_replicas == 3 and d.reason == pa.SCALE_UP
    slow = pa.decide(inputs(queued_requests=6000.0, queue_drain_s=300.0), pa.ScalerState(), NOW)
    assert slow.desired_replicas == 2
    # A small queue adds nothing beyond the rate's demand; it never lowers it.
    small = pa.decide(inputs(queued_requests=10.0), pa.ScalerState(), NOW)
    assert small.demand_replicas == 2
    # Stale metrics hold whatever the queue says.
    stale = pa.decide(inputs(sampled_at=NOW - 3600, queued_requests=1e6), pa.ScalerState(), NOW)
    assert stale.desired_replicas == 2 and stale.reason == pa.HOLD_STALE


def test_queued_from_inflight_is_littles_law() -> None:
    assert pa.queued_from_inflight(None, 100.0, 10.0) is None
    assert pa.queued_from_inflight(25.0, None, 10.0) is None
    assert pa.queued_from_inflight(25.0, 100.0, 10.0) == 15.0  # 10 in service at 100 req/s, 10/s each
    assert pa.queued_from_inflight(5.0, 100.0, 10.0) == 0.0  # fewer than in service: no queue


def test_an_inflight_reading_within_the_gauges_noise_adds_no_replica() -> None:
    # 100 req/s at 10 req/s a replica: 10 busy on average, and an instant's count spreads by sqrt(10)
    # around it (at least one request: a model of a few requests a minute needs a few over).
    assert pa.inflight_noise(100.0, 10.0) == pytest.approx(math.sqrt(10.0))
    assert pa.inflight_noise(1.0, 10.0) == 1.0
    assert pa.inflight_noise(None, 10.0) == 0.0
    steady = inputs(capacity_rps=10.0, current_replicas=13, ready_replicas=13, max_replicas=40)
    noise = pa.inflight_noise(100.0, 10.0)
    assert pa.decide(steady, pa.ScalerState(), NOW).desired_replicas == 13  # ceil(100 / 8)
    # Nine over the busy count is within three deviations (9.5): no replica, where counted over a
    # one-second drain it would have made 109 req/s and 14.
    noisy = replace(steady, queued_requests=9.0, queued_noise=noise, queue_drain_s=1.0)
    assert pa.decide(noisy, pa.ScalerState(), NOW).desired_replicas == 13
    # Ten over is past them: a queue, cleared over the drain time.
    queue = pa.decide(replace(noisy, queued_requests=10.0), pa.ScalerState(), NOW)
    assert queue.desired_replicas == 14 and queue.reason == pa.SCALE_UP
