"""Replica autoscaling for one ModelService: pure, with an injected clock and explicit state.

`decide(inputs, state, now)` returns the desired replicas, a reason and the next state:

* **Hold** when metrics are missing or stale: never scale on data it cannot see (and never down).
* **Hold after a gap**: once metrics come back after a gap (a missing or stale reading, or no decision
  for longer than both the stabilisation window and the staleness limit, e.g. an operator that was
  down), a rate window that still overlaps the gap under-reads the load. Until a full `metrics_window_s`
  of fresh data exists and the stabilisation window has been refilled with decisions on it, the count
  may only rise (`HoldAfterGap`), and readings that overlap the gap are not remembered as
  recommendations. So no scale-down follows the end of a gap sooner than one metrics window plus
  `scale_down_delay_s`; a gap never blocks a scale-up on the observed rate or queue (the trend
  projection, whose older windows span the gap, is left out while the hold lasts).
* **Demand**: ceil(request rate / (capacity per replica * target utilization)); with only GPU utilization,
  ceil(ready replicas * utilization / target), as the HPA formula does. By concurrency (Knative's KPA
  metric, `target_concurrency` set): ceil(requests in flight across the replicas / target per replica);
  without an in-flight reading it holds, whatever the other metrics say. With a rising `request_rate_trend`
  the rate is projected to when a replica started now would be Ready (metrics age + cold start), so a
  ramp is met by replicas already loaded; a falling trend is ignored (scale-down stays stabilised).
  `sustained_trend` computes it from adjacent windows so that only a sustained rise counts.
* **Queue drain**: requests already waiting (`queued_requests`, from the in-flight gauge by
  `queued_from_inflight`) are added to the rate as `queued / queue_drain_s`, so an overload that built a
  backlog gets the replicas to clear it, not only those for the new arrivals. Scale-up only: a queue
  never lowers the demand, and a missing in-flight reading adds nothing. The gauge is one instant's
  count, which spreads around its mean even at a steady load: only an excess past `QUEUE_Z` times that
  spread (`queued_noise`) adds replicas. Any excess at all still keeps the model's rise headroom from
  giving way (`ScaleDecision.bare`).
* **SLO guard**: never fewer replicas than the M/M/c model needs to keep p95 under the SLO.
* **SLO sizing** (optional, `slo_attainment`, for the energy policies): with an SLO and a request rate,
  the demand is the fewest replicas that the M/M/c model says answer that share of requests (e.g. 0.995)
  within the SLO latency, instead of rate / (capacity * target utilization). A pool can run hotter as
  it grows (replicas of 10 req/s, 99.5% within 500 ms: 2 replicas up to 0.48 utilization, 8 up to 0.85,
  30 up to 0.96), which a fixed target cannot express.
* **Scale up at once; scale down stabilised**: the applied count is the highest recommendation of the last
  `scale_down_delay_s` seconds (HPA's stabilisation window), so a dip does not remove replicas.
* **Idle to zero** (minReplicas 0): after no request for the idle period (`idle_to_zero_s`, else the
  break-even time: idle power of the warm replicas against the energy of a cold start,
  energy.break_even_idle_s), on fresh readings only: missing or stale metrics hold the count.
* **Back from zero**: demand the activator saw (`demand_at`, the time it last held a request for the
  model) wakes a service at zero to one replica, metrics or not (a scale-up, never a scale-down), and
  counts as traffic: the idle period restarts from it, so a model is never parked while its requests
  wait at the activator.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from greenserve.policy.energy import break_even_idle_s
from greenserve.policy.queueing import replicas_for_attainment, replicas_for_slo

HOLD_MISSING = "HoldMetricsMissing"
HOLD_STALE = "HoldMetricsStale"
HOLD_AFTER_GAP = "HoldAfterGap"
SCALE_UP = "ScaleUp"
SCALE_DOWN = "ScaleDown"
STABILIZING = "Stabilizing"
STEADY = "Steady"
SLO_GUARD = "SLOGuard"
IDLE_TO_ZERO = "IdleToZero"
IDLE_WAITING = "IdleBreakEven"
WAKE_ON_DEMAND = "ActivatorDemand"
AT_ZERO = "ScaledToZero"
# Held replicas given up so that another model's scale-up needs no new node (policy/release.py).
RELEASED = "ReleasedForScaleUp"
# Deviations of the in-flight gauge's noise past which an excess over the busy count adds replicas: as
# the trend's significance (policy/estimate.py TREND_Z), a false queue about once in 700 readings.
QUEUE_Z = 3.0


@dataclass(frozen=True)
class ScalingInputs:
    current_replicas: int
    ready_replicas: int
    min_replicas: int
    max_replicas: int
    target_utilization: float  # 0..1
    capacity_rps: float | None  # requests/s one replica serves at 100% utilization
    request_rate: float | None  # observed requests/s (None: missing)
    gpu_utilization: float | None  # observed mean 0..1 (None: missing)
    sampled_at: float | None  # Unix time of the metrics (None: missing)
    stale_after_s: float = 120.0
    slo_p95_ms: float | None = None
    service_time_ms: float = 20.0  # used when capacity_rps is unknown
    scale_down_delay_s: float = 300.0
    cold_start_s: float = 60.0
    idle_power_w: float = 0.0  # of all warm replicas together
    cold_start_energy_j: float = 0.0
    # d(request rate)/dt in requests/s per second (e.g. PromQL deriv() of the rate), None if unknown. A
    # rising rate is projected over the time a new replica needs (metrics age + cold start): scale-up only.
    request_rate_trend: float | None = None
    trend_max_boost: float = 0.5  # cap on the projected increase, as a share of the observed rate
    # Share of requests to keep within slo_p95_ms when sizing by the queueing model (None: size by the
    # target utilization; the p95 guard applies either way). Needs slo_p95_ms and request_rate.
    slo_attainment: float | None = None
    # Requests waiting beyond those in service (None: unknown), cleared over queue_drain_s seconds.
    queued_requests: float | None = None
    queue_drain_s: float = 60.0
    # Standard deviation of the in-flight gauge at a steady load (`inflight_noise`): a queue within
    # QUEUE_Z of it adds no replica.
    queued_noise: float = 0.0
    # Scale on concurrency instead: requests in flight summed over the replicas (the agents' gauge; None:
    # missing) against this many per replica. In flight already counts the queued, so no queue term.
    target_concurrency: float | None = None
    concurrency: float | None = None
    # Length of the rate window behind request_rate/gpu_utilization: after a gap, a reading counts as
    # fresh data only once its whole window lies after the gap.
    metrics_window_s: float = 0.0
    # Idle seconds before a minReplicas 0 service goes to zero (None: the energy break-even).
    idle_to_zero_s: float | None = None
    # Unix time the activator last held a request for this service (None: never, or not recorded).
    demand_at: float | None = None
    # The rise headroom's factor that request_rate already includes (policy/estimate.py): what the load
    # seen asks for without it (`ScaleDecision.bare`) is request_rate / rise_factor.
    rise_factor: float = 1.0


@dataclass(frozen=True)
class ScalerState:
    """Recommendations inside the stabilisation window, the start of the current idle period, the time
    of the last decision on fresh data, and where a metrics gap stands: `gap_since` while readings are
    missing or stale, then `resumed_at` (sample time of the first fresh reading after it) and
    `refill_from` (when the first reading whose whole window is after the gap was decided) until the
    stabilisation window has been refilled."""

    recommendations: tuple[tuple[float, int], ...] = ()
    idle_since: float | None = None
    decided_at: float | None = None
    gap_since: float | None = None
    resumed_at: float | None = None
    refill_from: float | None = None

    def to_dict(self) -> dict[str, Any]:
        # Every key, None included: status is written as a merge patch, where null removes a key.
        return {
            "recommendations": [[round(t, 3), n] for t, n in self.recommendations],
            "idleSince": self.idle_since,
            "decidedAt": self.decided_at,
            "gapSince": self.gap_since,
            "resumedAt": self.resumed_at,
            "refillFrom": self.refill_from,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ScalerState:
        def opt(key: str) -> float | None:
            value = raw.get(key)
            return None if value is None else float(value)

        try:
            recs = tuple((float(t), int(n)) for t, n in raw.get("recommendations") or ())
            return cls(
                recs, opt("idleSince"), opt("decidedAt"), opt("gapSince"), opt("resumedAt"), opt("refillFrom")
            )
        except (TypeError, ValueError):
            return cls()  # unreadable state (hand-edited status): start a fresh window


@dataclass(frozen=True)
class ScaleDecision:
    desired_replicas: int
    reason: str
    state: ScalerState = field(default_factory=ScalerState)
    demand_replicas: int | None = None
    # The count without the stabilisation window (the demand within the bounds and floors); None while
    # the decision holds for want of data. Above it, `desired_replicas` is held only by the window.
    wanted: int | None = None
    # What the load seen asks for without the rise headroom (within the bounds and floors; None as for
    # `wanted`). Replicas above it are held for rises that have not come: a scale-up for load already
    # here may take their GPUs before a new node's (policy/release.py `release_headroom`). While the
    # model's own rise may be under way (the trend or the queue term adds to its rate) it is the whole count.
    bare: int | None = None


def held_until(state: ScalerState, count: int, scale_down_delay_s: float) -> float:
    """When the stabilisation window stops holding `count` replicas: the newest recommendation of at
    least that many, plus the window (-inf if none asks for that many)."""
    return max((t for t, n in state.recommendations if n >= count), default=-math.inf) + scale_down_delay_s


def queued_from_inflight(
    inflight: float | None, request_rate: float | None, service_rate: float
) -> float | None:
    """Requests waiting: in flight beyond the rate x service time that Little's law puts in service
    (None when either reading is missing). A batching server holds a few more in its batch queue; they
    are part of the service time it was sized with. The gauge is one instant's count, so this is noisy:
    see `inflight_noise`."""
    if inflight is None or request_rate is None or service_rate <= 0:
        return None
    return max(0.0, inflight - max(0.0, request_rate) / service_rate)


def inflight_noise(request_rate: float | None, service_rate: float) -> float:
    """Standard deviation of the in-flight gauge at a steady load: the requests in service at an instant
    are about Poisson around rate x service time, so nearly half of a steady model's readings exceed it by
    chance. At least one request's worth, so that a model of a few requests a minute needs a few over.
    A real backlog passes QUEUE_Z of it at once: it grows with every second of overload, the spread only
    with the square root of the load."""
    if request_rate is None or service_rate <= 0:
        return 0.0
    return math.sqrt(max(1.0, max(0.0, request_rate) / service_rate))


def _service_rate(inputs: ScalingInputs) -> float:
    if inputs.capacity_rps and inputs.capacity_rps > 0:
        return inputs.capacity_rps
    return 1000.0 / max(inputs.service_time_ms, 1e-3)


def demand_replicas(inputs: ScalingInputs) -> tuple[int, str] | None:
    """Replicas the observed load needs (before bounds and stabilisation), or None without data."""
    return _demand(inputs, inputs.request_rate)


def _demand(inputs: ScalingInputs, request_rate: float | None) -> tuple[int, str] | None:
    """`demand_replicas` at `request_rate` instead of the inputs' own."""
    need: int | None = None
    if inputs.target_concurrency:
        if inputs.concurrency is None:
            return None
        need = math.ceil(max(0.0, inputs.concurrency) / inputs.target_concurrency - 1e-9)
    elif request_rate is not None and inputs.capacity_rps:
        need = _rate_count(request_rate, inputs.capacity_rps, inputs.target_utilization)
    elif inputs.gpu_utilization is not None:
        target = min(1.0, max(0.05, inputs.target_utilization))
        need = math.ceil(inputs.ready_replicas * max(0.0, inputs.gpu_utilization) / target - 1e-9)
    if need is None:
        return None
    slo = (inputs.slo_p95_ms, inputs.slo_attainment, inputs.max_replicas)
    return _sized_by_slo(need, request_rate, _service_rate(inputs), *slo)


def _rate_count(rate: float, capacity_rps: float, target_utilization: float) -> int:
    """Replicas that keep each at `target_utilization` (clamped to 0.05-1) of `capacity_rps` at `rate`."""
    target = min(1.0, max(0.05, target_utilization))
    return math.ceil(max(0.0, rate) / (capacity_rps * target) - 1e-9)


def _sized_by_slo(
    need: int,
    request_rate: float | None,
    service_rate: float,
    slo_p95_ms: float | None,
    slo_attainment: float | None,
    max_replicas: int,
) -> tuple[int, str]:
    """`need` as the SLO sizes it at `request_rate`: the queueing model's count for the attainment target
    (in place of the utilisation's), then never below the p95 guard's."""
    reason = STEADY
    if slo_attainment and slo_p95_ms and request_rate is not None:
        need = replicas_for_attainment(
            max(0.0, request_rate),
            service_rate,
            slo_p95_ms / 1000.0,
            min(0.999999, max(0.5, slo_attainment)),
            limit=max(max_replicas, 1),
        )
    if slo_p95_ms and request_rate:
        guard = replicas_for_slo(request_rate, service_rate, slo_p95_ms / 1000.0, limit=max(max_replicas, 1))
        if guard > need:
            need, reason = guard, SLO_GUARD
    return need, reason


def headroom_factor(
    inputs: ScalingInputs, share_above: Callable[[float, float], float], quantile: float
) -> float:
    """The rise factor to size for: `inputs.rise_factor` (the quantile's level of the model's rises,
    which `request_rate` includes) lowered to the last replica whose band is filled enough.

    Replica k's band is the rates from what k - 1 replicas carry (the highest rate they are sized for)
    to what k carry, as rise ratios over the load seen (request_rate / rise_factor). It is held as
    headroom only while `share_above` (policy/estimate.py `Rises.share_above`) of its band is at least
    1 - `quantile`: its expected use by the rises within the lead time, as a share of the replica. Of
    many thin bands this keeps the quantile's level; a wide band (a replica that carries a lot more
    than the load seen) is held only for rises that would fill enough of it. Never above the
    quantile's level: past it the share above is less than 1 - quantile everywhere."""
    factor, rate = inputs.rise_factor, inputs.request_rate
    if factor <= 1.0 or rate is None or rate <= 0 or not inputs.capacity_rps or inputs.target_concurrency:
        return factor  # only a count sized by the rate has bands of rates
    seen = rate / factor
    sizing = (
        inputs.capacity_rps,
        inputs.target_utilization,
        inputs.slo_p95_ms,
        inputs.slo_attainment,
        inputs.max_replicas,
    )
    held, top = _count_at(seen, *sizing), _count_at(rate, *sizing)

    def filled(k: int) -> bool:
        return share_above(_carried(k - 1, *sizing) / seen, _carried(k, *sizing) / seen) >= 1.0 - quantile

    # Each band lies above the one before it and the share above falls with the rate, so whether a band
    # is filled enough falls with k: the last one that is, by bisection.
    lo, hi = held, top + 1  # replica lo is held (or is the load seen's), replica hi is not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if filled(mid) else (lo, mid)
    return factor if lo == top else max(1.0, _carried(lo, *sizing) / seen)


def _count_at(
    rate: float,
    capacity_rps: float,
    target_utilization: float,
    slo_p95_ms: float | None,
    slo_attainment: float | None,
    max_replicas: int,
) -> int:
    """`demand_replicas` of a count sized by the rate alone (capacity known, no concurrency target): the
    utilisation's count, then the SLO's (`_sized_by_slo`), as `_demand` takes them, without building a
    ScalingInputs for each (the headroom's bisections ask this hundreds of thousands of times in a
    bench run)."""
    if capacity_rps <= 0:
        return 0  # no rate-sized count (`_demand` gives none without a capacity)
    need = _rate_count(rate, capacity_rps, target_utilization)
    return _sized_by_slo(need, rate, capacity_rps, slo_p95_ms, slo_attainment, max_replicas)[0]


# Bounded: under the fleet objective each model's target moves with the price, so old sizings fall out.
@lru_cache(maxsize=16384)
def _carried(
    k: int,
    capacity_rps: float,
    target_utilization: float,
    slo_p95_ms: float | None,
    slo_attainment: float | None,
    max_replicas: int,
) -> float:
    """The highest rate that k replicas are sized for, within a millionth of k replicas' service rate.
    The same for every model of one sizing, so it is computed once (cached)."""
    sizing = (capacity_rps, target_utilization, slo_p95_ms, slo_attainment, max_replicas)
    # k replicas carry less than k x a replica's service rate (else they are unstable): the bracket.
    lo, hi = 0.0, max(1e-9, k * capacity_rps)
    for _ in range(40):  # the count is capped at max_replicas: past that every rate gives k
        if _count_at(hi, *sizing) > k:
            break
        hi *= 2.0
    else:
        return hi
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _count_at(mid, *sizing) <= k else (lo, mid)
    return lo


def sustained_trend(rates: Sequence[float], window_s: float) -> float:
    """Rate of increase (requests/s per second) from adjacent windows' mean rates, newest first, counted
    only while every step rises (the smallest rise): oscillating load gives 0, so it cannot ratchet the
    stabilised recommendation up. Falling load also gives 0. The operator and the simulator feed
    `ScalingInputs.request_rate_trend` from this."""
    if len(rates) < 2 or window_s <= 0:
        return 0.0
    rises = [(newer - older) / window_s for newer, older in itertools.pairwise(rates)]
    return max(0.0, min(rises))


def _signal_missing(inputs: ScalingInputs) -> bool:
    if inputs.target_concurrency:
        return inputs.concurrency is None
    return inputs.request_rate is None and inputs.gpu_utilization is None


def _in_gap(state: ScalerState, now: float) -> ScalerState:
    """State while readings are missing or stale: the gap is remembered until fresh data has refilled
    the stabilisation window (a restart of that wait if the data goes away again meanwhile)."""
    return replace(
        state,
        gap_since=state.gap_since if state.gap_since is not None else now,
        resumed_at=None,
        refill_from=None,
    )


def _after_gap(inputs: ScalingInputs, state: ScalerState, now: float) -> tuple[ScalerState, bool, bool]:
    """(state, overlapping, holding) for a fresh reading. `overlapping`: its rate window reaches back into
    the gap, so it may raise the count but is not remembered; `holding`: no scale-down yet."""
    assert inputs.sampled_at is not None
    last = state.decided_at
    if last is None:  # state written before decided_at existed
        last = max((t for t, _ in state.recommendations), default=None)
    # No decision for a whole stabilisation window and longer than data stays fresh (the operator was
    # down, or its loop stalled): the window is empty, as after a missing reading. Both bounds, so that
    # a resync interval longer than a short delay is not mistaken for a gap on every pass.
    stalled = last is not None and now - last > max(inputs.scale_down_delay_s, inputs.stale_after_s)
    state = replace(state, decided_at=now)
    if state.gap_since is not None or stalled:
        state = replace(state, gap_since=None, resumed_at=inputs.sampled_at, refill_from=None)
    if state.resumed_at is None:
        return state, False, False
    if inputs.sampled_at - inputs.metrics_window_s < state.resumed_at:
        return state, True, True
    if state.refill_from is None:
        state = replace(state, refill_from=now)
    assert state.refill_from is not None
    if now < state.refill_from + inputs.scale_down_delay_s:
        return state, False, True
    return replace(state, resumed_at=None, refill_from=None), False, False


def idle_period_s(inputs: ScalingInputs) -> float:
    """How long a minReplicas 0 service must see no request before it goes to zero."""
    if inputs.idle_to_zero_s is not None:
        return max(0.0, inputs.idle_to_zero_s)
    return break_even_idle_s(inputs.idle_power_w, inputs.cold_start_energy_j, inputs.cold_start_s)


def fresh_demand(inputs: ScalingInputs, now: float) -> float | None:
    """The activator's demand time when it is recent enough to count: within one idle period. A model
    that went to zero has been idle longer than that since its last demand, so an old mark never wakes
    it again; a time ahead of this clock (skew between the activator's and the operator's) counts as now."""
    if inputs.demand_at is None or inputs.min_replicas > 0:
        return None
    at = min(inputs.demand_at, now)
    return at if now - at < idle_period_s(inputs) else None


def decide(inputs: ScalingInputs, state: ScalerState, now: float) -> ScaleDecision:
    current = inputs.current_replicas
    demand = fresh_demand(inputs, now)
    if demand is not None and current == 0 and inputs.max_replicas > 0:
        # Requests wait at the activator: one replica now, whatever the metrics (at zero there are none).
        woken = replace(state, idle_since=None, recommendations=((now, 1),))
        return ScaleDecision(1, WAKE_ON_DEMAND, woken, 1)
    if inputs.sampled_at is None or _signal_missing(inputs):
        # At zero nothing reports: that is the parked state itself, not a fault of the metrics.
        reason = AT_ZERO if current == 0 and inputs.min_replicas == 0 else HOLD_MISSING
        return ScaleDecision(current, reason, _in_gap(state, now))
    if now - inputs.sampled_at > inputs.stale_after_s:
        return ScaleDecision(current, HOLD_STALE, _in_gap(state, now))
    state, overlapping, holding = _after_gap(inputs, state, now)
    boost = 0.0
    queued = inputs.queued_requests or 0.0
    if inputs.request_rate is not None and inputs.request_rate > 0:
        # The adjacent windows of the trend reach back into a gap longer than the hold lasts: a rise
        # across it is the gap's artefact (seen end to end: 4 -> 8 replicas at a steady load), not load.
        if (inputs.request_rate_trend or 0) > 0 and not holding:
            assert inputs.request_rate_trend is not None
            horizon = max(0.0, now - inputs.sampled_at) + inputs.cold_start_s
            boost = min(
                inputs.request_rate_trend * horizon, max(0.0, inputs.trend_max_boost) * inputs.request_rate
            )
        if queued > QUEUE_Z * inputs.queued_noise:
            boost += queued / max(1.0, inputs.queue_drain_s)
    if boost > 0:
        assert inputs.request_rate is not None
        found = demand_replicas(replace(inputs, request_rate=inputs.request_rate + boost))
    else:
        found = demand_replicas(inputs)
    if found is None:
        return ScaleDecision(current, HOLD_MISSING, _in_gap(state, now))
    need, reason = found

    # Idle handling: requests stopped entirely.
    if inputs.request_rate is not None:
        idle = inputs.request_rate <= 0
    elif inputs.target_concurrency:
        idle = (inputs.concurrency or 0.0) <= 0
    else:
        idle = (inputs.gpu_utilization or 0.0) <= 0
    idle_since = (state.idle_since if state.idle_since is not None else now) if idle else None
    if overlapping and state.idle_since is None:
        idle_since = None  # a window overlapping the gap may read idle only because data is missing
    if idle_since is not None and demand is not None:
        idle_since = max(idle_since, demand)  # a request held at the activator is traffic too
    floor = max(inputs.min_replicas, 1)
    if idle and inputs.min_replicas == 0 and holding:
        floor = min(floor, current)  # after a gap an idle service neither parks nor wakes: hold
    elif idle and inputs.min_replicas == 0:
        wait = idle_period_s(inputs)
        assert idle_since is not None
        if now - idle_since >= wait:
            floor, reason = 0, IDLE_TO_ZERO
        else:
            reason = IDLE_WAITING
    bounded = max(floor, min(inputs.max_replicas, need))
    # A model whose own rise may be under way (a sustained trend, or any in-flight requests above what
    # its rate keeps busy: a queue, or only the gauge's noise) keeps its headroom: a replica given way now
    # would meet that rise before its replacement found a node. The noise is kept on purpose: it keeps a
    # share of the steady models' headroom out of each tick's give-way (40-46% of the readings of a model
    # with a few or more requests in service, 10% at 0.1), which measured better at the bursts than giving
    # way on significant rises only (README.md, "How it scales").
    bare = bounded
    rising = boost > 0 or queued > 0
    if inputs.rise_factor > 1.0 and inputs.request_rate is not None and not rising:
        seen = inputs.request_rate / inputs.rise_factor
        found_bare = demand_replicas(replace(inputs, request_rate=seen))
        if found_bare is not None:
            bare = min(bounded, max(floor, min(inputs.max_replicas, found_bare[0])))

    window_start = now - inputs.scale_down_delay_s
    kept = tuple((t, n) for t, n in state.recommendations if t > window_start)
    recs = kept if overlapping else (*kept, (now, bounded))
    new_state = replace(state, recommendations=recs, idle_since=idle_since)
    if bounded > current:
        return ScaleDecision(
            bounded, SCALE_UP if reason in (STEADY, IDLE_WAITING) else reason, new_state, need, bounded, bare
        )
    if holding:
        return ScaleDecision(current, HOLD_AFTER_GAP, new_state, need)
    # A lowered maxReplicas applies at once, even to recommendations held from before.
    stabilised = min(inputs.max_replicas, max(n for _, n in recs))
    if reason == IDLE_TO_ZERO:
        stabilised = 0  # the break-even wait already is the stabilisation for scale to zero
    desired = min(current, stabilised)
    if desired < current:
        return ScaleDecision(
            desired, SCALE_DOWN if reason == STEADY else reason, new_state, need, bounded, bare
        )
    if bounded < current:
        return ScaleDecision(current, STABILIZING, new_state, need, bounded, bare)
    return ScaleDecision(current, reason, new_state, need, bounded, bare)
