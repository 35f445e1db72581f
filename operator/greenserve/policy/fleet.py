"""The fleet objective: size every model for an SLO attainment target over the whole fleet: pure.

Sizing each model for 99.5% on its own wastes energy where one more replica buys few requests (a small
model whose second replica only shaves its tail) and saves none where it buys many. The fleet objective
is the Lagrangian of the energy bound (simulator/bound.py): a price `y` in joules per request answered
late, weighed against each replica's power. At price `y` a model runs `c` replicas, the count that
minimises

    c * replica_power_w - y * rate * attainment(c)          (per second)

with `attainment` the M/M/c share of requests within the SLO (policy/queueing.py). `fleet_price` finds the
least price at which the fleet's request-weighted predicted attainment reaches the target; every model is
then sized at that one price (`replicas_at_price`), which the autoscaler applies as that model's own
attainment target (`member_target`). A fleet of one model gets exactly its per-model sizing; in a larger
fleet replicas go where they answer the most requests per joule.

Floors, whatever the price: a model with traffic keeps a replica; a model is never sized unstable (below
rate / capacity) nor below its `min_replicas`. The replica power is the GPU's loaded-idle power plus its
share of the node's base power (the bound's per-replica cost); busy power follows the work, the same at
any count. No parameter here is fitted to a trace.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from greenserve.policy.queueing import attainment

# Rates are rounded up to this relative grid before the attainment curve is computed (and cached): at
# most 0.5% more load than measured, never less.
_GRID = 1.005
# A curve stops where one more replica gains less than this share of the model's requests.
_NEGLIGIBLE = 1e-7


@dataclass(frozen=True)
class FleetMember:
    rate_rps: float  # the rate to size for (an estimate with a stated confidence: policy/estimate.py)
    service_rate_rps: float  # requests/s one replica serves
    slo_s: float  # latency objective of the share counted as attained
    replica_power_w: float  # power one more warm replica costs (context + node share)
    min_replicas: int = 0
    max_replicas: int = 1000


def _grid_rate(rate: float) -> float:
    if rate <= 0:
        return 0.0
    return float(_GRID ** math.ceil(math.log(rate) / math.log(_GRID)))


@lru_cache(maxsize=65536)
def _curve(rate: float, mu: float, slo_s: float, limit: int) -> tuple[int, tuple[float, ...]]:
    """(first stable count c0, attainment at c0, c0 + 1, ...) until a replica gains nothing more."""
    c0 = max(1, math.floor(rate / mu) + 1) if rate > 0 else 0
    c0 = min(c0, limit)
    out = [attainment(rate, mu, c0, slo_s)]
    c = c0
    while c < limit and 1.0 - out[-1] > _NEGLIGIBLE:
        c += 1
        nxt = attainment(rate, mu, c, slo_s)
        if nxt - out[-1] <= _NEGLIGIBLE and out[-1] > 0:
            break
        out.append(nxt)
    return c0, tuple(out)


def _member_curve(m: FleetMember) -> tuple[int, tuple[float, ...], float]:
    """(lowest count, attainment per count from there, rate on the grid)."""
    rate = _grid_rate(m.rate_rps)
    limit = max(1, m.max_replicas)
    c0, curve = _curve(rate, m.service_rate_rps, m.slo_s, limit)
    floor = min(limit, max(c0, m.min_replicas, 1 if rate > 0 else 0))
    # Above the curve's end one more replica gains nothing: the attainment stays at its last value.
    return floor, curve[floor - c0 :] or curve[-1:], rate


def _increment_prices(m: FleetMember) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    return _prices(
        _grid_rate(m.rate_rps), m.service_rate_rps, m.slo_s, m.replica_power_w, m.min_replicas, m.max_replicas
    )


@lru_cache(maxsize=65536)
def _prices(
    rate: float, mu: float, slo_s: float, power_w: float, min_replicas: int, max_replicas: int
) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """The floor count; for each further replica its price (J per request it adds in time, as a running
    maximum so that prices never fall: the upper concave envelope in effect); the attainment per count."""
    floor, curve, _ = _member_curve(FleetMember(rate, mu, slo_s, power_w, min_replicas, max_replicas))
    prices: list[float] = []
    worst = 0.0
    for i in range(1, len(curve)):
        gain = rate * (curve[i] - curve[i - 1])
        price = math.inf if gain <= 0 else power_w / gain
        worst = max(worst, price)
        prices.append(worst)
    return floor, tuple(prices), curve


def replicas_at_price(member: FleetMember, price_j: float) -> int:
    """Replicas of `member` at a price of `price_j` joules per late request (see the module docstring)."""
    floor, prices, _ = _increment_prices(member)
    return floor + bisect.bisect_right(prices, price_j)


def fleet_attainment(members: Sequence[FleetMember], replicas: Sequence[int]) -> float:
    """Request-weighted predicted share within the SLO (1 without traffic)."""
    total = sum(max(0.0, m.rate_rps) for m in members)
    if total <= 0:
        return 1.0
    ok = sum(
        max(0.0, m.rate_rps) * attainment(_grid_rate(m.rate_rps), m.service_rate_rps, c, m.slo_s)
        for m, c in zip(members, replicas, strict=True)
    )
    return ok / total


def fleet_price(members: Sequence[FleetMember], target: float) -> float:
    """The least price (J per late request) at which the fleet's predicted attainment reaches `target`;
    the highest useful price if no count within the members' maxima reaches it, 0 if the floors do."""
    table = [_increment_prices(m) for m in members]
    # Requests weigh by the measured rate, as in `fleet_attainment` (the curves are the grid rate's): a
    # price found with the grid's rounded-up weights could leave the measured attainment just short.
    rates = [max(0.0, m.rate_rps) for m in members]
    total = sum(rates)
    if total <= 0:
        return 0.0
    need = min(1.0, target) * total
    rows = [(rate, prices, curve) for rate, (_, prices, curve) in zip(rates, table, strict=True) if curve]

    def within(price: float) -> float:
        return sum(rate * curve[bisect.bisect_right(prices, price)] for rate, prices, curve in rows)

    if within(0.0) >= need:
        return 0.0
    candidates = sorted({p for _, prices, _ in table for p in prices if math.isfinite(p)})
    if not candidates:
        return 0.0
    lo, hi = 0, len(candidates) - 1
    if within(candidates[hi]) < need:
        return candidates[hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if within(candidates[mid]) >= need:
            hi = mid
        else:
            lo = mid + 1
    return candidates[lo]


def size_fleet(members: Sequence[FleetMember], target: float) -> tuple[list[int], float]:
    """Replicas per member and the price that sizes the fleet for `target`."""
    price = fleet_price(members, target)
    return [replicas_at_price(m, price) for m in members], price


def member_target(member: FleetMember, price_j: float, target: float) -> float:
    """The share within the SLO to size this member for (autoscaling's `slo_attainment`), so that at its
    estimated rate it gets the count `c` the fleet's price gives it (`replicas_at_price`), and more only
    when a trend or a queue raises the rate to size for by a margin: the fleet's `target` where `c` is the
    count the target itself needs; else midway between the attainments of `c - 1` and `c` replicas (the
    fleet gives this member less than the target, or more). A share at the edge of `c`'s attainment would
    make the next noisy estimate add a replica that the price does not buy."""
    rate = _grid_rate(member.rate_rps)
    if rate <= 0:
        return target
    c = replicas_at_price(member, price_j)
    mu, slo = member.service_rate_rps, member.slo_s
    here = attainment(rate, mu, c, slo)
    below = attainment(rate, mu, c - 1, slo) if c > 1 else 0.0
    if below < target <= here:
        return target
    return (below + here) / 2.0
