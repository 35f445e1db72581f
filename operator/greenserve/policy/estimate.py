"""Request-rate estimates that stay right at low rates: pure.

A model at 0.05 req/s sees 0, 1 or 2 requests in a 30 s window: one window's rate is noise, and sizing
from it (or projecting a trend from three of them) adds replicas for nothing. `estimate_rate` pools
adjacent metric windows (newest first) into a longer horizon while they agree, and sizes from an upper
quantile of the rate's posterior:

* **Pooling**: windows are added, oldest last, until the pooled count reaches `target_events` (enough for a
  relative error of 1/sqrt(target_events): 10% at 100) or the history ends. A high-rate model is therefore
  estimated from its newest window alone, as before; a low-rate one from minutes.
* **Step filter**: a window is not pooled when the newest window's count departs from the older windows'
  rate by more than `step_z` standard deviations (conditional binomial test of two Poisson counts): a
  real change of level is followed at once, from the newest window only, instead of being averaged away.
* **Confidence**: the rate is the `confidence` quantile of its Gamma posterior (Jeffreys prior:
  Gamma(events + 1/2, horizon)), so the stated confidence is that the true rate of the horizon is at most
  the figure sized for. At many events it converges on the mean.

`significant_trend` is `autoscaling.sustained_trend` with a significance test: a rise counts only when the
newest window's count exceeds the oldest's by more than `z` standard deviations of their difference, so
Poisson noise at low rates never fires the trend projection.

`rise_factor` is the headroom for what the trend cannot see coming: a replica started now serves only
after the lead time (metrics window, node provisioning, model load), so the rate to size for is the rate
the model may reach by then. The factor is the `quantile` of the model's own past rises over the lead
time (the highest window within the lead time after each past window, over the rate at that window).
The rate at a window is pooled over it and older windows until it counts `min_events` requests (at most
`max_pool` windows, as `estimate_rate` pools the rate the policy sizes from), so a model of a few
requests a second learns its rises too; one that never reaches `min_events` within `max_pool` windows
gets none (its noise is what the confidence bound covers). The window ahead is one window, as served:
its Poisson noise is load the replicas meet. A model whose traffic never jumped gets about 1; one that
bursts gets the size of its bursts. Learned per model from its history, not fitted to a trace.

An hour of a model's own history may hold none of the bursts its traffic has: a model whose bursts come
three an hour goes an hour without one one time in twenty, and then meets the next with no headroom. So
the fleet's rises (every model's `rise_ratios`, `pool_rises`) are each model's prior: `rise_quantile`
takes the quantile of the mixture of its own rises and the fleet's. What the fleet's rises are worth
against a model's own (`prior_weight`) is measured, not chosen: empirical Bayes on a beta-binomial, the
share of each model's rises above the quantile against the spread that sampling alone would give. Where
the models differ no more than that (one traffic, bursts at random), a model's quiet hour is luck and
the fleet's rises decide; where they differ, each model keeps about its own. A fleet whose models never
jump lends nothing; a model whose bursts set it apart keeps them.

The quantile is a level of rate, but replicas are whole: a model of 4 req/s whose replica carries
10 would hold a whole second replica for a rise to 5 req/s, which fills a tenth of it. So
`Rises.share_above` gives what a replica's band of rates (from the rate its count carries to the rate
one more carries) is worth: the mean over the band of the share of rises above each rate, the share of
the band the rises fill on average. The autoscaler holds a headroom replica only while that share is at
least 1 - quantile (policy/autoscaling.py `headroom_factor`). For a model of many replicas the bands are
thin and this is the quantile's level; for a small model it holds a replica only for rises that would
fill enough of it.

Defaults (`confidence` 0.9, `target_events` 100, `step_z` 3.5, trend `z` 3, `min_events` 100) are
statistical: at z = 3.5 a single window flags a false step about once in 4,000 windows; 100 requests
estimate a rate within 10%.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from greenserve.policy.autoscaling import sustained_trend

CONFIDENCE = 0.9
TARGET_EVENTS = 100.0
STEP_Z = 3.5
TREND_Z = 3.0


@dataclass(frozen=True)
class RateEstimate:
    rate: float  # requests/s to size for: the `confidence` quantile of the posterior
    mean: float  # posterior mean, requests/s
    horizon_s: float  # the pooled windows' total length
    events: float  # requests counted over the horizon
    step: bool  # the newest window broke from the older ones (a change of level)


def normal_quantile(p: float) -> float:
    """Standard normal quantile (Acklam's rational approximation, relative error < 1.2e-9)."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
         1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)  # fmt: skip
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
         6.680131188771972e01, -1.328068155288572e01)  # fmt: skip
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
         -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)  # fmt: skip
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    lo = 0.02425
    if p < lo:
        q = math.sqrt(-2 * math.log(p))
        num = ((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]
        return num / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    if p > 1 - lo:
        return -normal_quantile(1 - p)
    q = p - 0.5
    r = q * q
    num = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
    return num / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


def gamma_quantile(shape: float, p: float) -> float:
    """Quantile of Gamma(shape, 1) by the Wilson-Hilferty cube-root approximation (a few % at shape 1/2,
    better above), clamped at 0."""
    if shape <= 0:
        return 0.0
    z = normal_quantile(p)
    x = 1.0 - 1.0 / (9.0 * shape) + z / (3.0 * math.sqrt(shape))
    return shape * max(0.0, x) ** 3


def step_z(newer: float, older: float, newer_s: float, older_s: float) -> float:
    """z-score of a count `newer` over `newer_s` against `older` over `older_s` under one common rate:
    given their sum, `newer` is Binomial(sum, newer_s / (newer_s + older_s))."""
    total = newer + older
    if total <= 0 or newer_s <= 0 or older_s <= 0:
        return 0.0
    p = newer_s / (newer_s + older_s)
    return (newer - total * p) / math.sqrt(total * p * (1.0 - p))


def estimate_rate(
    rates: Sequence[float],
    window_s: float,
    *,
    confidence: float = CONFIDENCE,
    target_events: float = TARGET_EVENTS,
    z: float = STEP_Z,
) -> RateEstimate | None:
    """The rate to size for from adjacent windows' mean rates (newest first); None without data."""
    if not rates or window_s <= 0:
        return None
    counts = [max(0.0, r) * window_s for r in rates]
    newest = counts[0]
    events, used = newest, 1
    step = False
    older = 0.0
    for i in range(1, len(counts)):
        if events >= target_events:
            break
        older += counts[i]
        if abs(step_z(newest, older, window_s, i * window_s)) > z:
            step = True
            break
        events, used = newest + older, i + 1
    horizon = used * window_s
    shape = events + 0.5
    rate = gamma_quantile(shape, min(0.999999, max(0.5, confidence))) / horizon
    return RateEstimate(max(rate, events / horizon), events / horizon, horizon, events, step)


def significant_trend(rates: Sequence[float], window_s: float, *, z: float = TREND_Z) -> float:
    """`sustained_trend`, but 0 unless the newest window's count exceeds the oldest's significantly."""
    if len(rates) < 2 or window_s <= 0:
        return 0.0
    newest, oldest = max(0.0, rates[0]) * window_s, max(0.0, rates[-1]) * window_s
    if newest - oldest <= z * math.sqrt(newest + oldest):
        return 0.0
    return sustained_trend(rates, window_s)


RISE_MIN_EVENTS = 100.0
# Windows pooled at most into the base of a rise: 10 windows of 30 s, the estimate's 300 s horizon.
RISE_MAX_POOL = 10
# The fleet's pooled rises are kept as this many quantiles.
RISE_PRIOR_POINTS = 1024


def rise_ratios(
    rates: Sequence[float],
    window_s: float,
    lead_s: float,
    *,
    min_events: float = RISE_MIN_EVENTS,
    max_pool: int = RISE_MAX_POOL,
) -> list[float]:
    """A model's own rises, sorted: per past window with `min_events` requests (pooled), the highest
    window within the lead time after it over its rate (see the module docstring)."""
    if window_s <= 0 or len(rates) < 2:
        return []
    lead = max(1, math.ceil(lead_s / window_s))
    pool = max(1, max_pool)
    counts = [max(0.0, r) * window_s for r in rates]  # once, not once per window pooled into
    ratios: list[float] = []
    for i in range(1, len(rates)):
        # The rate at window i, pooled over older windows until it counts `min_events` requests (as
        # `estimate_rate` pools what the policy sizes from), up to `max_pool` windows.
        events, used = 0.0, 0
        for c in counts[i : i + pool]:
            events += c
            used += 1
            if events >= min_events:
                break
        if events < min_events:
            continue
        ahead = rates[max(0, i - lead) : i]  # the windows after window i, up to the lead time
        ratios.append(max(ahead) * window_s * used / events)
    ratios.sort()
    return ratios


def pool_rises(ratios: Iterable[Sequence[float]], points: int = RISE_PRIOR_POINTS) -> tuple[float, ...]:
    """The fleet's rises (every model's `rise_ratios` together), sorted, thinned to `points` evenly
    spaced quantiles (the least and the greatest kept) so that a large fleet's prior stays small."""
    pooled = sorted(r for rs in ratios for r in rs)
    if len(pooled) <= points:
        return tuple(pooled)
    last = len(pooled) - 1
    return tuple(pooled[round(i * last / (points - 1))] for i in range(points))


def prior_weight(
    rises: Iterable[Sequence[float]], prior: Sequence[float], quantile: float, lead: int
) -> float:
    """How many of a model's own rises the fleet's prior is worth, from how much the fleet's models differ
    (empirical Bayes, beta-binomial): each model's share of rises above the prior's `quantile` is
    compared with the spread that sampling alone gives. Models that differ no more than that are one
    traffic, and a model's own hour then tells less than the fleet's (weight up to infinite: the prior
    alone); models that differ keep their own. The rises of windows within one lead time share the
    window ahead, so `lead` windows count as one observation."""
    if not prior:
        return 0.0
    threshold = prior[min(len(prior) - 1, max(0, round(quantile * (len(prior) - 1))))]
    per = max(1, lead)
    groups = [(sum(1 for r in rs if r > threshold) / len(rs), len(rs) / per) for rs in rises if rs]
    total = sum(n for _, n in groups)
    if len(groups) < 2 or total <= 0:
        return math.inf if groups else 0.0
    p = sum(x * n for x, n in groups) / total
    if p <= 0.0 or p >= 1.0:
        return math.inf  # no model's rises reach the quantile, or all do: nothing tells them apart
    spread = sum(n * (x - p) ** 2 for x, n in groups)
    # Method of moments for the variance of the models' own shares beyond the binomial's.
    between = (spread - p * (1.0 - p) * (len(groups) - 1)) / (total - sum(n * n for _, n in groups) / total)
    if between <= 0.0:
        return math.inf
    return max(0.0, p * (1.0 - p) / between - 1.0) * per


def _mixture(own: Sequence[float], prior: Sequence[float], prior_weight: float) -> tuple[int, int, float]:
    """(own rises, prior rises counted, the own rises' weight) of the mixture: the prior counts only with
    a weight, as `prior_weight` observations of the model's own."""
    n_own, n_prior = len(own), len(prior) if prior_weight > 0 else 0
    return n_own, n_prior, (n_own / (n_own + prior_weight) if n_prior else 1.0)


def rise_quantile(
    own: Sequence[float], quantile: float, prior: Sequence[float] = (), prior_weight: float = 0.0
) -> float:
    """The headroom factor (>= 1): the `quantile` of the model's own rises (sorted) mixed with the
    fleet's (`prior`, sorted), which count as `prior_weight` observations of the model's own."""
    q = min(1.0, max(0.0, quantile))
    n_own, n_prior, w_own = _mixture(own, prior, prior_weight)
    if n_own + n_prior == 0:
        return 1.0

    def cdf(x: float) -> float:
        mine = bisect.bisect_right(own, x) / n_own if n_own else 0.0
        theirs = bisect.bisect_right(prior, x) / n_prior if n_prior else 0.0
        return w_own * mine + (1.0 - w_own) * theirs

    if not n_prior:
        # The model's own rises alone: the interpolated quantile, as an empirical quantile of few values.
        pos = q * (n_own - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n_own - 1)
        return max(1.0, own[lo] + (own[hi] - own[lo]) * (pos - lo))
    values = sorted({*own, *prior})
    lo, hi = 0, len(values) - 1
    while lo < hi:  # the least value whose mixed distribution reaches the quantile
        mid = (lo + hi) // 2
        if cdf(values[mid]) >= q - 1e-12:
            hi = mid
        else:
            lo = mid + 1
    return max(1.0, values[lo])


def rise_factor(
    rates: Sequence[float],
    window_s: float,
    lead_s: float,
    quantile: float,
    *,
    prior: Sequence[float] = (),
    prior_weight: float = 0.0,
    min_events: float = RISE_MIN_EVENTS,
    max_pool: int = RISE_MAX_POOL,
) -> float:
    """Headroom factor (>= 1) from adjacent windows' rates, newest first (see the module docstring)."""
    own = rise_ratios(rates, window_s, lead_s, min_events=min_events, max_pool=max_pool)
    return rise_quantile(own, quantile, prior, prior_weight)


@dataclass(frozen=True)
class Rises:
    """A model's rises within the lead time (`rise_ratios`, sorted) mixed with the fleet's (`prior`, sorted)
    as `prior_weight` observations of its own: the distribution `rise_quantile` reads."""

    own: tuple[float, ...] = ()
    prior: tuple[float, ...] = ()
    prior_weight: float = 0.0

    def quantile(self, q: float) -> float:
        return rise_quantile(self.own, q, self.prior, self.prior_weight)

    @cached_property
    def _parts(self) -> tuple[tuple[float, tuple[float, ...], tuple[float, ...]], ...]:
        """(weight, sorted values, their prefix sums) of each part of the mixture."""
        n_own, n_prior, w_own = _mixture(self.own, self.prior, self.prior_weight)
        if n_own + n_prior == 0:
            return ()
        parts = ((w_own, self.own), (1.0 - w_own, self.prior if n_prior else ()))
        return tuple((w, vs, (0.0, *itertools.accumulate(vs))) for w, vs in parts if vs and w > 0)

    def share_above(self, lo: float, hi: float) -> float:
        """The mean, over rise ratios x in [lo, hi], of the share of rises above x: the share of that band
        of rates that the rises fill on average (0 without rises)."""
        if hi <= lo or not self._parts:
            return 0.0
        below = 0.0  # the integral of the mixture's cdf over [lo, hi]
        for w, vs, prefix in self._parts:
            i_lo, i_hi = bisect.bisect_right(vs, lo), bisect.bisect_left(vs, hi)
            inside = (i_hi - i_lo) * hi - (prefix[i_hi] - prefix[i_lo]) if i_hi > i_lo else 0.0
            below += w * (i_lo * (hi - lo) + inside) / len(vs)
        return min(1.0, max(0.0, 1.0 - below / (hi - lo)))
