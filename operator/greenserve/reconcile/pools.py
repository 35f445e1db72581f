"""Shared GPU pools: who is in a pool, the pool's objects, and the per-model routing labels. Level-based.

`sync_pool` recomputes one pool from what the API server holds: the namespace's ModelServices (their
specs, and their last load figures and placement in status), the pool's ConfigMap (its members and the
members being handed over, in two annotations, so a restarted operator resumes a handover) and the pool's
pods. It runs the `Placer` (policy/pool_rule.py: the sharing policy of policy/sharing.py), writes the member
list, and labels each Ready pool pod with `model.greenserve.io/<ModelService>: available` for every
member the pod reports AVAILABLE (GET /v1/models/<name>), removing it from the others.

Moves never leave a model without a ready, selected home:

* into the pool: the model is added to the pool's list at once; its own replicas stay until a pool pod
  with its label is a ready endpoint of its Service (`selected_pods`), then they are scaled to zero
  (reconcile/modelservice.py), draining as any scale-in does;
* out of the pool: its own replicas are scaled up first (labelled too, so the Service selects both);
  once one of them is a ready endpoint of its Service, the label is removed from the pool pods, and the
  model is unloaded (removed from the list) `pool_unload_grace_s` later, when endpoint removal has
  reached every proxy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pydantic import ValidationError

from greenserve.api import constants as c
from greenserve.api.objects import pod_ready, pod_terminating
from greenserve.api.quantity import parse_quantity
from greenserve.api.v1alpha1 import GpuSharing, ModelServiceSpec, ScalingMetric, effective_sharing, parse_spec
from greenserve.cluster.cache import ConflictingObjectError, apply_if_changed
from greenserve.cluster.client import CONFIGMAPS, DEPLOYMENTS, ENDPOINTSLICES, MODELSERVICES, PODS, KubeClient
from greenserve.cluster.model_status import model_available, status_url
from greenserve.config import OperatorConfig
from greenserve.manifests import pools as pm
from greenserve.manifests.builders import BuildOptions, lift_warmup_protection, route_label
from greenserve.manifests.profile import service_profile
from greenserve.policy import pool_rule, sharing
from greenserve.policy.profile import UTILISATION_AT_TARGET, sharing_demand
from greenserve.reconcile import autoscale

log = logging.getLogger(__name__)

ANN_MEMBERS = f"{c.GROUP}/pool-members"  # JSON {ModelService: model name}: the pool's list
ANN_LEAVING = f"{c.GROUP}/pool-leaving"  # JSON {ModelService: unix time its labels were removed}


@dataclass(frozen=True)
class MemberView:
    """What one ModelService's reconcile needs from its pool."""

    placement: pool_rule.Placement
    pool: str
    in_pool: bool  # in the pool's model list now (loaded, loading, or being handed over)
    serving_pods: tuple[str, ...] = ()  # pool pods labelled as serving it

    @property
    def routed(self) -> bool:
        """Its Service selects the routing label (pool pods, and its own replicas labelled too)."""
        return self.placement.shared or self.in_pool or bool(self.serving_pods)


def participates(spec: ModelServiceSpec, status: Mapping[str, Any]) -> bool:
    """Whether a ModelService's reconcile consults its pool: it may share, or it is (or was) shared."""
    placed = status.get("placement") or {}
    may_share = (
        effective_sharing(spec) == GpuSharing.AUTO and spec.gpu.count == 1 and spec.gpu.memory is not None
    )
    return may_share or bool(placed.get("shared")) or bool(placed.get("pool"))


def load_of(spec: ModelServiceSpec, status: Mapping[str, Any]) -> float | None:
    """The busy fraction of one replica from the last status figures (cleared while metrics are stale,
    so a stale metric gives None)."""
    s = spec.scaling
    rps, inflight = status.get("requestsPerSecond"), status.get("inflightRequests")
    return pool_rule.load_fraction(
        float(rps) if isinstance(rps, int | float) else None,
        float(inflight) if isinstance(inflight, int | float) else None,
        float(s.target) / UTILISATION_AT_TARGET if s.metric == ScalingMetric.REQUESTS_PER_SECOND else None,
        float(s.target) if s.metric == ScalingMetric.CONCURRENCY else None,
        UTILISATION_AT_TARGET,
    )


def blocked(spec: ModelServiceSpec) -> str | None:
    """Why a ModelService may not share at all (Exclusive, or a spec a pool pod cannot honour), or None."""
    if effective_sharing(spec) == GpuSharing.EXCLUSIVE:
        return pool_rule.EXCLUSIVE
    return pm.incompatible(spec)


def _annotation(obj: Mapping[str, Any] | None, key: str) -> dict[str, Any]:
    raw = ((obj or {}).get("metadata") or {}).get("annotations", {}).get(key)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def selected_pods(kube: KubeClient, namespace: str, service: str) -> set[str]:
    """Pods that are ready endpoints of a Service now (its EndpointSlices)."""
    slices = await kube.list_objects(
        ENDPOINTSLICES, namespace, label_selector=f"kubernetes.io/service-name={service}"
    )
    out: set[str] = set()
    for sl in slices:
        for ep in sl.get("endpoints") or []:
            ref = ep.get("targetRef") or {}
            if ref.get("kind") == "Pod" and (ep.get("conditions") or {}).get("ready") is True:
                out.add(str(ref.get("name")))
    return out


def _ours(obj: Mapping[str, Any], key: pm.PoolKey) -> bool:
    return bool((obj.get("metadata") or {}).get("labels", {}).get(c.LABEL_POOL) == key.name)


_LOCKS: dict[pm.PoolKey, asyncio.Lock] = {}
_LAST: dict[pm.PoolKey, dict[str, MemberView]] = {}
_RESYNC: dict[pm.PoolKey, asyncio.Task[None]] = {}


@dataclass
class _Member:
    uid: str
    model: str
    storage_uri: str


@dataclass
class _Inputs:
    candidates: list[pool_rule.Candidate] = field(default_factory=list)
    members: dict[str, _Member] = field(default_factory=dict)


def demand_of(
    name: str,
    spec: ModelServiceSpec,
    status: Mapping[str, Any],
    gpu_memory_bytes: int,
    rise_factor: float = 1.0,
    sized_rate: float | None = None,
) -> sharing.ModelDemand | None:
    """The sharing policy's input for a ModelService (profile.sharing_demand), from the last request rate
    in its status (cleared while metrics are stale: then no reading, and the policy holds it) and its
    rise headroom (`autoscale.HISTORY.factor`: 1 until its autoscaler has seen a rise). With a reading, the
    load is the rate its autoscaler sized for (`sized_rate`, `autoscale.HISTORY.sized_rate`: the rate's
    upper estimate over the pooled windows, as the simulator places models) where there is one."""
    if spec.gpu.memory is None:
        return None
    rps = status.get("requestsPerSecond")
    if isinstance(rps, int | float) and sized_rate is not None:
        rps = sized_rate
    replicas = status.get("replicas")
    return sharing_demand(
        service_profile(spec),
        name,
        float(rps) if isinstance(rps, int | float) else None,
        memory_gib=float(parse_quantity(spec.gpu.memory)) / 2**30,
        gpu_memory_gib=gpu_memory_bytes / 2**30,
        sharing=sharing.Sharing(effective_sharing(spec).value),
        has_dedicated=isinstance(replicas, int) and replicas > 0,
        rise_factor=rise_factor,
    )


# Placements the load alone decides (not PoolFull, ModelNameInPool, Exclusive, NotShareable).
_LOAD_DRIVEN = frozenset({pool_rule.SHARED, pool_rule.JOINS, pool_rule.STARTS_SHARED, pool_rule.BUSY})


def placement_due(
    name: str,
    spec: ModelServiceSpec,
    status: Mapping[str, Any],
    rps: float | None,
    config: OperatorConfig,
    rise_factor: float = 1.0,
    sized_rate: float | None = None,
) -> bool:
    """The fresh request rate `rps` crosses the model's sharing threshold for its current placement (out
    of the pool past the leave threshold, into it below the join threshold: policy/sharing.py
    `wants_shared`), so its pool must be re-planned now rather than at the next status refresh. Never
    without a reading, and only for a placement the load decides (a full pool is not re-planned on
    every tick). `sized_rate`: the rate the autoscaler sized for at this reading (`demand_of`)."""
    placed = status.get("placement") or {}
    if rps is None or placed.get("reason") not in _LOAD_DRIVEN or blocked(spec) is not None:
        return False
    limit = int(parse_quantity(config.pool_gpu_memory))
    demand = demand_of(name, spec, {**status, "requestsPerSecond": rps}, limit, rise_factor, sized_rate)
    if demand is None:
        return False
    now_shared = bool(placed.get("shared"))
    wants = sharing.wants_shared(demand, now_shared, sharing.SharingLimits(gpu_memory_gib=limit / 2**30))
    return wants is not None and wants != now_shared


def _inputs(
    bodies: Sequence[Mapping[str, Any]],
    key: pm.PoolKey,
    listed: Mapping[str, str],
    gpu_memory_bytes: int,
    rates: Mapping[str, float | None] | None = None,
) -> _Inputs:
    out = _Inputs()
    for body in bodies:
        meta = body.get("metadata") or {}
        name = str(meta.get("name"))
        if meta.get("deletionTimestamp"):
            continue
        try:
            spec = parse_spec(dict(body.get("spec") or {}))
        except ValidationError:
            continue
        status = body.get("status") or {}
        if rates is not None and name in rates:
            # The caller's fresh reading (the metrics tick): status has it only after this pass writes it.
            status = {**status, "requestsPerSecond": rates[name]}
        placed = status.get("placement")
        in_key = pm.pool_key(key.namespace, spec) == key
        if not in_key and name not in listed:
            continue
        why = blocked(spec) if in_key else "its GPU product or image belongs to another pool"
        memory = int(parse_quantity(spec.gpu.memory)) if spec.gpu.memory is not None else 0
        out.candidates.append(
            pool_rule.Candidate(
                service=name,
                model_name=spec.model.name,
                memory_bytes=memory,
                load=load_of(spec, status),
                # Where it is: its placement (a model leaving the pool is still listed until its own
                # replica serves; held without a reading, it must stay out), else the pool's list.
                shared=bool(placed["shared"])
                if isinstance(placed, dict) and "shared" in placed
                else name in listed,
                new=placed is None,
                blocked=why,
                demand=demand_of(
                    name,
                    spec,
                    status,
                    gpu_memory_bytes,
                    autoscale.HISTORY.factor((key.namespace, name)),
                    autoscale.HISTORY.sized_rate((key.namespace, name)),
                ),
            )
        )
        out.members[name] = _Member(str(meta.get("uid")), spec.model.name, spec.model.storage_uri)
    return out


async def sync_pool(
    kube: KubeClient,
    key: pm.PoolKey,
    config: OperatorConfig,
    on_change: Callable[[str], None] | None = None,
    placer: pool_rule.Placer = pool_rule.sharing_placer,
    rates: Mapping[str, float | None] | None = None,
) -> dict[str, MemberView]:
    """Bring one pool in line (see the module docstring); returns every candidate's view. `on_change` is
    called with each ModelService whose view changed since the last sync (so its reconcile runs).
    `rates`: fresh request rates of some members, newer than their status."""
    lock = _LOCKS.setdefault(key, asyncio.Lock())
    async with lock:
        views, converged = await _sync_locked(kube, key, config, placer, rates)
    last = _LAST.get(key, {})
    _LAST[key] = views
    if on_change is not None:
        for name, view in views.items():
            if last.get(name) != view:
                on_change(name)
    if not converged:
        _resync_later(kube, key, config, on_change, placer)
    return views


def _resync_later(
    kube: KubeClient,
    key: pm.PoolKey,
    config: OperatorConfig,
    on_change: Callable[[str], None] | None,
    placer: pool_rule.Placer,
) -> None:
    """While a model loads or a handover waits, look again after the model server's poll interval:
    neither shows as a watch event."""
    running = _RESYNC.get(key)
    if running is not None and not running.done():
        return

    async def again() -> None:
        await asyncio.sleep(max(1.0, float(config.pool_poll_seconds)))
        _RESYNC.pop(key, None)
        try:
            await sync_pool(kube, key, config, on_change, placer)
        except Exception:
            log.exception("pool %s/%s: resync failed", key.namespace, key.name)

    _RESYNC[key] = asyncio.get_running_loop().create_task(again())


async def _sync_locked(
    kube: KubeClient,
    key: pm.PoolKey,
    config: OperatorConfig,
    placer: pool_rule.Placer,
    rates: Mapping[str, float | None] | None = None,
) -> tuple[dict[str, MemberView], bool]:
    ns = key.namespace
    cm_name = pm.config_map_name(key)
    cm = await kube.get_or_none(CONFIGMAPS, cm_name, ns)
    dep = await kube.get_or_none(DEPLOYMENTS, key.name, ns)
    for existing in (cm, dep):
        if existing is not None and not _ours(existing, key):
            raise ConflictingObjectError(existing, "an object that is not this pool")
    listed: dict[str, str] = {str(k): str(v) for k, v in _annotation(cm, ANN_MEMBERS).items()}
    leaving: dict[str, float] = {
        str(k): float(v) for k, v in _annotation(cm, ANN_LEAVING).items() if isinstance(v, int | float)
    }
    limits = pool_rule.PoolLimits(gpu_memory_bytes=int(parse_quantity(config.pool_gpu_memory)))
    inputs = _inputs(await kube.list_objects(MODELSERVICES, ns), key, listed, limits.gpu_memory_bytes, rates)
    plan = dict(placer(inputs.candidates, limits))
    pods = [
        p for p in await kube.list_objects(PODS, ns, label_selector=f"{c.LABEL_POOL}={key.name}")
        if not pod_terminating(p)
    ]  # fmt: skip
    pool_pod_names = {p["metadata"]["name"] for p in pods}
    now = time.time()
    pending = False
    for name in list(listed):
        wants = plan.get(name)
        if name not in inputs.members:  # deleted (its Service went with it): nothing to hand over
            listed.pop(name)
            leaving.pop(name, None)
        elif wants is not None and wants.shared:
            leaving.pop(name, None)
        elif name not in leaving:
            # Its own replicas must be ready endpoints of its Service before the pool lets go of it.
            own = await selected_pods(kube, ns, name) - pool_pod_names
            if own:
                leaving[name] = now
            pending = True
        elif now - leaving[name] >= config.pool_unload_grace_s:
            listed.pop(name)
            leaving.pop(name)
        else:
            pending = True
    for name, placement in plan.items():
        if placement.shared and name not in listed:
            listed[name] = inputs.members[name].model
    members = [
        pm.PoolMember(n, inputs.members[n].uid, inputs.members[n].model, inputs.members[n].storage_uri)
        for n in sorted(listed)
    ]
    await _apply(kube, key, config, members, listed, leaving, existing=(cm, dep))
    routable = {n: listed[n] for n in listed if n not in leaving}
    serving, labels_pending = await _label_pods(kube, pods, routable, config)
    views = {
        name: MemberView(placement, key.name, name in listed, tuple(sorted(serving.get(name, ()))))
        for name, placement in plan.items()
        if placement.shared or name in listed
    }
    for name, placement in plan.items():
        views.setdefault(name, MemberView(placement, key.name, False))
    ready_pods = sum(1 for p in pods if pod_ready(p))
    converged = not pending and not labels_pending and (ready_pods > 0 or not members)
    return views, converged


async def _apply(
    kube: KubeClient,
    key: pm.PoolKey,
    config: OperatorConfig,
    members: list[pm.PoolMember],
    listed: Mapping[str, str],
    leaving: Mapping[str, float],
    existing: tuple[Mapping[str, Any] | None, Mapping[str, Any] | None],
) -> None:
    cm = pm.pool_config_map(key, members)
    cm["metadata"]["annotations"] = {
        ANN_MEMBERS: json.dumps(dict(sorted(listed.items()))),
        ANN_LEAVING: json.dumps(dict(sorted(leaving.items()))),
    }
    options = BuildOptions(scheduler_name=config.scheduler_name, agent_front=config.agent_front)
    pool_options = pm.PoolOptions(
        requests=(("cpu", config.pool_cpu_request), ("memory", config.pool_memory_request)),
        limits=(("memory", config.pool_memory_limit),),
        poll_seconds=config.pool_poll_seconds,
    )
    dep = pm.pool_deployment(key, members, 1 if members else 0, options, pool_options)
    for obj, live in zip((cm, dep), existing, strict=True):
        if not members:
            # An empty pool keeps its objects at zero replicas with their last owners (the operator
            # deletes nothing; the garbage collector removes them with the last owner), and is not
            # created again once they are gone.
            refs = ((live or {}).get("metadata") or {}).get("ownerReferences")
            if not refs:
                continue
            obj["metadata"]["ownerReferences"] = refs
        await apply_if_changed(kube, obj)


async def _label_pods(
    kube: KubeClient, pods: Sequence[Mapping[str, Any]], routable: Mapping[str, str], config: OperatorConfig
) -> tuple[dict[str, set[str]], bool]:
    """Label each Ready pool pod for the routable members it reports AVAILABLE and unlabel the rest;
    returns the pods serving each member, and whether some member is not yet on every Ready pod."""
    serving: dict[str, set[str]] = {}
    pending = False
    async with aiohttp.ClientSession() as session:
        for pod in pods:
            meta = pod["metadata"]
            labels: dict[str, str] = meta.get("labels") or {}
            ready = pod_ready(pod)
            names = sorted(routable) if ready else []
            urls = [status_url(config.model_status_url, pod, routable[n]) for n in names]
            found = await asyncio.gather(*(model_available(session, u) if u else _false() for u in urls))
            available = {n for n, ok in zip(names, found, strict=True) if ok}
            pending |= ready and len(available) < len(names)
            patch: dict[str, str | None] = {}
            for name in available:
                if labels.get(route_label(name)) != c.ROUTE_AVAILABLE:
                    patch[route_label(name)] = c.ROUTE_AVAILABLE
            for label in labels:
                if (
                    label.startswith(c.ROUTE_LABEL_PREFIX)
                    and label[len(c.ROUTE_LABEL_PREFIX) :] not in available
                ):
                    patch[label] = None
            body: dict[str, Any] = {"metadata": {"labels": patch}} if patch else {}
            # A Ready pool pod is no longer warming up: node autoscalers may move it again.
            lift = lift_warmup_protection(dict(pod))
            if lift is not None:
                body.setdefault("metadata", {})["annotations"] = lift["metadata"]["annotations"]
            if body:
                await kube.patch(PODS, meta["name"], body, meta["namespace"])
            for name in available:
                serving.setdefault(name, set()).add(meta["name"])
    return serving, pending


async def _false() -> bool:
    return False


async def label_own_replicas(kube: KubeClient, pods: Sequence[Mapping[str, Any]], service: str) -> None:
    """A routed ModelService's own replicas carry its routing label too, so its Service selects them
    beside (or instead of) the pool pods; a replica's readiness is its model being AVAILABLE."""
    label = route_label(service)
    for pod in pods:
        meta = pod["metadata"]
        if pod_terminating(pod) or (meta.get("labels") or {}).get(label) == c.ROUTE_AVAILABLE:
            continue
        await kube.patch(
            PODS, meta["name"], {"metadata": {"labels": {label: c.ROUTE_AVAILABLE}}}, meta["namespace"]
        )
