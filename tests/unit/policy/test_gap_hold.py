"""Hold after a metrics gap (issue 17): once metrics come back, no scale-down until a full metrics window
of fresh data exists and the stabilisation window has been refilled; scale-up is never blocked."""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from greenserve.policy import autoscaling as pa

T0 = 100_000.0
HOLDS = (pa.HOLD_MISSING, pa.HOLD_STALE)


def inputs(**kw: object) -> pa.ScalingInputs:
    # 200 req/s on replicas of 40 req/s at 0.85: ceil(200 / 34) = 6 replicas; 48.7 req/s needs 2.
    base = pa.ScalingInputs(
        current_replicas=6,
        ready_replicas=6,
        min_replicas=1,
        max_replicas=20,
        target_utilization=0.85,
        capacity_rps=40.0,
        request_rate=200.0,
        gpu_utilization=None,
        sampled_at=T0,
        stale_after_s=30.0,
        scale_down_delay_s=60.0,
        metrics_window_s=30.0,
        idle_power_w=30.0,
        cold_start_energy_j=1800.0,
        cold_start_s=30.0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_the_issue_case_holds_then_scales_down_on_clean_data_only() -> None:
    """6 replicas at 200 req/s; the source goes away for longer than the stabilisation delay; the first
    readings after it under-read the load (48.7 req/s): the count stays at 6."""
    state, now = pa.ScalerState(), T0
    for _ in range(8):  # steady state before the gap
        d = pa.decide(inputs(sampled_at=now - 1), state, now)
        assert d.desired_replicas == 6
        state, now = d.state, now + 10
    gap_start = now
    while now < gap_start + 120:  # the source is down for twice scale_down_delay_s
        d = pa.decide(inputs(request_rate=None, sampled_at=None), state, now)
        assert (d.desired_replicas, d.reason) == (6, pa.HOLD_MISSING)
        state, now = d.state, now + 10
    resumed = now - 1
    # Under-read windows, then clean ones showing the same low load: held for window + delay.
    held_until = resumed + 30 + 60
    while now < held_until:
        d = pa.decide(inputs(request_rate=48.7, sampled_at=now - 1), state, now)
        assert (d.desired_replicas, d.reason) == (6, pa.HOLD_AFTER_GAP), now - resumed
        state, now = d.state, now + 10
    # Once refilled with clean readings, a real drop in load does scale down.
    down = pa.decide(inputs(request_rate=48.7, sampled_at=now - 1), state, now + 10)
    assert down.desired_replicas == 2 and down.reason == pa.SCALE_DOWN
    assert down.state.resumed_at is None and down.state.refill_from is None


def test_a_gap_never_blocks_a_scale_up() -> None:
    state = pa.decide(inputs(request_rate=None, sampled_at=None), pa.ScalerState(), T0).state
    assert state.gap_since == T0
    # The very first reading after the gap overlaps it, yet it already shows more load than 6 replicas
    # carry: scale up at once.
    up = pa.decide(inputs(request_rate=400.0, sampled_at=T0 + 10), state, T0 + 11)
    assert up.desired_replicas == 12 and up.reason == pa.SCALE_UP
    # Not remembered as a recommendation: a window overlapping the gap is never acted on for scale-down.
    assert up.state.recommendations == ()


def test_a_rise_across_the_gap_is_not_projected() -> None:
    """The trend's older windows span the gap and under-read: their 'rise' is the gap, not load."""
    state = pa.decide(inputs(request_rate=None, sampled_at=None), pa.ScalerState(), T0).state
    rising = inputs(request_rate=200.0, request_rate_trend=5.0, sampled_at=T0 + 40, trend_max_boost=1.0)
    held = pa.decide(rising, state, T0 + 41)
    assert (held.desired_replicas, held.reason) == (6, pa.HOLD_AFTER_GAP)
    # Without a gap the same reading projects the rise: scale up ahead of it.
    assert pa.decide(rising, pa.ScalerState(), T0 + 41).desired_replicas > 6


def test_an_idle_service_neither_parks_nor_wakes_during_the_hold() -> None:
    idle = inputs(min_replicas=0, current_replicas=0, ready_replicas=0, request_rate=0.0)
    state = pa.decide(replace(idle, sampled_at=T0 - 1), pa.ScalerState(idle_since=T0 - 3600), T0).state
    state = pa.decide(replace(idle, sampled_at=None, request_rate=None), state, T0 + 10).state
    d = pa.decide(replace(idle, sampled_at=T0 + 19), state, T0 + 20)
    assert d.desired_replicas == 0 and d.reason == pa.HOLD_AFTER_GAP
    warm = replace(idle, current_replicas=2, ready_replicas=2)
    d = pa.decide(replace(warm, sampled_at=T0 + 29), state, T0 + 30)
    assert d.desired_replicas == 2 and d.reason == pa.HOLD_AFTER_GAP  # not to zero on a gap's window


def test_the_gap_round_trips_through_status() -> None:
    state = pa.decide(inputs(request_rate=None, sampled_at=None), pa.ScalerState(), T0).state
    state = pa.decide(inputs(request_rate=48.7, sampled_at=T0 + 40), state, T0 + 41).state
    stored = state.to_dict()
    # Every key is written, null included: the status merge patch must be able to clear them.
    assert {"gapSince", "resumedAt", "refillFrom"} <= stored.keys()
    assert pa.ScalerState.from_dict(stored) == state


# --- property: random gaps ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    kind: str  # "fresh" | "missing" | "stale" | "skip" (no decision at all: the operator was down)
    dt: float  # seconds to the next step
    rate: float
    age: float  # of a fresh reading's sample


steps = st.builds(
    Step,
    st.sampled_from(["fresh"] * 6 + ["missing", "stale", "skip"]),
    st.floats(1, 90),
    st.one_of(st.floats(0, 1000), st.sampled_from([0.0, 10.0, 48.7, 200.0])),
    st.floats(0, 20),
)


@settings(max_examples=400, deadline=None)
@given(
    timeline=st.lists(st.tuples(steps, st.integers(1, 12)), min_size=1, max_size=12),
    window=st.floats(0, 120),
    delay=st.floats(0, 400),
    min_replicas=st.integers(0, 2),
)
def test_no_scale_down_sooner_than_a_window_plus_the_delay_after_any_gap(
    timeline: list[tuple[Step, int]], window: float, delay: float, min_replicas: int
) -> None:
    """Random runs of fresh, missing, stale and absent readings. A gap is a missing or stale reading, or
    no decision for longer than both the stabilisation delay and the staleness limit; it ends with the
    sample of the next fresh reading. No scale-down may come sooner than one metrics window plus the
    stabilisation delay after that, and a fresh reading that shows more demand than the current count
    always scales up."""
    base = inputs(
        min_replicas=min_replicas,
        stale_after_s=25.0,
        scale_down_delay_s=delay,
        metrics_window_s=window,
    )
    state, now, current = pa.ScalerState(), T0, 6
    last_decision: float | None = None
    in_gap = False
    gap_end: float | None = None
    for step, repeat in timeline:
        for _ in range(repeat):
            now += step.dt
            if step.kind == "skip":
                continue
            if step.kind == "fresh":
                sampled = now - step.age
                reading = replace(base, request_rate=step.rate, sampled_at=sampled)
                if in_gap or (last_decision is not None and now - last_decision > max(delay, 25.0)):
                    gap_end, in_gap = sampled, False
            else:
                sampled = None if step.kind == "missing" else now - 60.0
                reading = replace(base, request_rate=None if sampled is None else step.rate)
                reading = replace(reading, sampled_at=sampled)
                in_gap = True
            reading = replace(reading, current_replicas=current, ready_replicas=current)
            d = pa.decide(reading, state, now)
            if d.reason in HOLDS:
                assert d.desired_replicas == current
            if d.desired_replicas < current and gap_end is not None:
                assert now >= gap_end + window + delay, (
                    f"scale-down {current} -> {d.desired_replicas} at +{now - gap_end:.1f} s after a gap "
                    f"(window {window:.1f} s, delay {delay:.1f} s): {d.reason}"
                )
            if d.reason not in HOLDS and d.demand_replicas is not None:
                demand = min(base.max_replicas, max(d.demand_replicas, min_replicas))
                if demand > current:
                    assert d.desired_replicas >= demand, f"scale-up blocked: {d.reason}"
            state, current, last_decision = d.state, d.desired_replicas, now


@settings(max_examples=200, deadline=None)
@given(
    gap=st.floats(1, 900),
    cadence=st.floats(1, 25),
    age=st.floats(0, 5),
    window=st.floats(0, 120),
    delay=st.floats(0, 400),
)
def test_the_hold_ends_once_the_window_is_refilled(
    gap: float, cadence: float, age: float, window: float, delay: float
) -> None:
    """The hold is not forever: with fresh readings at any cadence within the staleness limit, a real
    drop in load scales down within a window plus the delay (and two passes) after the gap."""
    base = inputs(stale_after_s=25.0, scale_down_delay_s=delay, metrics_window_s=window)
    state = pa.decide(replace(base, sampled_at=T0 - age), pa.ScalerState(), T0).state
    state = pa.decide(replace(base, sampled_at=None, request_rate=None), state, T0 + gap).state
    now, current = T0 + gap + cadence, 6
    resumed = now - age
    while current == 6:
        d = pa.decide(replace(base, request_rate=48.7, sampled_at=now - age), state, now)
        state, current = d.state, d.desired_replicas
        assert current == 2 or now <= resumed + age + window + delay + 2 * cadence, d.reason
        now += cadence
    assert current == 2
