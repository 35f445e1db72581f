"""The periodic, level-based loop for one ModelService: read metrics, decide replicas, apply, report.

Each pass starts from the live object and what the metrics source says now; the only memory is what
earlier passes wrote to status (the autoscaler's stabilisation state, the energy counters). Killing the
operator between two passes loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from greenserve.api.constants import LABEL_MODELSERVICE
from greenserve.api.objects import activation_demand, pod_ready
from greenserve.api.v1alpha1 import ModelServiceSpec, merge_status, parse_spec
from greenserve.cluster.client import PODS, KubeClient
from greenserve.config import OperatorConfig
from greenserve.metrics.base import MetricsSource
from greenserve.metrics.operator_metrics import OperatorMetrics
from greenserve.metrics.types import PodRef, ServiceMetrics
from greenserve.reconcile import autoscale, telemetry
from greenserve.reconcile import modelservice as rec
from greenserve.reconcile.modelservice import Extra, Outcome

log = logging.getLogger(__name__)


@dataclass
class LoopDeps:
    kube: KubeClient
    config: OperatorConfig
    source: MetricsSource | None = None
    metrics: OperatorMetrics | None = None
    clock: Callable[[], float] = field(default=time.time)


def pod_refs(pods: list[dict[str, Any]]) -> list[PodRef]:
    refs = []
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        if meta.get("deletionTimestamp"):
            continue
        refs.append(
            PodRef(
                namespace=meta["namespace"],
                name=meta["name"],
                ip=status.get("podIP"),
                node=(pod.get("spec") or {}).get("nodeName"),
                ready=pod_ready(pod),
            )
        )
    return refs


async def _read_metrics(deps: LoopDeps, ns: str, name: str, pods: list[PodRef]) -> ServiceMetrics | None:
    if deps.source is None:
        return None
    try:
        return await deps.source.service_metrics(ns, name, pods)
    except Exception as err:  # a broken source must never stop the loop; it reads as "no metrics"
        log.warning("metrics for %s/%s unavailable: %s", ns, name, err)
        return None


async def resync(deps: LoopDeps, body: Mapping[str, Any]) -> Outcome:
    # Decide from the live status: the stabilisation state and replica count we wrote last time.
    outcome = await rec.under_lock(deps.kube, body, lambda live: _resync_locked(deps, live))
    if deps.metrics is not None:
        deps.metrics.record_pass("resync")
    return outcome


async def _resync_locked(deps: LoopDeps, body: Mapping[str, Any]) -> Outcome:
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    raw_pods = await deps.kube.list_objects(PODS, ns, label_selector=f"{LABEL_MODELSERVICE}={name}")
    reading = await _read_metrics(deps, ns, name, pod_refs(raw_pods))
    return (await step_locked(deps, body, reading)).outcome


@dataclass(frozen=True)
class Step:
    outcome: Outcome
    scaler: Mapping[str, Any] | None  # the autoscaler's state after this step (None: spec invalid)
    telemetry: telemetry.Telemetry | None = None
    decision: autoscale.Decision | None = None


def assess(
    deps: LoopDeps,
    spec: ModelServiceSpec,
    status: Mapping[str, Any],
    reading: ServiceMetrics | None,
    now: float,
    demand_at: float | None = None,
) -> tuple[telemetry.Telemetry, autoscale.Decision]:
    """What a step would write for this reading: telemetry fields and the autoscaling decision (pure).
    `demand_at`: the activator's demand mark on the ModelService (api/objects.py activation_demand)."""
    intensity = spec.energy.carbon_intensity_grams_per_kwh
    carbon = float(intensity) if intensity is not None else deps.config.carbon_intensity_g_per_kwh
    tele = telemetry.telemetry_fields(status, reading, carbon)
    fresh = reading if tele.fresh else None
    decision = autoscale.decide(spec, status, fresh, now, deps.config, demand_at=demand_at)
    return tele, decision


@dataclass(frozen=True)
class Assessed:
    """What `assess` found for one version of a ModelService (its metadata.resourceVersion)."""

    resource_version: str | None
    telemetry: telemetry.Telemetry
    decision: autoscale.Decision


async def step_locked(
    deps: LoopDeps,
    body: Mapping[str, Any],
    reading: ServiceMetrics | None,
    scaler: Mapping[str, Any] | None = None,
    assessed: Assessed | None = None,
) -> Step:
    """One autoscaling step on the live body, under its lock: decide from `reading`, apply, report.
    `scaler` overrides the stabilisation state kept in status (the metrics tick keeps it in memory).
    `assessed`: the decision the caller already made for this reading and scaler state; it is used when
    made on this very version of the object, so a pass decides (and prices the fleet) once, and the
    live object is assessed afresh only when it changed since."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    try:
        spec = parse_spec(dict(body.get("spec") or {}))
    except ValidationError:
        # An invalid spec is reported by the reconcile; nothing to decide.
        return Step(await rec.reconcile_locked(deps.kube, body, deps.config), None)
    status: Mapping[str, Any] = body.get("status") or {}
    if scaler is not None:
        status = {**status, "scaler": dict(scaler)}
    if assessed is not None and assessed.resource_version == meta.get("resourceVersion"):
        tele, decision = assessed.telemetry, assessed.decision
    else:
        tele, decision = assess(deps, spec, status, reading, deps.clock(), activation_demand(body))
    extra = Extra(
        fields=merge_status(tele.fields, decision.status),
        conditions=(tele.condition,),
        scale=decision.intent,
    )
    outcome = await rec.reconcile_locked(deps.kube, body, deps.config, desired=decision.desired, extra=extra)
    step = Step(outcome, decision.status.scaler, tele, decision)
    record(deps, ns, name, reading, step)
    return step


def record(deps: LoopDeps, namespace: str, name: str, reading: ServiceMetrics | None, step: Step) -> None:
    """The operator's own metrics of a step that was carried out (metrics/operator_metrics.py)."""
    tele, decision, outcome = step.telemetry, step.decision, step.outcome
    if deps.metrics is None or tele is None or decision is None:
        return
    export(deps, reading, tele, outcome.desired, outcome.status.get("readyReplicas"))
    if decision.previous is not None and outcome.desired is not None:
        deps.metrics.record_scale(namespace, name, decision.previous, outcome.desired)


def wants_wake(body: Mapping[str, Any]) -> bool:
    """The ModelService is at zero and the activator has marked demand: decide now (the policy wakes it
    when the mark is fresh) instead of waiting for the next metrics tick."""
    return (body.get("status") or {}).get("desiredReplicas") == 0 and activation_demand(body) is not None


async def wake(deps: LoopDeps, body: Mapping[str, Any]) -> Outcome:
    """One autoscaling step on the live ModelService without a reading: at zero there is none, and the
    policy scales up on the activator's demand alone (never down without fresh metrics)."""
    step = await rec.under_lock(deps.kube, body, lambda live: _wake_locked(deps, live))
    return step


def wakes_now(deps: LoopDeps, body: Mapping[str, Any]) -> bool:
    """`wants_wake`, and the policy would wake it now (its demand mark is fresh): pure, no request."""
    if not wants_wake(body):
        return False
    try:
        spec = parse_spec(dict(body.get("spec") or {}))
    except ValidationError:
        return False
    _, decision = assess(deps, spec, body.get("status") or {}, None, deps.clock(), activation_demand(body))
    return decision.desired > 0


#: The demand mark each ModelService was last woken for: every later event of the object that carries
#: the same mark (its status writes, the scale-up itself) wakes nothing again.
_WOKEN: dict[tuple[str, str], float] = {}
_WAKES: set[asyncio.Task[None]] = set()  # strong references until done


def wake_soon(deps: LoopDeps, body: Mapping[str, Any]) -> bool:
    """Wake a ModelService at zero from the watch event of the activator's demand mark, in the
    background; True when this call scheduled it.

    kopf leaves every annotation under greenserve's API group out of the diff its change handlers
    compare (its progress storage's prefix, handlers/diffbase.py), so the mark fires no update handler
    and the wake waited for the next metrics tick: up to `reconcile_interval_s` added to the first
    request's wait at the activator. The watch event is where the mark shows; the step runs in the
    background, like `rec.refresh_soon`, so kopf's queue of this object's events does not wait on it. A
    failure is logged and forgotten: the next event with the mark, or the tick, wakes it."""
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    mark = activation_demand(body)
    if mark is None or _WOKEN.get(key) == mark or not wakes_now(deps, body):
        return False
    _WOKEN[key] = mark

    async def run() -> None:
        try:
            await wake(deps, body)
        except Exception:
            _WOKEN.pop(key, None)
            log.exception("waking ModelService %s/%s failed", *key)

    task = asyncio.get_running_loop().create_task(run())
    _WAKES.add(task)
    task.add_done_callback(_WAKES.discard)
    return True


def forget_wake(namespace: str, name: str) -> None:
    """A deleted ModelService's entry (handlers/cache.py)."""
    _WOKEN.pop((namespace, name), None)


async def _wake_locked(deps: LoopDeps, live: Mapping[str, Any]) -> Outcome:
    if not wants_wake(live):  # woken meanwhile (the tick, or an earlier event)
        return await rec.reconcile_locked(deps.kube, live, deps.config)
    return (await step_locked(deps, live, None)).outcome


def export(
    deps: LoopDeps,
    reading: ServiceMetrics | None,
    tele: telemetry.Telemetry,
    desired: int | None,
    ready: int | None,
) -> None:
    """One ModelService's figures on the operator's own metrics endpoint, from a reading: after every
    step, and on a tick that writes nothing (they cost no request, so they follow every reading while
    status takes the slow figures every `status_refresh_s`)."""
    if deps.metrics is None or reading is None:
        return
    deps.metrics.update(
        reading,
        energy_total_j=tele.fields.energy_joules,
        grams_co2e=tele.fields.grams_co2e,
        replicas_desired=desired,
        replicas_ready=ready,
    )
