"""Queueing model for the SLO guard: p95 response time of c replicas behind one Service (M/M/c).

Erlang C gives the probability that a request waits; the waiting time of a waiting request is exponential
with rate c*mu - lambda, so P(W > t) = C * exp(-(c*mu - lambda) t). The p95 response is approximated as the
p95 wait plus one mean service time (TF Serving's service time is close to deterministic for a fixed
model and batch size; exponential waiting keeps the estimate conservative).
"""

from __future__ import annotations

import math
from functools import lru_cache

# The SLO is a p95 latency: the share of requests every sizing keeps within it, at least (the guard).
GUARD_TAIL = 0.05
GUARD_ATTAINMENT = 1.0 - GUARD_TAIL


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits, for `servers` servers and offered load a = lambda/mu (Erlangs)."""
    if servers <= 0:
        return 1.0
    if offered_load <= 0:
        return 0.0
    if offered_load >= servers:
        return 1.0
    # Iterative Erlang B, then C from B: numerically stable for large c.
    b = 1.0
    for k in range(1, servers + 1):
        b = offered_load * b / (k + offered_load * b)
    rho = offered_load / servers
    return b / (1.0 - rho + rho * b)


def p95_response_s(rate_rps: float, service_rate_rps: float, replicas: int) -> float:
    """Approximate p95 response time (s) of `replicas` servers each serving `service_rate_rps`."""
    if replicas <= 0 or service_rate_rps <= 0:
        return math.inf
    if rate_rps <= 0:
        return 1.0 / service_rate_rps
    capacity = replicas * service_rate_rps
    if rate_rps >= capacity:
        return math.inf
    wait_prob = erlang_c(replicas, rate_rps / service_rate_rps)
    wait_p95 = 0.0 if wait_prob <= GUARD_TAIL else math.log(wait_prob / GUARD_TAIL) / (capacity - rate_rps)
    return wait_p95 + 1.0 / service_rate_rps


def replicas_for_slo(rate_rps: float, service_rate_rps: float, slo_s: float, limit: int = 1000) -> int:
    """Smallest replica count whose p95 response stays within `slo_s` (`limit` if none does)."""
    if rate_rps <= 0:
        return 0
    start = max(1, math.ceil(rate_rps / service_rate_rps))
    for c in range(start, limit + 1):
        if p95_response_s(rate_rps, service_rate_rps, c) <= slo_s:
            return c
    return limit


def attainment(rate_rps: float, service_rate_rps: float, replicas: int, slo_s: float) -> float:
    """Share of requests answered within `slo_s` (M/M/c waiting plus one service time):
    1 - ErlangC * exp(-(c*mu - lambda) * (slo - 1/mu)); 0 when overloaded or the SLO is shorter than a
    service time, 1 without load."""
    if rate_rps <= 0:
        return 1.0
    if replicas <= 0 or service_rate_rps <= 0:
        return 0.0
    budget = slo_s - 1.0 / service_rate_rps
    capacity = replicas * service_rate_rps
    if budget < 0 or rate_rps >= capacity:
        return 0.0
    late = erlang_c(replicas, rate_rps / service_rate_rps) * math.exp(-(capacity - rate_rps) * budget)
    return max(0.0, 1.0 - late)


def replicas_for_attainment(
    rate_rps: float, service_rate_rps: float, slo_s: float, target: float, limit: int = 1000
) -> int:
    """Smallest replica count that answers at least `target` (e.g. 0.995) of requests within `slo_s`
    (`limit` if none does). With target 0.95 it is `replicas_for_slo` (the p95 guard)."""
    if rate_rps <= 0:
        return 0
    start = max(1, math.floor(rate_rps / service_rate_rps) + 1) if service_rate_rps > 0 else limit
    for c in range(start, limit + 1):
        if attainment(rate_rps, service_rate_rps, c, slo_s) >= target:
            return c
    return limit


def shared_attainment(total_load: float, mean_service_s: float, service_time_s: float, slo_s: float) -> float:
    """Share of a model's requests within `slo_s` on a GPU it shares: one server whose utilisation is the
    summed busy fraction of its models (`total_load`, sum of rate x service time), M/M/1 waiting with the
    mean service time of the requests it serves (`mean_service_s`), plus the model's own service time.

    P(wait > t) = rho * exp(-(1 - rho) * t / s_mean): the mean response grows as s / (1 - rho), the
    service slows as the GPU saturates, and at rho >= 1 no request is counted within the SLO. For one
    model alone it is `attainment(rate, 1 / s, 1, slo)`. Non-increasing in `total_load`."""
    budget = slo_s - service_time_s
    if budget < 0:
        return 0.0
    if total_load <= 0:
        return 1.0
    if total_load >= 1.0 or mean_service_s <= 0:
        return 0.0
    return max(0.0, 1.0 - total_load * math.exp(-(1.0 - total_load) * budget / mean_service_s))


# Memoised: a pure function of a model's service class and target, asked for every model on every tick.
@lru_cache(maxsize=1024)
def shared_load_cap(service_time_s: float, slo_s: float, target: float) -> float:
    """The largest summed load (0..1) of a GPU at which a model of this service time still gets `target`
    of its requests within `slo_s` (`shared_attainment` with its own service time as the mean): the
    saturation cap of a shared GPU. 0 when even an idle GPU cannot meet the SLO."""
    if shared_attainment(1e-12, service_time_s, service_time_s, slo_s) < target:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(60):  # bisection: the attainment is decreasing in the load
        mid = (lo + hi) / 2
        if shared_attainment(mid, service_time_s, service_time_s, slo_s) >= target:
            lo = mid
        else:
            hi = mid
    return lo
