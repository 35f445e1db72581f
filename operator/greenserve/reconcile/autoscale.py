"""Adapter between a ModelService (spec, status, metrics reading) and the pure autoscaling policy.

The policy's stabilisation state round-trips through status.scaler, so the decision after an operator
restart is the one the old process would have made, including a hold after a metrics gap.

The energy policies size the fleet, not each model alone (policy/fleet.py): `FleetBook` keeps the latest
sizing inputs of every ModelService this process reconciled, and one price per late request is set for
all those with the same attainment target. The book lives in memory: after a restart it refills as each
ModelService is reconciled, and until then the fleet is the ModelServices seen so far (one alone is sized
for the target by itself, as without the fleet objective). Entries older than the metrics' staleness
threshold drop out, so a deleted or silent ModelService no longer moves the price. `RateHistory` keeps
the last hour of each ModelService's request rate, in memory too, for the headroom against rises within
the lead time, and pools every ModelService's rises as each one's prior (`estimate.rise_quantile`); a
headroom replica is held only where those rises fill enough of it (`profile.with_headroom`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from greenserve.api import conditions as cond
from greenserve.api.v1alpha1 import ModelServiceSpec, ModelServiceStatus
from greenserve.config import OperatorConfig
from greenserve.manifests.builders import initial_replicas
from greenserve.manifests.profile import service_profile
from greenserve.metrics.types import ServiceMetrics
from greenserve.policy import autoscaling as pa
from greenserve.policy import estimate, fleet, profile
from greenserve.policy.profile import Reading
from greenserve.reconcile.bounds import bounded
from greenserve.reconcile.status import ScaleIntent


class FleetBook:
    """The latest fleet-sizing inputs per ModelService, in memory (see the module docstring)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[float, float, fleet.FleetMember]] = {}

    def price(
        self, key: tuple[str, str], target: float, member: fleet.FleetMember, now: float, ttl_s: float
    ) -> float:
        """Record `key`'s member and return the price that sizes its fleet (same target) for `target`."""
        self._entries[key] = (now, target, member)
        for k, (seen, _, _) in list(self._entries.items()):
            if now - seen > ttl_s:
                del self._entries[k]
        members = [m for _, t, m in self._entries.values() if t == target]
        return fleet.fleet_price(members, target)


FLEET = FleetBook()

# The rise factor (policy/estimate.py) learns from this much of each ModelService's history, with a
# lead time of one metrics window + node provisioning + the model load (profile.rise_lead_s).
RISE_HISTORY_S = 3600.0


class RateHistory:
    """Per ModelService, the newest window's request rate each time a new window is read, over the last
    RISE_HISTORY_S. Readings closer than one window apart are not recorded twice, so entries are about one
    window apart. It is kept in memory: a restarted operator refills it from the metrics source's past
    windows (`backfill`, reconcile/ticker.py) before its first decision, where the source keeps them
    (Prometheus); with direct scraping the factor is 1 until the history refills.

    It also keeps each ModelService's rises (`estimate.rise_ratios`, recomputed when a window is added)
    and pools them into the fleet's (`prior`), the prior every model's own rises are mixed with: a model
    whose last hour held no burst still gets headroom for the bursts its fleet has shown."""

    def __init__(self) -> None:
        self._rates: dict[tuple[str, str], deque[tuple[float, float]]] = {}
        self._rises: dict[tuple[str, str], list[float]] = {}
        self._prior: tuple[float, ...] | None = None
        self._weights: dict[tuple[float, int], float] = {}
        self._factors: dict[tuple[str, str], float] = {}
        self._sized: dict[tuple[str, str], tuple[float, float]] = {}  # -> (at, rate)
        self._swept = -math.inf  # when the expiry sweeps last ran

    def record(self, key: tuple[str, str], at: float, rate: float, window_s: float) -> list[float]:
        """Add a reading; the recorded rates, newest first."""
        q = self._rates.setdefault(key, deque())
        if not q or at - q[-1][0] >= window_s:
            q.append((at, rate))
            self._rises.pop(key, None)
        while q and at - q[0][0] > RISE_HISTORY_S:
            q.popleft()
        if at - self._swept >= window_s:
            # Once per window, not per reading: a sweep per reading made a tick of n ModelServices cost n².
            self._swept = at
            for k in [k for k, other in self._rates.items() if other and at - other[-1][0] > RISE_HISTORY_S]:
                del self._rates[k]  # a deleted or long-silent ModelService
                self._rises.pop(k, None)
                self._factors.pop(k, None)
                self._prior = None
            for k in [k for k, (seen, _) in self._sized.items() if at - seen > RISE_HISTORY_S]:
                del self._sized[k]
        return [r for _, r in reversed(q)]

    def knows(self, key: tuple[str, str]) -> bool:
        return bool(self._rates.get(key))

    def backfill(self, key: tuple[str, str], points: Sequence[tuple[float, float]], window_s: float) -> None:
        """Fill an empty history with past (window end, rate) points, oldest first, one window apart at
        least, as `record` would have kept them; a history that has readings is left as it is."""
        if self.knows(key):
            return
        for at, rate in points:
            self.record(key, at, rate, window_s)

    def rises(self, key: tuple[str, str], window_s: float, lead_s: float) -> list[float]:
        """`key`'s own rises over its recorded history (cached until its next window)."""
        found = self._rises.get(key)
        if found is None:
            past = [r for _, r in reversed(self._rates.get(key, ()))]
            found = self._rises[key] = estimate.rise_ratios(past, window_s, lead_s)
            self._prior = None
        return found

    def prior(self) -> tuple[float, ...]:
        """Every ModelService's rises pooled (`estimate.pool_rises`), rebuilt after any of them changed."""
        if self._prior is None:
            self._prior = estimate.pool_rises(self._rises.values())
            self._weights = {}
        return self._prior

    def prior_weight(self, quantile: float, lead: int) -> float:
        """What the prior is worth against a model's own rises (`estimate.prior_weight`), rebuilt with it."""
        prior = self.prior()
        found = self._weights.get((quantile, lead))
        if found is None:
            found = self._weights[(quantile, lead)] = estimate.prior_weight(
                self._rises.values(), prior, quantile, lead
            )
        return found

    def set_factor(self, key: tuple[str, str], factor: float) -> None:
        self._factors[key] = factor

    def factor(self, key: tuple[str, str]) -> float:
        """`key`'s rise headroom as its last autoscaling step computed it (1: none yet, as after a
        restart); the pool placement sizes a shared GPU's room for rises with it (reconcile/pools.py)."""
        return self._factors.get(key, 1.0)

    def set_sized_rate(self, key: tuple[str, str], at: float, rate: float) -> None:
        self._sized[key] = (at, rate)

    def sized_rate(self, key: tuple[str, str]) -> float | None:
        """`key`'s rate as its last autoscaling step sized for it (`profile.sizing_rate`: the rate's upper
        estimate over the pooled windows, before the rise headroom); None before its first reading. The
        pool placement loads a model by it, as the simulator does (reconcile/pools.py `demand_of`)."""
        found = self._sized.get(key)
        return None if found is None else found[1]


HISTORY = RateHistory()


@dataclass(frozen=True)
class Decision:
    desired: int
    previous: int | None
    intent: ScaleIntent
    status: ModelServiceStatus
    # While the stabilisation window alone holds `desired`: what the load asks for now, and when the
    # window would stop holding (policy/release.py); None otherwise.
    wanted: int | None = None
    held_until: float | None = None
    # What the load seen asks for without the rise headroom (policy/autoscaling.py `ScaleDecision.bare`,
    # within the bounds); None without a reading.
    bare: int | None = None


def reading_of(metrics: ServiceMetrics) -> Reading:
    """What the policy needs of a metrics source's reading."""
    return Reading(
        rate=metrics.requests_per_s,
        inflight=metrics.inflight_requests,
        rate_history=metrics.rate_history,
        utilization=metrics.gpu_utilization,
        sampled_at=metrics.sampled_at,
        window_s=metrics.window_s,
    )


def scaling_inputs(
    spec: ModelServiceSpec,
    status: Mapping[str, Any],
    reading: ServiceMetrics | None,
    config: OperatorConfig,
    rise_factor: float = 1.0,
    slo_attainment: float | None = None,
    demand_at: float | None = None,
) -> pa.ScalingInputs:
    """The policy's inputs from the spec, the replica counts in status and the reading (policy/profile.py);
    `demand_at`: the activator's last demand mark (api/objects.py activation_demand)."""
    current = status.get("desiredReplicas")
    replicas = int(current) if isinstance(current, int) else initial_replicas(spec)
    return profile.scaling_inputs(
        service_profile(spec),
        reading_of(reading) if reading is not None else None,
        replicas,
        int(status.get("readyReplicas") or 0),
        stale_after_s=config.metrics_stale_after_s,
        default_window_s=config.metrics_window_s,
        rise_factor=rise_factor,
        slo_attainment=slo_attainment,
        demand_at=demand_at,
    )


def policy_inputs(
    spec: ModelServiceSpec,
    status: Mapping[str, Any],
    reading: ServiceMetrics | None,
    now: float,
    config: OperatorConfig,
    fleet_book: FleetBook | None = None,
    history: RateHistory | None = None,
    demand_at: float | None = None,
) -> pa.ScalingInputs:
    """What one autoscaling step decides on: `scaling_inputs` with the rise headroom learned from this
    ModelService's history and its share of the fleet objective. Records the reading in `history` and
    the service in `fleet_book`, so call it once per decision."""
    svc = service_profile(spec)
    inputs = scaling_inputs(spec, status, reading, config, demand_at=demand_at)
    hist = HISTORY if history is None else history
    if reading is not None and inputs.request_rate is not None:
        hist.set_sized_rate((reading.namespace, reading.name), reading.sampled_at or now, inputs.request_rate)
    target = inputs.slo_attainment
    rises: estimate.Rises | None = None
    if reading is not None and target and inputs.slo_p95_ms and inputs.request_rate and reading.window_s > 0:
        # Headroom for the rises this model has shown within the lead time, at the target's quantile,
        # with the fleet's rises as its prior (worth as much as the fleet's models are alike).
        key = (reading.namespace, reading.name)
        hist.record(key, reading.sampled_at or now, reading.requests_per_s or 0.0, reading.window_s)
        lead_s = profile.rise_lead_s(svc, reading.window_s)
        own = hist.rises(key, reading.window_s, lead_s)
        weight = hist.prior_weight(target, math.ceil(lead_s / reading.window_s))
        rises = estimate.Rises(tuple(own), hist.prior(), weight)
        factor = rises.quantile(target)
        hist.set_factor(key, factor)
        inputs = scaling_inputs(spec, status, reading, config, rise_factor=factor, demand_at=demand_at)
    if reading is not None and target and inputs.slo_p95_ms and inputs.request_rate is not None:
        # The fleet objective: this model's share of the fleet's target at the fleet's price.
        member = profile.fleet_member(svc, inputs.request_rate)
        book = FLEET if fleet_book is None else fleet_book
        key = (reading.namespace, reading.name)
        price = book.price(key, target, member, now, config.metrics_stale_after_s)
        inputs = replace(inputs, slo_attainment=fleet.member_target(member, price, target))
    if rises is not None and target:
        # Whole replicas: a headroom replica only where the rises fill enough of it (estimate.Rises).
        inputs = profile.with_headroom(inputs, rises, target)
    return inputs


def decide(
    spec: ModelServiceSpec,
    status: Mapping[str, Any],
    reading: ServiceMetrics | None,
    now: float,
    config: OperatorConfig,
    fleet_book: FleetBook | None = None,
    history: RateHistory | None = None,
    demand_at: float | None = None,
) -> Decision:
    """One autoscaling step. `reading` is None when metrics are missing or stale: the policy holds (but
    fresh activator demand wakes a service at zero)."""
    inputs = policy_inputs(spec, status, reading, now, config, fleet_book, history, demand_at)
    raw_state = status.get("scaler")
    state = pa.ScalerState.from_dict(raw_state) if isinstance(raw_state, dict) else pa.ScalerState()
    result = pa.decide(inputs, state, now)
    limit = bounded(spec, config, result.desired_replicas)
    desired = limit.replicas
    previous = status.get("desiredReplicas") if isinstance(status.get("desiredReplicas"), int) else None
    changed = previous is not None and desired != previous
    fields: dict[str, Any] = {"scaler": result.state.to_dict()}
    if changed:
        fields["last_scale_time"] = cond.now_rfc3339()
    if result.desired_replicas != desired and limit.capped_from is None:
        cause = f"within minReplicas {spec.scaling.min_replicas} and maxReplicas {spec.scaling.max_replicas}"
    else:
        cause = f"demand {result.demand_replicas}" if result.demand_replicas is not None else "no demand"
    # The API conventions ask for CamelCase condition reasons, whatever the policy calls them.
    reason = result.reason.replace(":", "")
    intent = ScaleIntent(
        previous=previous,
        desired=desired,
        reason=reason,
        message=f"{reason}, {cause}",
        capped_from=limit.capped_from,
    )
    wanted = held = None
    if result.reason == pa.STABILIZING and result.wanted is not None and result.wanted < desired:
        wanted = result.wanted
        held = pa.held_until(result.state, desired, inputs.scale_down_delay_s)
    return Decision(
        desired=desired,
        previous=previous,
        intent=intent,
        status=ModelServiceStatus(**fields),
        wanted=wanted,
        held_until=held,
        bare=None if result.bare is None else min(desired, result.bare),
    )
