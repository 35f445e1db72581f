"""Scale to zero and back (policy/autoscaling.py): the idle period, the activator's demand, and never a
scale to zero on missing or stale metrics."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from greenserve.policy import autoscaling as pa

NOW = 10_000.0


def idle(**kw: object) -> pa.ScalingInputs:
    base = pa.ScalingInputs(
        current_replicas=1,
        ready_replicas=1,
        min_replicas=0,
        max_replicas=4,
        target_utilization=0.8,
        capacity_rps=100.0,
        request_rate=0.0,
        gpu_utilization=None,
        sampled_at=NOW - 5,
        scale_down_delay_s=0.0,
        idle_power_w=30.0,
        cold_start_energy_j=1800.0,  # break-even 60 s
        cold_start_s=30.0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def run_idle(inputs: pa.ScalingInputs, until: float, step: float = 5.0) -> list[pa.ScaleDecision]:
    """Decide every `step` seconds on fresh idle readings; the count follows the decisions."""
    out, state, t = [], pa.ScalerState(), NOW
    while t <= until:
        d = pa.decide(replace(inputs, sampled_at=t - 1), state, t)
        out.append(d)
        state, t = d.state, t + step
        inputs = replace(inputs, current_replicas=d.desired_replicas)
    return out


def test_the_idle_period_overrides_the_break_even() -> None:
    decisions = run_idle(idle(idle_to_zero_s=30.0), NOW + 60)
    first_zero = next(i for i, d in enumerate(decisions) if d.desired_replicas == 0)
    assert first_zero * 5.0 == 30.0 and decisions[first_zero].reason == pa.IDLE_TO_ZERO
    default = run_idle(idle(), NOW + 90)
    assert next(i for i, d in enumerate(default) if d.desired_replicas == 0) * 5.0 == 60.0


def test_demand_at_zero_wakes_one_replica_without_metrics() -> None:
    at_zero = idle(current_replicas=0, ready_replicas=0, sampled_at=None, request_rate=None)
    parked = pa.decide(at_zero, pa.ScalerState(idle_since=NOW - 500), NOW)
    assert parked.desired_replicas == 0 and parked.reason == pa.AT_ZERO
    woken = pa.decide(replace(at_zero, demand_at=NOW - 1), parked.state, NOW)
    assert woken.desired_replicas == 1 and woken.reason == pa.WAKE_ON_DEMAND
    assert woken.state.idle_since is None


def test_an_old_demand_mark_does_not_wake_a_parked_model() -> None:
    # Parked after one idle period (60 s) since its last demand: that mark is not fresh any more.
    at_zero = idle(current_replicas=0, ready_replicas=0, sampled_at=None, request_rate=None)
    d = pa.decide(replace(at_zero, demand_at=NOW - 61), pa.ScalerState(), NOW)
    assert d.desired_replicas == 0


def test_demand_restarts_the_idle_period() -> None:
    inputs = idle(idle_to_zero_s=30.0)
    state, t = pa.ScalerState(), NOW
    for _ in range(5):  # 20 s idle
        state = pa.decide(replace(inputs, sampled_at=t - 1), state, t).state
        t += 5
    # A request waited at the activator (a replica that was not ready yet): idle counts from it.
    with_demand = replace(inputs, demand_at=t)
    for _ in range(6):  # 25 s more: 45 s idle, 25 s since the demand
        d = pa.decide(replace(with_demand, sampled_at=t - 1), state, t)
        assert d.desired_replicas == 1
        state, t = d.state, t + 5
    d = pa.decide(replace(with_demand, sampled_at=t - 1), state, t + 5)
    assert d.desired_replicas == 0


@settings(max_examples=300, deadline=None)
@given(
    current=st.integers(0, 4),
    idle_for=st.floats(0, 10_000),
    age=st.floats(0, 10_000),
    missing=st.booleans(),
    demand=st.one_of(st.none(), st.floats(0, 10_000)),
)
def test_missing_or_stale_metrics_never_scale_to_zero(
    current: int, idle_for: float, age: float, missing: bool, demand: float | None
) -> None:
    inputs = idle(
        current_replicas=current,
        ready_replicas=current,
        idle_to_zero_s=10.0,
        demand_at=None if demand is None else NOW - demand,
    )
    stale = (
        replace(inputs, request_rate=None, sampled_at=None)
        if missing
        else replace(inputs, sampled_at=NOW - 121 - age)
    )
    d = pa.decide(stale, pa.ScalerState(idle_since=NOW - idle_for), NOW)
    assert d.desired_replicas >= current  # held, or woken by demand: never down


def test_fresh_demand_wakes_but_never_scales_down() -> None:
    busy = idle(current_replicas=3, ready_replicas=3, request_rate=250.0, demand_at=NOW)
    d = pa.decide(busy, pa.ScalerState(), NOW)
    assert d.desired_replicas == 4  # demand from the rate; the activator's mark adds nothing
