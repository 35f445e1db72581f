"""The rise headroom in whole replicas: a replica is held only where the rises fill enough of it
(policy/estimate.py `Rises.share_above`, policy/autoscaling.py `headroom_factor`)."""

from __future__ import annotations

import bisect
import itertools
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from greenserve.policy import autoscaling as pa
from greenserve.policy import estimate, profile

_ratios = st.lists(st.floats(0.5, 6.0, allow_nan=False), max_size=30).map(lambda v: tuple(sorted(v)))


def _mean_share_above(rises: estimate.Rises, lo: float, hi: float) -> float:
    """The same mean, integrated piece by piece between the mixture's jumps (the cdf is flat on each)."""
    n_own, n_prior = len(rises.own), len(rises.prior) if rises.prior_weight > 0 else 0
    if n_own + n_prior == 0:
        return 0.0
    w_own = n_own / (n_own + rises.prior_weight) if n_prior else 1.0

    def cdf(x: float) -> float:
        mine = bisect.bisect_right(rises.own, x) / n_own if n_own else 0.0
        theirs = bisect.bisect_right(rises.prior, x) / n_prior if n_prior else 0.0
        return w_own * mine + (1.0 - w_own) * theirs

    cuts = sorted({lo, hi, *(v for v in (*rises.own, *rises.prior) if lo < v < hi)})
    area = sum((b - a) * (1.0 - cdf(0.5 * (a + b))) for a, b in itertools.pairwise(cuts))
    return area / (hi - lo)


@settings(max_examples=200, deadline=None)
@given(
    _ratios,
    _ratios,
    st.floats(0.0, 50.0),
    st.floats(0.5, 6.0),
    st.floats(0.01, 3.0),
)
def test_share_above_is_the_mean_share_of_rises_above_each_rate_of_the_band(
    own: tuple[float, ...], prior: tuple[float, ...], weight: float, lo: float, width: float
) -> None:
    rises = estimate.Rises(own, prior, weight)
    assert abs(rises.share_above(lo, lo + width) - _mean_share_above(rises, lo, lo + width)) < 1e-9


def test_share_above_in_words() -> None:
    rises = estimate.Rises((1.0, 1.0, 2.0, 3.0))
    assert rises.share_above(3.0, 4.0) == 0.0  # no rise reaches the band
    assert rises.share_above(0.5, 1.0) == 1.0  # every rise is above all of it
    # Over [1.5, 2.5] the rise to 3.0 fills all of the band, the rise to 2.0 its first half: a quarter
    # of the rises above every rate of it, another quarter above half of them.
    assert abs(rises.share_above(1.5, 2.5) - 0.375) < 1e-12
    assert estimate.Rises().share_above(1.0, 2.0) == 0.0


def _model(rate: float, factor: float) -> pa.ScalingInputs:
    """A model of 100 ms requests (10 req/s a replica) against a 500 ms SLO at 99%, `rate` seen."""
    return pa.ScalingInputs(
        current_replicas=1,
        ready_replicas=1,
        min_replicas=1,
        max_replicas=1000,
        target_utilization=0.5,
        capacity_rps=10.0,
        request_rate=rate * factor,
        gpu_utilization=None,
        sampled_at=0.0,
        slo_p95_ms=500.0,
        slo_attainment=0.99,
        service_time_ms=100.0,
        rise_factor=factor,
    )


# 95 of 100 rises within the lead time stay at the rate; 5 reach x1.3. At quantile 0.96 the rises' level
# is 1.3, and a replica is worth holding where they fill at least 4% of it on average.
_RISES = estimate.Rises((1.0,) * 95 + (1.3,) * 5)
_Q = 0.96


def _count(inputs: pa.ScalingInputs) -> int:
    found = pa.demand_replicas(inputs)
    assert found is not None
    return found[0]


def test_a_small_model_holds_no_replica_that_its_rises_would_barely_fill() -> None:
    """2 req/s seen on one replica: the quantile's level (2.6 req/s) asks for a second, which carries up
    to about 10 req/s; one rise in twenty reaches 2.6, and fills a small part of that."""
    assert _RISES.quantile(_Q) == 1.3
    at_level = _model(2.0, 1.3)
    seen = _count(_model(2.0, 1.0))
    assert _count(at_level) == seen + 1
    held = profile.with_headroom(at_level, _RISES, _Q)
    assert _count(held) == seen
    decision = pa.decide(held, pa.ScalerState(), 0.0)
    assert decision.desired_replicas == decision.bare == seen
    # Rises that would fill it are held for: every rise at x1.3.
    every = estimate.Rises((1.3,) * 100)
    assert _count(profile.with_headroom(at_level, every, _Q)) == seen + 1


def test_a_large_model_keeps_about_the_quantiles_headroom() -> None:
    """Of many thin bands each is filled about as often as the rises reach it: the count stays within one
    replica of the quantile's level, far above the load seen."""
    at_level = _model(600.0, 1.3)
    seen, level = _count(_model(600.0, 1.0)), _count(at_level)
    held = _count(profile.with_headroom(at_level, _RISES, _Q))
    assert level - 1 <= held <= level
    assert held >= seen + 0.8 * (level - seen)


@settings(max_examples=150, deadline=None)
@given(
    st.floats(0.05, 800.0),
    st.lists(st.floats(1.0, 5.0), min_size=1, max_size=40).map(lambda v: tuple(sorted(v))),
    st.floats(0.0, 0.999),
    st.sampled_from([0.9, 0.99, 0.999]),
)
def test_the_headroom_is_never_above_the_quantiles_level_nor_below_the_load_seen(
    rate: float, own: tuple[float, ...], q: float, attainment: float
) -> None:
    rises = estimate.Rises(own)
    factor = rises.quantile(q)
    at_level = replace(_model(rate, factor), slo_attainment=attainment)
    held = profile.with_headroom(at_level, rises, q)
    assert _count(replace(at_level, request_rate=rate, rise_factor=1.0)) <= _count(held) <= _count(at_level)
    assert 1.0 <= held.rise_factor <= factor
    # What decide reports as the load seen is the same either way.
    assert abs((held.request_rate or 0.0) / held.rise_factor - rate) <= 1e-9 * max(1.0, rate)
