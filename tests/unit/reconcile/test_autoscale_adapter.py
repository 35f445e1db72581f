"""The operator's autoscaling adapter: spec + status + reading in, the policy's decision out."""

from __future__ import annotations

from typing import Any

from greenserve.api.v1alpha1 import parse_spec
from greenserve.config import OperatorConfig
from greenserve.metrics.types import ServiceMetrics
from greenserve.policy import autoscaling as pa
from greenserve.reconcile import autoscale

NOW = 1_800_000_000.0


def spec(policy: str, slo_ms: int | None = 200) -> Any:
    return parse_spec(
        {
            "model": {"name": "m", "storageUri": "pvc://models/m"},
            "scaling": {"minReplicas": 1, "maxReplicas": 20, "target": 100},
            "energy": {"policy": policy},
            "slo": {"latencyP95Ms": slo_ms} if slo_ms else {},
        }
    )


def reading(rps: float) -> ServiceMetrics:
    return ServiceMetrics("ns", "m", requests_per_s=rps, power_w=500.0, sampled_at=NOW - 5, stale=False)


def desired(s: Any, r: ServiceMetrics | None, current: int = 4) -> autoscale.Decision:
    status = {"desiredReplicas": current, "readyReplicas": current}
    return autoscale.decide(s, status, r, NOW, OperatorConfig())


def test_energy_policies_size_by_the_queueing_model_performance_by_the_target() -> None:
    # 1000 req/s against a 100 req/s target: the fixed target wants 10 replicas; at 125 req/s capacity
    # per replica, 9 replicas keep 99.5% of requests within 200 ms by the M/M/c model.
    assert desired(spec("Performance"), reading(1000)).desired == 10
    assert desired(spec("Balanced"), reading(1000)).desired == 9
    assert desired(spec("PowerSaving"), reading(1000)).desired == 9
    # Without an SLO there is nothing to size by: the target applies whatever the policy.
    assert desired(spec("Balanced", slo_ms=None), reading(1000)).desired == 10


def test_missing_or_stale_readings_hold_whatever_the_policy() -> None:
    for policy in ("Performance", "Balanced", "PowerSaving"):
        held = desired(spec(policy), None, current=7)
        assert held.desired == 7 and held.intent.reason == pa.HOLD_MISSING == "HoldMetricsMissing"
        old = ServiceMetrics("ns", "m", requests_per_s=1.0, sampled_at=NOW - 3600, stale=False)
        stale = desired(spec(policy), old, current=7)
        assert stale.desired == 7 and stale.intent.reason == pa.HOLD_STALE == "HoldMetricsStale"


def test_a_queue_in_the_in_flight_gauge_adds_the_replicas_that_clear_it() -> None:
    from dataclasses import replace

    base = reading(1000)
    # 1000 req/s at 125 req/s per replica keeps 8 in service (Little's law); 8 in flight is no queue.
    assert desired(spec("Balanced"), replace(base, inflight_requests=8.0)).desired == 9
    # 6000 waiting, cleared over 60 s: 100 req/s more to serve, one replica more than the rate alone.
    queued = desired(spec("Balanced"), replace(base, inflight_requests=6008.0))
    assert queued.desired == 10 and queued.intent.reason == pa.SCALE_UP
    # A queue never lowers the demand, and an agent-less server (no gauge) sizes by the rate alone.
    assert desired(spec("Balanced"), replace(reading(100), inflight_requests=0.0), current=1).desired == 2
    assert desired(spec("Balanced"), base).desired == 9


def test_a_sustained_rise_is_projected_over_the_cold_start() -> None:
    from dataclasses import replace

    flat = replace(reading(500), rate_history=(500.0, 500.0, 500.0), window_s=30.0)
    # +100 req/s per 30 s window in all three: 3.3 req/s per second, projected over the 60 s cold start
    # and the reading's age (5 s): about 717 req/s to size for.
    rising = replace(reading(500), rate_history=(500.0, 400.0, 300.0), window_s=30.0)
    wobble = replace(reading(500), rate_history=(500.0, 300.0, 400.0), window_s=30.0)
    base = desired(spec("Performance"), flat, current=1).desired
    assert base == 5  # ceil(500 / 100)
    assert desired(spec("Performance"), rising, current=1).desired == 8  # ceil(717 / 100)
    assert desired(spec("Performance"), wobble, current=1).desired == base  # not sustained: no boost


def test_the_energy_policies_keep_headroom_for_the_rises_a_model_has_shown() -> None:
    from dataclasses import replace

    def run(levels: list[float], hist: autoscale.RateHistory) -> int:
        out = 0
        for i, rps in enumerate(levels):
            r = replace(reading(rps), sampled_at=NOW - 3600 + 60 * i + 1, window_s=60.0)
            out = autoscale.decide(
                spec("Balanced"), {"desiredReplicas": 1, "readyReplicas": 1}, r, NOW - 3600 + 60 * i + 5,
                OperatorConfig(), fleet_book=autoscale.FleetBook(), history=hist,
            ).desired  # fmt: skip
        return out

    # The same 500 req/s now: a model that has jumped x3 within the lead time (window + node + load)
    # gets the replicas for its bursts, one whose rate stayed flat does not.
    flat = run([500.0] * 60, autoscale.RateHistory())
    bursty = run([1500.0 if i % 12 < 2 else 500.0 for i in range(59)] + [500.0], autoscale.RateHistory())
    assert flat == desired(spec("Balanced"), reading(500)).desired
    assert bursty > 2 * flat
    # After a restart (a fresh history) there is nothing to learn from yet: no headroom.
    assert run([500.0], autoscale.RateHistory()) == flat


def test_a_model_that_has_not_burst_yet_gets_headroom_for_its_fleets_bursts() -> None:
    from dataclasses import replace

    def step(name: str, rps: float, i: int, hist: autoscale.RateHistory) -> int:
        r = replace(reading(rps), name=name, sampled_at=NOW - 3600 + 60 * i + 1, window_s=60.0)
        return autoscale.decide(
            spec("Balanced"), {"desiredReplicas": 1, "readyReplicas": 1}, r, NOW - 3600 + 60 * i + 5,
            OperatorConfig(), fleet_book=autoscale.FleetBook(), history=hist,
        ).desired  # fmt: skip

    # Two ModelServices read by one operator: "loud" has jumped x3 within the lead time every 12 minutes,
    # "quiet" has stayed at 500 req/s for the hour. The fleet's rises are quiet's prior, so it gets
    # headroom for a burst like loud's; alone (its own history) it gets none.
    shared, alone = autoscale.RateHistory(), autoscale.RateHistory()
    quiet_shared = quiet_alone = 0
    for i in range(60):
        step("loud", 1500.0 if i % 12 < 2 else 500.0, i, shared)
        quiet_shared = step("quiet", 500.0, i, shared)
        quiet_alone = step("quiet", 500.0, i, alone)
    assert quiet_alone == desired(spec("Balanced"), reading(500)).desired
    assert quiet_shared > 2 * quiet_alone


def test_the_gpu_cap_clamps_the_decision_and_says_from_what() -> None:
    capped = autoscale.decide(
        spec("Performance"),
        {"desiredReplicas": 4, "readyReplicas": 4},
        reading(1000),
        NOW,
        OperatorConfig(max_gpus_per_modelservice=6),
    )
    # One GPU per replica (the default), six GPUs at most: 10 replicas wanted, 6 applied.
    assert capped.desired == 6 and capped.intent.capped_from == 10
    assert capped.intent.changed and capped.intent.previous == 4
    assert "last_scale_time" in capped.status.model_fields_set


def test_a_gap_is_held_through_the_status_round_trip() -> None:
    """The gap state lives in status.scaler (merge-patched): a missing reading marks the gap, the next
    fresh reading, whose window overlaps it, holds the count (issue 17) instead of scaling down."""
    s = spec("Performance")
    config = OperatorConfig()
    status: dict[str, Any] = {"desiredReplicas": 6, "readyReplicas": 6}
    gone = autoscale.decide(s, status, None, NOW, config)
    assert gone.status.scaler["gapSince"] == NOW
    status["scaler"] = gone.status.scaler
    low = ServiceMetrics(
        "ns", "m", requests_per_s=50.0, sampled_at=NOW + 14, stale=False, window_s=config.metrics_window_s
    )
    back = autoscale.decide(s, status, low, NOW + 15, config)
    assert back.desired == 6 and back.intent.reason == pa.HOLD_AFTER_GAP
    scaler = back.status.scaler
    assert scaler["gapSince"] is None and scaler["resumedAt"] == NOW + 14  # null clears the key
