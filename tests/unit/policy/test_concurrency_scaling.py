"""`scaling.metric: concurrency` (Knative's in-flight requests per replica): the policy's demand is the
agents' in-flight gauge over the target, and without that gauge it holds, never scales down."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from greenserve.api.v1alpha1 import ScalingMetric, parse_spec
from greenserve.config import OperatorConfig
from greenserve.metrics.types import ServiceMetrics
from greenserve.policy import autoscaling as pa
from greenserve.reconcile import autoscale

NOW = 1_800_000_000.0


def inputs(**kw: object) -> pa.ScalingInputs:
    base = pa.ScalingInputs(
        current_replicas=2,
        ready_replicas=2,
        min_replicas=1,
        max_replicas=20,
        target_utilization=0.8,
        capacity_rps=None,
        request_rate=None,
        gpu_utilization=None,
        sampled_at=NOW - 5,
        scale_down_delay_s=300.0,
        idle_power_w=30.0,
        cold_start_energy_j=1800.0,
        cold_start_s=30.0,
        target_concurrency=10.0,
        concurrency=25.0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_demand_is_in_flight_over_the_target_per_replica() -> None:
    d = pa.decide(inputs(concurrency=25.0), pa.ScalerState(), NOW)
    assert (d.desired_replicas, d.reason) == (3, pa.SCALE_UP)  # ceil(25 / 10), at once
    assert pa.decide(inputs(concurrency=20.0), pa.ScalerState(), NOW).desired_replicas == 2
    # The gauge decides, not the request rate or GPU utilization that would ask for far more.
    busy = inputs(concurrency=5.0, request_rate=5000.0, capacity_rps=100.0, gpu_utilization=1.0)
    assert pa.decide(busy, pa.ScalerState(), NOW).demand_replicas == 1


def test_missing_gauge_holds_even_with_other_metrics() -> None:
    for current in (1, 5, 12):
        d = pa.decide(
            inputs(current_replicas=current, concurrency=None, request_rate=0.0, gpu_utilization=0.0),
            pa.ScalerState(),
            NOW,
        )
        assert (d.desired_replicas, d.reason) == (current, pa.HOLD_MISSING)
    stale = pa.decide(
        inputs(current_replicas=5, concurrency=0.0, sampled_at=NOW - 3600), pa.ScalerState(), NOW
    )
    assert (stale.desired_replicas, stale.reason) == (5, pa.HOLD_STALE)


def test_scale_down_on_concurrency_is_stabilised() -> None:
    up = pa.decide(inputs(current_replicas=2, concurrency=80.0), pa.ScalerState(), NOW)
    assert up.desired_replicas == 8
    calm = inputs(current_replicas=8, ready_replicas=8, concurrency=12.0, sampled_at=NOW + 55)
    held = pa.decide(calm, up.state, NOW + 60)
    assert (held.desired_replicas, held.reason) == (8, pa.STABILIZING)
    for t in (120.0, 180.0, 240.0):  # decisions keep the window filled (a hole is a gap: policy hold)
        held = pa.decide(replace(calm, sampled_at=NOW + t - 5), held.state, NOW + t)
        assert (held.desired_replicas, held.reason) == (8, pa.STABILIZING)
    later = pa.decide(replace(calm, sampled_at=NOW + 355), held.state, NOW + 360)
    assert (later.desired_replicas, later.reason) == (2, pa.SCALE_DOWN)


def test_nothing_in_flight_goes_idle_to_zero_after_the_break_even() -> None:
    idle = inputs(min_replicas=0, current_replicas=1, ready_replicas=1, concurrency=0.0)
    first = pa.decide(idle, pa.ScalerState(), NOW)
    assert (first.desired_replicas, first.reason) == (1, pa.IDLE_WAITING)
    gone, t = first, 0.0
    while gone.desired_replicas and t < 3600:  # a decision a minute, as the operator's resync makes
        t += 60.0
        gone = pa.decide(replace(idle, sampled_at=NOW + t - 5), gone.state, NOW + t)
    assert (gone.desired_replicas, gone.reason) == (0, pa.IDLE_TO_ZERO)


@settings(max_examples=200, deadline=None)
@given(
    current=st.integers(0, 20),
    rate=st.none() | st.floats(0, 1e4),
    util=st.none() | st.floats(0, 1),
    min_r=st.integers(0, 5),
)
def test_without_the_gauge_the_replica_count_never_changes(
    current: int, rate: float | None, util: float | None, min_r: int
) -> None:
    d = pa.decide(
        inputs(
            current_replicas=current,
            concurrency=None,
            request_rate=rate,
            gpu_utilization=util,
            min_replicas=min_r,
        ),
        pa.ScalerState(),
        NOW,
    )
    assert d.desired_replicas == current


# --- the operator's adapter: spec.scaling.metric concurrency reads the agents' in-flight gauge


def concurrency_spec(target: int = 10) -> Any:
    return parse_spec(
        {
            "model": {"name": "m", "storageUri": "pvc://models/m"},
            "scaling": {"minReplicas": 1, "maxReplicas": 20, "metric": "concurrency", "target": target},
        }
    )


def reading(inflight: float | None, rps: float = 1000.0, age_s: float = 5.0) -> ServiceMetrics:
    return ServiceMetrics(
        "ns",
        "m",
        requests_per_s=rps,
        inflight_requests=inflight,
        power_w=500.0,
        sampled_at=NOW - age_s,
        stale=False,
    )


def decide(r: ServiceMetrics | None, current: int = 4) -> autoscale.Decision:
    status = {"desiredReplicas": current, "readyReplicas": current}
    return autoscale.decide(concurrency_spec(), status, r, NOW, OperatorConfig())


def test_spec_accepts_concurrency_with_any_positive_target() -> None:
    s = concurrency_spec(target=250)  # not a percentage: the gpuUtilization rule does not apply
    assert s.scaling.metric is ScalingMetric.CONCURRENCY and s.scaling.target == 250


def test_adapter_sizes_by_the_in_flight_gauge() -> None:
    d = decide(reading(inflight=45.0))
    assert d.desired == 5 and d.intent.reason == pa.SCALE_UP  # ceil(45 / 10); 1000 req/s is not the signal
    inputs_ = autoscale.scaling_inputs(
        concurrency_spec(), {"desiredReplicas": 4}, reading(45.0), OperatorConfig()
    )
    assert (inputs_.target_concurrency, inputs_.concurrency, inputs_.queued_requests) == (10.0, 45.0, None)


def test_adapter_holds_without_the_gauge_or_with_stale_data() -> None:
    for r in (None, reading(inflight=None)):  # no reading, or a plain TF Serving image without the agent
        held = decide(r, current=7)
        assert held.desired == 7 and held.intent.reason == pa.HOLD_MISSING
    stale = decide(reading(inflight=0.0, age_s=3600), current=7)
    assert stale.desired == 7 and stale.intent.reason == pa.HOLD_STALE
