"""Shared GPU pools: who is in a pool, on which of its GPUs, the pool's objects, and the per-model routing
labels. Level-based.

`sync_pool` recomputes one pool, every GPU of it (a shard: manifests/pools.py), from what the API server
holds: the namespace's ModelServices (their specs, and their last load figures and placement in status),
each shard's ConfigMap (its members and the members moving away from it, in two annotations, so a
restarted operator resumes a handover) and each shard's pods. It runs the `Placer` (policy/pool_rule.py:
the sharing policy of policy/sharing.py over the pool's GPUs), writes each shard's member list, and labels
each Ready pool pod with `model.greenserve.io/<ModelService>: available` for every member of its shard the
pod reports AVAILABLE (GET /v1/models/<name>), removing it from the others. A model lives on the shard
that lists it without a leaving mark; the plan sees a shard's memory still held by models leaving it.

Moves never leave a model without a ready, selected home:

* into the pool: the model is added to the pool's list at once; its own replicas stay until a pool pod
  with its label is a ready endpoint of its Service (`selected_pods`), then they are scaled to zero
  (reconcile/modelservice.py), draining as any scale-in does;
* out of the pool: its own replicas are scaled up first (labelled too, so the Service selects both);
  once one of them is a ready endpoint of its Service, the label is removed from the pool pods, and the
  model is unloaded (removed from the list) `pool_unload_grace_s` later, when endpoint removal has
  reached every proxy;
* between two pool GPUs: the model is added to its new shard's list at once and marked leaving (null)
  on the old one; once a pod of the new shard is a ready endpoint of its Service, the old shard's pods
  lose the label (the mark becomes that time) and the model is unloaded there after the grace. A
  restart between any two writes finds the marks and lists where it left them.
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
from greenserve.cluster.cache import ConflictingObjectError, apply_if_changed, digest
from greenserve.cluster.client import (
    CONFIGMAPS,
    DEPLOYMENTS,
    ENDPOINTSLICES,
    MODELSERVICES,
    PODS,
    ApiError,
    KubeClient,
)
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
# JSON {ModelService: unix time its labels were removed, or null: moving away, its new home not serving yet}
ANN_LEAVING = f"{c.GROUP}/pool-leaving"
# On each pool pod: a digest of its GPU's ConfigMap as the operator last wrote it. Kubelet refreshes a
# mounted ConfigMap only at a pod sync, every `syncFrequency` (1 minute by default) unless the pod
# changes: writing the digest here when the list changes makes that sync come now, so a model added or
# removed reaches the model server at its next poll, not up to a minute later.
ANN_CONFIG_DIGEST = f"{c.GROUP}/pool-config-digest"


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


def _ours(obj: Mapping[str, Any], key: pm.PoolKey, shard: int = 0) -> bool:
    return bool((obj.get("metadata") or {}).get("labels", {}).get(c.LABEL_POOL) == pm.shard_name(key, shard))


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
    homes: Mapping[str, str] = {},
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
        elif autoscale.HISTORY.sized_rate((key.namespace, name)) is None:
            # No decision of this process has read it yet (a restart, before the first metrics tick
            # refills its rise history): the rate in status lacks its headroom, so it moves nothing.
            status = {**status, "requestsPerSecond": None}
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
                # Where it is: on a pool GPU it lives on (listed there, not moving away: a model
                # leaving is still listed until its new home serves, but held without a reading it must
                # stay out); a model listed nowhere by its placement (a list lost or not yet written).
                shared=name in homes
                if name in listed
                else bool(isinstance(placed, dict) and placed.get("shared")),
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
                gpu=homes.get(name),
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


@dataclass
class _Shard:
    """One pool GPU as the API server holds it: its ConfigMap (members and their move state), its
    Deployment and its pods."""

    index: int
    cm: Mapping[str, Any] | None = None
    dep: Mapping[str, Any] | None = None
    listed: dict[str, str] = field(default_factory=dict)  # ModelService -> model name
    # ModelService -> unix time its labels were removed here, or None: moving away, its new home not
    # serving yet (labels stay until it does).
    leaving: dict[str, float | None] = field(default_factory=dict)
    pods: list[Mapping[str, Any]] = field(default_factory=list)

    @property
    def gpu(self) -> str:
        return str(self.index)

    def home(self, name: str) -> bool:
        return name in self.listed and name not in self.leaving


async def _shards(kube: KubeClient, key: pm.PoolKey) -> dict[int, _Shard]:
    """Every shard of the pool that has a ConfigMap, and shard 0 in any case: three LISTs by the pool's
    labels whatever its number of GPUs, and a GET only for an object the LIST did not show (not yet made,
    or an object of that name that is not this pool's, which must not be taken over)."""
    ns = key.namespace
    selector = pm.pool_selector(key)
    out: dict[int, _Shard] = {0: _Shard(0)}
    for cm in await kube.list_objects(CONFIGMAPS, ns, label_selector=selector):
        name = str((cm.get("metadata") or {}).get("name"))
        index = pm.shard_of(key, name.removesuffix("-models"))
        if index is not None and name == pm.config_map_name(key, index):
            out[index] = _Shard(index, cm)
    if out[0].cm is None:  # made before the instance label was on it, or not yet made
        out[0].cm = await kube.get_or_none(CONFIGMAPS, pm.config_map_name(key, 0), ns)
    deps = {
        str((d.get("metadata") or {}).get("name")): d
        for d in await kube.list_objects(DEPLOYMENTS, ns, label_selector=selector)
    }
    pods: dict[str, list[Mapping[str, Any]]] = {}
    for p in await kube.list_objects(PODS, ns, label_selector=selector):
        if not pod_terminating(p):
            pods.setdefault(
                str(((p.get("metadata") or {}).get("labels") or {}).get(c.LABEL_POOL)), []
            ).append(p)
    for shard in out.values():
        name = pm.shard_name(key, shard.index)
        shard.dep = deps.get(name) or await kube.get_or_none(DEPLOYMENTS, name, ns)
        for existing in (shard.cm, shard.dep):
            if existing is not None and not _ours(existing, key, shard.index):
                raise ConflictingObjectError(existing, "an object that is not this pool")
        shard.listed = {str(k): str(v) for k, v in _annotation(shard.cm, ANN_MEMBERS).items()}
        shard.leaving = {
            str(k): float(v) if isinstance(v, int | float) else None
            for k, v in _annotation(shard.cm, ANN_LEAVING).items()
            if str(k) in shard.listed and (v is None or isinstance(v, int | float))
        }
        shard.pods = pods.get(name, [])
    return out


async def _sync_locked(
    kube: KubeClient,
    key: pm.PoolKey,
    config: OperatorConfig,
    placer: pool_rule.Placer,
    rates: Mapping[str, float | None] | None = None,
) -> tuple[dict[str, MemberView], bool]:
    ns = key.namespace
    shards = await _shards(kube, key)
    listed: dict[str, str] = {}
    homes: dict[str, str] = {}  # ModelService -> the pool GPU it lives on (not moving away from)
    for shard in sorted(shards.values(), key=lambda s: s.index):
        for name, model in shard.listed.items():
            listed.setdefault(name, model)
            if shard.home(name):
                homes.setdefault(name, shard.gpu)
    limits = pool_rule.PoolLimits(
        gpu_memory_bytes=int(parse_quantity(config.pool_gpu_memory)), max_gpus=config.pool_max_gpus
    )
    inputs = _inputs(
        await kube.list_objects(MODELSERVICES, ns), key, listed, limits.gpu_memory_bytes, rates, homes
    )
    memory = {cand.service: cand.memory_bytes for cand in inputs.candidates}
    held = {
        s.gpu: sum(memory.get(n, 0) for n in s.leaving) for s in shards.values() if s.leaving
    }  # fmt: skip
    plan = dict(placer(inputs.candidates, limits, held))
    all_pool_pods = {p["metadata"]["name"] for s in shards.values() for p in s.pods}
    now = time.time()
    pending = False
    selected: dict[str, set[str]] = {}
    for shard in shards.values():
        for name in list(shard.listed):
            wants = plan.get(name)
            if name not in inputs.members:  # deleted (its Service went with it): nothing to hand over
                shard.listed.pop(name)
                shard.leaving.pop(name, None)
                continue
            if wants is not None and wants.shared and (wants.gpu or pool_rule.POOL_GPU) == shard.gpu:
                shard.leaving.pop(name, None)
                continue
            released = shard.leaving.get(name)
            if released is None:
                # Its new home (its own replicas, or its new pool GPU's pods) must be a ready endpoint
                # of its Service before this GPU lets go of it.
                if name not in selected:
                    selected[name] = await selected_pods(kube, ns, name)
                if wants is not None and wants.shared:
                    target = shards.get(int(wants.gpu or pool_rule.POOL_GPU))
                    new_home = {p["metadata"]["name"] for p in target.pods} if target else set()
                else:
                    new_home = {p for p in selected[name] if p not in all_pool_pods}
                shard.leaving[name] = now if selected[name] & new_home else None
                pending = True
            elif now - released >= config.pool_unload_grace_s:
                shard.listed.pop(name)
                shard.leaving.pop(name)
            else:
                pending = True
    for name, placement in plan.items():
        if placement.shared:
            index = int(placement.gpu or pool_rule.POOL_GPU)
            shard = shards.setdefault(index, _Shard(index))
            shard.listed.setdefault(name, inputs.members[name].model)
    serving: dict[str, set[str]] = {}
    ready_everywhere = True
    for shard in shards.values():
        members = [
            pm.PoolMember(n, inputs.members[n].uid, inputs.members[n].model, inputs.members[n].storage_uri)
            for n in sorted(shard.listed)
        ]
        # A pod that consolidation moves off its node (reconcile/pool_moves.py) runs beside its
        # replacement until the replacement serves every model it serves.
        moving = any(c.ANN_POOL_MOVE in (p["metadata"].get("annotations") or {}) for p in shard.pods)
        replicas = (2 if moving else 1) if members else 0
        cm_digest = await _apply(
            kube,
            key,
            shard.index,
            config,
            members,
            replicas,
            shard.listed,
            shard.leaving,
            (shard.cm, shard.dep),
        )
        routable = {n: m for n, m in shard.listed.items() if shard.leaving.get(n) is None}
        on_shard, labels_pending = await _label_pods(kube, shard.pods, routable, config, cm_digest)
        for name, pods in on_shard.items():
            serving.setdefault(name, set()).update(pods)
        pending |= labels_pending
        ready_everywhere &= not members or any(pod_ready(p) for p in shard.pods)
    in_pool = {n: s for s in sorted(shards.values(), key=lambda s: -s.index) for n in s.listed}
    views: dict[str, MemberView] = {}
    for name, placement in plan.items():
        if placement.shared:
            where = pm.shard_name(key, int(placement.gpu or pool_rule.POOL_GPU))
        elif name in in_pool:
            where = pm.shard_name(key, in_pool[name].index)
        else:
            where = key.name
        views[name] = MemberView(placement, where, name in in_pool, tuple(sorted(serving.get(name, ()))))
    return views, not pending and ready_everywhere


async def _apply(
    kube: KubeClient,
    key: pm.PoolKey,
    shard: int,
    config: OperatorConfig,
    members: list[pm.PoolMember],
    replicas: int,
    listed: Mapping[str, str],
    leaving: Mapping[str, float | None],
    existing: tuple[Mapping[str, Any] | None, Mapping[str, Any] | None],
) -> str | None:
    """Write the GPU's ConfigMap and Deployment where they changed; the ConfigMap's data digest (None:
    nothing written)."""
    if not members and existing == (None, None):
        return None  # a GPU the pool never used
    cm = pm.pool_config_map(key, members, shard)
    data_digest = digest(cm["data"])[:16]
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
    dep = pm.pool_deployment(key, members, replicas, options, pool_options, shard)
    for obj, live in zip((cm, dep), existing, strict=True):
        if not members:
            # An empty pool GPU keeps its objects at zero replicas with their last owners (the operator
            # deletes nothing; the garbage collector removes them with the last owner), and is not
            # created again once they are gone.
            refs = ((live or {}).get("metadata") or {}).get("ownerReferences")
            if not refs:
                continue
            obj["metadata"]["ownerReferences"] = refs
        await apply_if_changed(kube, obj)
    return data_digest


async def _label_pods(
    kube: KubeClient,
    pods: Sequence[Mapping[str, Any]],
    routable: Mapping[str, str],
    config: OperatorConfig,
    cm_digest: str | None = None,
) -> tuple[dict[str, set[str]], bool]:
    """Label each Ready pool pod for the routable members it reports AVAILABLE and unlabel the rest, and
    mark each pod with its ConfigMap's `cm_digest` (`ANN_CONFIG_DIGEST`); returns the pods serving each
    member, and whether some member is not yet on every Ready pod."""
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
                body.setdefault("metadata", {})["annotations"] = dict(lift["metadata"]["annotations"])
            if cm_digest is not None and (meta.get("annotations") or {}).get(ANN_CONFIG_DIGEST) != cm_digest:
                body.setdefault("metadata", {}).setdefault("annotations", {})[ANN_CONFIG_DIGEST] = cm_digest
            if body:
                try:
                    await kube.patch(PODS, meta["name"], body, meta["namespace"])
                except ApiError as err:
                    if not err.not_found:
                        raise
                    continue  # deleted since the list (a scale-in, a move's retired pod): serves nothing
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
