"""Sizing by the M/M/c queueing model (ScalingInputs.slo_attainment) and queueing.replicas_for_attainment."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from greenserve.policy import autoscaling as pa
from greenserve.policy import queueing

NOW = 1_000_000.0


def _inputs(**kw: object) -> pa.ScalingInputs:
    base = pa.ScalingInputs(
        current_replicas=10,
        ready_replicas=10,
        min_replicas=1,
        max_replicas=200,
        target_utilization=0.7,
        capacity_rps=10.0,
        request_rate=300.0,
        gpu_utilization=None,
        sampled_at=NOW - 10.0,
        slo_p95_ms=500.0,
        service_time_ms=100.0,
        slo_attainment=0.995,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(st.floats(0.1, 500.0), st.floats(1.0, 200.0), st.floats(1.05, 20.0), st.floats(0.5, 0.9999))
def test_replicas_for_attainment_is_minimal(rate: float, mu: float, slack: float, target: float) -> None:
    slo = slack / mu  # longer than one service time, so some replica count meets any target
    c = queueing.replicas_for_attainment(rate, mu, slo, target, limit=5000)
    if c < 5000:
        assert queueing.attainment(rate, mu, c, slo) >= target
        assert c == 1 or queueing.attainment(rate, mu, c - 1, slo) < target


@settings(max_examples=100, deadline=None)
@given(st.floats(0.1, 500.0), st.floats(1.0, 200.0), st.floats(1.05, 20.0))
def test_attainment_095_is_the_p95_guard(rate: float, mu: float, slack: float) -> None:
    slo = slack / mu
    a = queueing.replicas_for_attainment(rate, mu, slo, 0.95, limit=5000)
    b = queueing.replicas_for_slo(rate, mu, slo, limit=5000)
    assert abs(a - b) <= 1  # equal up to floating point at the boundary


def test_attainment_grows_with_replicas_and_is_zero_when_overloaded() -> None:
    values = [queueing.attainment(30.0, 10.0, c, 0.5) for c in range(1, 8)]
    assert values[:3] == [0.0, 0.0, 0.0] and values == sorted(values) and values[-1] > 0.999
    assert queueing.attainment(0.0, 10.0, 0, 0.5) == 1.0
    assert queueing.attainment(5.0, 10.0, 3, 0.05) == 0.0  # SLO shorter than one service time


def test_slo_sizing_runs_pooled_replicas_hotter_than_the_fixed_target() -> None:
    by_target = pa.decide(_inputs(slo_attainment=None), pa.ScalerState(), NOW)
    by_slo = pa.decide(_inputs(), pa.ScalerState(), NOW)
    assert by_target.desired_replicas == 43  # ceil(300 / (10 * 0.7))
    assert by_slo.desired_replicas < by_target.desired_replicas
    assert queueing.attainment(300.0, 10.0, by_slo.desired_replicas, 0.5) >= 0.995
    # ... and never below the p95 guard.
    assert by_slo.desired_replicas >= queueing.replicas_for_slo(300.0, 10.0, 0.5)


def test_slo_sizing_scales_up_for_a_tight_slo_and_small_pools() -> None:
    # One replica at 70% of 10 req/s misses a 500 ms SLO for more than 0.5% of requests.
    d = pa.decide(_inputs(request_rate=7.0, current_replicas=1, ready_replicas=1), pa.ScalerState(), NOW)
    assert d.desired_replicas >= 2 and d.reason == pa.SCALE_UP


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 50), st.floats(0.0, 1000.0), st.sampled_from(["missing", "stale"]))
def test_slo_sizing_never_scales_on_missing_or_stale_metrics(current: int, rate: float, how: str) -> None:
    if how == "missing":
        inputs = _inputs(current_replicas=current, request_rate=None, sampled_at=None)
    else:
        inputs = _inputs(current_replicas=current, request_rate=rate, sampled_at=NOW - 10_000.0)
    d = pa.decide(inputs, pa.ScalerState(), NOW)
    assert d.desired_replicas == current and d.reason.startswith("Hold")


@settings(max_examples=300, deadline=None)
@given(
    st.floats(0.0, 3000.0),
    st.floats(0.5, 500.0),
    st.floats(0.05, 1.0),
    st.one_of(st.none(), st.floats(1.0, 20_000.0)),
    st.one_of(st.none(), st.floats(0.5, 0.9999)),
    st.integers(1, 300),
)
def test_the_headroom_count_is_demand_replicas_of_the_rate(
    rate: float, mu: float, util: float, slo_ms: float | None, target: float | None, max_replicas: int
) -> None:
    """The headroom's bisections count replicas without building ScalingInputs: the count is
    `demand_replicas` of inputs sized by that rate alone."""
    probe = _inputs(
        max_replicas=max_replicas,
        target_utilization=util,
        capacity_rps=mu,
        request_rate=rate,
        slo_p95_ms=slo_ms,
        slo_attainment=target,
    )
    found = pa.demand_replicas(probe)
    assert pa._count_at(rate, mu, util, slo_ms, target, max_replicas) == (found[0] if found else 0)
