"""The fleet objective (policy/fleet.py) and low-rate estimates (policy/estimate.py)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from greenserve.policy import autoscaling as pa
from greenserve.policy import estimate, fleet
from greenserve.policy.queueing import replicas_for_attainment

# An L4 replica: 30 W loaded idle + 300 W / 8 GPUs of node base.
POWER_W = 30.0 + 300.0 / 8

members_st = st.lists(
    st.builds(
        fleet.FleetMember,
        rate_rps=st.floats(0.0, 400.0),
        service_rate_rps=st.sampled_from([200.0, 10.0, 0.5]),
        slo_s=st.just(0.0),  # replaced below: five service times
        replica_power_w=st.just(POWER_W),
        min_replicas=st.integers(0, 2),
        max_replicas=st.just(1000),
    ),
    min_size=1,
    max_size=12,
)


def _with_slo(ms: list[fleet.FleetMember]) -> list[fleet.FleetMember]:
    return [
        fleet.FleetMember(
            m.rate_rps,
            m.service_rate_rps,
            5.0 / m.service_rate_rps,
            m.replica_power_w,
            m.min_replicas,
            m.max_replicas,
        )
        for m in ms
    ]


# Found by hypothesis: the price was sought with the grid's rounded-up rates as weights, and the fleet
# then reached 0.98998 of its measured requests for a target of 0.99.
_SHORT_BY_THE_GRID = [
    fleet.FleetMember(r, mu, 0.0, POWER_W, 0, 1000)
    for r, mu in [
        (130.0, 10.0),
        (279.0, 0.5),
        (295.0, 10.0),
        (303.0, 10.0),
        (334.0, 10.0),
        (367.0, 0.5),
        (73.25, 0.5),
    ]
]


@settings(max_examples=60, deadline=None)
@given(members_st, st.sampled_from([0.95, 0.99, 0.995, 0.999]))
@example(_SHORT_BY_THE_GRID, 0.99)
def test_the_fleet_objective_meets_its_target(raw: list[fleet.FleetMember], target: float) -> None:
    members = _with_slo(raw)
    sizes, price = fleet.size_fleet(members, target)
    # Reachable here (maxima of 1000 replicas): the fleet's predicted attainment meets the target.
    assert fleet.fleet_attainment(members, sizes) >= target - 1e-9
    # Each model sized for its own share (`member_target`) gets the same count back.
    for m, c in zip(members, sizes, strict=True):
        if m.rate_rps > 0:
            share = fleet.member_target(m, price, target)
            own = replicas_for_attainment(fleet._grid_rate(m.rate_rps), m.service_rate_rps, m.slo_s, share)
            assert max(own, m.min_replicas, 1) == c


def test_a_fleet_trades_replicas_between_models() -> None:
    # A large model and a small one at 100 ms / 500 ms: sizing each for 99.5% gives the small one a
    # second replica for a few requests; the fleet objective moves that replica's worth of requests to
    # where it is cheaper and still meets 99.5% over both.
    big = fleet.FleetMember(80.0, 10.0, 0.5, POWER_W)
    small = fleet.FleetMember(3.0, 10.0, 0.5, POWER_W)
    each = [replicas_for_attainment(m.rate_rps, 10.0, 0.5, 0.995) for m in (big, small)]
    sizes, _ = fleet.size_fleet([big, small], 0.995)
    assert sum(sizes) < sum(each)
    assert fleet.fleet_attainment([big, small], sizes) >= 0.995
    # One model alone is sized exactly for the target.
    alone, _ = fleet.size_fleet([big], 0.995)
    assert alone == [each[0]]


@settings(max_examples=200, deadline=None)
@given(
    st.floats(1e-4, 500.0),
    st.sampled_from([200.0, 10.0, 0.5]),
    st.floats(0.0, 1e9),
)
def test_a_model_with_traffic_always_keeps_a_replica(rate: float, mu: float, price: float) -> None:
    m = fleet.FleetMember(rate, mu, 5.0 / mu, POWER_W)
    assert fleet.replicas_at_price(m, price) >= 1
    # Through the autoscaler with minReplicas 0, at the fleet's share for that model.
    inputs = pa.ScalingInputs(
        current_replicas=0, ready_replicas=0, min_replicas=0, max_replicas=50, target_utilization=0.7,
        capacity_rps=mu, request_rate=rate, gpu_utilization=None, sampled_at=100.0, slo_p95_ms=5000.0 / mu,
        slo_attainment=fleet.member_target(m, price, 0.995),
    )  # fmt: skip
    assert pa.decide(inputs, pa.ScalerState(), 100.0).desired_replicas >= 1


def test_gamma_quantile_matches_known_values() -> None:
    # Gamma(k, 1) quantiles (chi-square / 2): k=10.5 at 0.9 is 14.84; k=100.5 at 0.9 is 113.4.
    assert math.isclose(estimate.gamma_quantile(10.5, 0.9), 14.84, rel_tol=0.01)
    assert math.isclose(estimate.gamma_quantile(100.5, 0.9), 113.4, rel_tol=0.005)
    assert math.isclose(estimate.normal_quantile(0.975), 1.959964, rel_tol=1e-6)


def test_a_low_rate_is_estimated_from_a_longer_horizon_with_its_stated_confidence() -> None:
    rng = np.random.default_rng(7)
    rate, window, n = 0.05, 30.0, 10  # 1.5 requests per window
    covered, errors_pooled, errors_single = 0, [], []
    trials = 4000
    for _ in range(trials):
        hist = (rng.poisson(rate * window, n) / window).tolist()
        est = estimate.estimate_rate(hist, window)
        assert est is not None
        covered += est.rate >= rate
        errors_pooled.append(abs(est.mean - rate) / rate)
        errors_single.append(abs(hist[0] - rate) / rate)
        assert est.horizon_s == n * window or est.step
    # The stated confidence holds (90%, within sampling error), and the pooled mean is far less noisy.
    assert covered / trials >= 0.88
    assert np.mean(errors_pooled) < 0.5 * np.mean(errors_single)


def test_a_high_rate_uses_the_newest_window_and_a_step_breaks_the_pooling() -> None:
    high = estimate.estimate_rate([100.0] * 10, 30.0)
    assert high is not None and high.horizon_s == 30.0
    assert high.rate < 100.0 * 1.03  # 3000 events: the bound is within 3% of the mean
    stepped = estimate.estimate_rate([2.0] + [0.1] * 9, 30.0)
    assert stepped is not None and stepped.step and stepped.horizon_s == 30.0 and stepped.rate >= 2.0
    assert estimate.estimate_rate([], 30.0) is None


def test_the_trend_projection_never_fires_on_poisson_noise() -> None:
    rng = np.random.default_rng(11)
    fired = 0
    for _ in range(20_000):
        rates = (rng.poisson(0.05 * 30.0, 3) / 30.0).tolist()
        fired += estimate.significant_trend(rates, 30.0) > 0
    # Without the significance test about 1 in 6 of these flat histories rise in every window.
    assert fired == 0
    # A real, sustained rise still counts.
    assert estimate.significant_trend([300.0, 200.0, 100.0], 30.0) == pa.sustained_trend(
        [300.0, 200.0, 100.0], 30.0
    )


def test_the_rise_factor_learns_a_models_bursts_and_ignores_noise() -> None:
    rng = np.random.default_rng(3)
    window = 30.0
    flat = (rng.poisson(10.0 * window, 120) / window).tolist()
    # Bursts to x3 for 3 windows every 20 windows, newest first like the rest.
    level = np.where((np.arange(120) % 20) < 3, 30.0, 10.0)
    bursty = (rng.poisson(level * window) / window).tolist()
    lead = 90.0  # three windows
    assert estimate.rise_factor(flat, window, lead, 0.99) < 1.25
    assert 2.5 < estimate.rise_factor(bursty, window, lead, 0.99) < 3.5
    # A lower quantile buys less headroom; low-rate windows (Poisson noise) and no history give none.
    assert estimate.rise_factor(bursty, window, lead, 0.5) < estimate.rise_factor(bursty, window, lead, 0.99)
    sparse = (rng.poisson(0.05 * window, 120) / window).tolist()
    assert estimate.rise_factor(sparse, window, lead, 0.99) == 1.0
    assert estimate.rise_factor([], window, lead, 0.99) == 1.0


def test_the_rise_factor_learns_the_bursts_of_a_model_of_a_few_requests_a_second() -> None:
    # 1.5 req/s (45 requests a 30 s window, under the 100 a rise needs) bursting to x3 for 3 windows
    # every 20: the base of each rise is pooled over three windows, so the bursts are learned; the
    # bursts of a far sparser model (0.05 req/s: 15 requests in ten windows) are still noise.
    rng = np.random.default_rng(5)
    window, lead = 30.0, 90.0
    level = np.where((np.arange(240) % 20) < 3, 4.5, 1.5)
    bursty = (rng.poisson(level * window) / window).tolist()
    assert 2.3 < estimate.rise_factor(bursty, window, lead, 0.99) < 4.0
    assert estimate.rise_factor((rng.poisson(1.5 * window, 240) / window).tolist(), window, lead, 0.9) < 1.6
    sparse = (rng.poisson(level / 30 * window) / window).tolist()
    assert estimate.rise_factor(sparse, window, lead, 0.99) == 1.0


def test_a_model_that_has_not_burst_yet_takes_its_fleets_bursts_as_prior() -> None:
    # One model of a fleet has burst to x3 within the lead time; another has not in the hour it has been
    # watched. With the fleet's rises as its prior (worth one history of its own), the quiet model keeps
    # headroom for a burst like its neighbour's at a high quantile, and still none at the median.
    rng = np.random.default_rng(11)
    window, lead = 30.0, 90.0
    quiet = estimate.rise_ratios((rng.poisson(10.0 * window, 120) / window).tolist(), window, lead)
    level = np.where((np.arange(120) % 20) < 3, 30.0, 10.0)
    loud = estimate.rise_ratios((rng.poisson(level * window) / window).tolist(), window, lead)
    prior = estimate.pool_rises([quiet, loud])
    weight = len(quiet)
    assert estimate.rise_quantile(quiet, 0.99) < 1.4
    assert 2.5 < estimate.rise_quantile(quiet, 0.99, prior, weight) < 3.5
    assert estimate.rise_quantile(quiet, 0.5, prior, weight) < 1.4
    # A fleet whose models all stay flat lends no headroom; a model of its own bursts keeps them.
    flat_prior = estimate.pool_rises([quiet, quiet, quiet])
    assert estimate.rise_quantile(quiet, 0.99, flat_prior, weight) < 1.4
    assert estimate.rise_quantile(loud, 0.99, flat_prior, weight) > 2.5
    # The pooled prior of a large fleet is thinned to a bounded size and keeps its extremes.
    big = estimate.pool_rises([loud] * 50)
    assert len(big) == estimate.RISE_PRIOR_POINTS and big[0] == loud[0] and big[-1] == loud[-1]


def _bursting(rng: np.random.Generator, bursts: int, n: int = 120, window: float = 30.0) -> list[float]:
    """A model at 10 req/s with `bursts` bursts to x3 of 3 windows each, at random windows."""
    level = np.full(n, 10.0)
    for start in rng.integers(0, n - 3, bursts):
        level[start : start + 3] = 30.0
    return (rng.poisson(level * window) / window).tolist()


def test_the_prior_is_worth_as_much_as_the_fleets_models_are_alike() -> None:
    rng = np.random.default_rng(5)
    window, lead_s, q = 30.0, 180.0, 0.93
    lead = math.ceil(lead_s / window)
    # One traffic: 40 models whose bursts come at random, a Poisson number an hour each (some none).
    alike = [estimate.rise_ratios(_bursting(rng, int(rng.poisson(3))), window, lead_s) for _ in range(40)]
    prior = estimate.pool_rises(alike)
    weight = estimate.prior_weight(alike, prior, q, lead)
    assert weight > 4 * len(alike[0])  # the fleet's hour tells more than a model's own
    # Then a model without a burst this hour gets about the fleet's headroom, not its own lack of it.
    calm = next(rs for rs in alike if estimate.rise_quantile(rs, q) < 1.3)
    fleet_q = estimate.rise_quantile((), q, prior, 1.0)
    assert estimate.rise_quantile(calm, q, prior, weight) > 0.9 * fleet_q > 1.5
    # Two traffics: 5 models that burst 8 times an hour among 35 that never do. The models differ, so
    # each keeps about its own: the steady ones no burst headroom, the bursting ones theirs.
    mixed = [estimate.rise_ratios(_bursting(rng, 8 if i < 5 else 0), window, lead_s) for i in range(40)]
    prior = estimate.pool_rises(mixed)
    weight = estimate.prior_weight(mixed, prior, q, lead)
    assert weight < len(mixed[0])
    assert estimate.rise_quantile(mixed[-1], q, prior, weight) < 1.3
    assert estimate.rise_quantile(mixed[0], q, prior, weight) > 2.0
    # Nothing to weigh: no prior; a prior no model's rises reach beyond.
    assert estimate.prior_weight(mixed, (), q, lead) == 0.0
    assert estimate.prior_weight([[1.0] * 10] * 3, (1.0,) * 30, q, lead) == math.inf
