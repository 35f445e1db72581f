"""Reconcile one ModelService: parse, apply the owned objects, report status. Level-based and idempotent.

Every call recomputes the full intent from the spec and the desired replica count and server-side
applies it, so a restart at any point, a missed event or a hand-edited Deployment all converge to the
same objects. Nothing here keeps state between calls except what is stored in the ModelService status.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import logging
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from greenserve.api import conditions as cond
from greenserve.api.constants import LABEL_MODELSERVICE, LABEL_POOL, TFS_REST_PORT
from greenserve.api.objects import pod_ready, pod_terminating
from greenserve.api.v1alpha1 import (
    Addressable,
    FailureInfo,
    ModelServiceSpec,
    ModelServiceStatus,
    PlacementStatus,
    merge_status,
    parse_spec,
    status_patch,
)
from greenserve.cluster import events
from greenserve.cluster.cache import CACHE, ConflictingObjectError, apply_if_changed, ensure_ours
from greenserve.cluster.cache_reads import CachedWrites, NeedsApiError
from greenserve.cluster.client import MODELSERVICES, PODS, ApiError, KubeClient
from greenserve.config import OperatorConfig
from greenserve.manifests import builders
from greenserve.manifests.pools import pool_key
from greenserve.manifests.storage import UnsupportedStorageError, resolve
from greenserve.policy import energy, pool_rule
from greenserve.reconcile import pools, routing
from greenserve.reconcile.bounds import bounded, replica_cap
from greenserve.reconcile.status import (
    Failure,
    Observed,
    ScaleIntent,
    assess,
    fault_conditions,
    scaling_condition,
    status_fields,
)

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a reconcile did; `retry_after` asks the caller to try again (transient API failure)."""

    ready: bool = False
    reason: str = ""
    message: str = ""
    desired: int | None = None
    status: dict[str, Any] = field(default_factory=dict)
    retry_after: float | None = None


def _validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"spec.{loc}: {e['msg']}")
    return "; ".join(parts)


def desired_replicas(spec: ModelServiceSpec, status: Mapping[str, Any], config: OperatorConfig) -> int:
    """The replica count to apply: the autoscaler's last decision (kept in status), within the bounds."""
    current = status.get("desiredReplicas")
    wanted = current if isinstance(current, int) else builders.initial_replicas(spec)
    return bounded(spec, config, wanted).replicas


def owner_of(body: Mapping[str, Any]) -> builders.Owner:
    meta = body["metadata"]
    return builders.Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def service_url(name: str, namespace: str, config: OperatorConfig) -> str:
    """TF Serving's REST API through the Service, as Knative and KServe publish status.url."""
    return f"http://{name}.{namespace}.svc.{config.cluster_domain}:{TFS_REST_PORT}"


@dataclass(frozen=True)
class Extra:
    """Status the periodic loop adds to a reconcile: telemetry fields, conditions other than Ready, and
    the autoscaler's decision (for the Scaling condition and the rescale Event)."""

    fields: ModelServiceStatus = field(default_factory=ModelServiceStatus)
    conditions: tuple[cond.ConditionUpdate, ...] = ()
    scale: ScaleIntent | None = None


@dataclass(frozen=True)
class SpecWarning:
    reason: str
    message: str


def spec_warnings(spec: ModelServiceSpec, capped_from: int | None, cap: int | None) -> list[SpecWarning]:
    """Risky but legal: accepted, applied, and said once (condition Warnings and one Warning Event each)."""
    found = []
    if any(t.get("operator") == "Exists" and not t.get("key") for t in spec.gpu.tolerations or []):
        found.append(
            SpecWarning(
                "WildcardToleration",
                "gpu.tolerations has operator Exists without a key, which tolerates every taint "
                "(control-plane and NoExecute ones included); name the taint key",
            )
        )
    identity = spec.pod is not None and spec.pod.service_account_name
    if spec.model.storage_uri.startswith("gs://") and not spec.model.credentials_secret and not identity:
        found.append(
            SpecWarning(
                "NoCredentials",
                "neither model.credentialsSecret nor pod.serviceAccountName is set: the model server reads "
                "the bucket with the node's identity only, and a private bucket fails to load",
            )
        )
    if spec.gpu.product and energy.known_gpu_model(spec.gpu.product) is None:
        # Legal (any node label may be selected), but the energy policy would price it silently as
        # another product: its replica cost, idle break-even and scale to zero follow these figures.
        p = energy.gpu_model_for(spec.gpu.product)
        found.append(
            SpecWarning(
                "UnknownGpuProduct",
                f"gpu.product {spec.gpu.product!r} has no power figures in this operator: its energy "
                f"decisions (replica cost, idle break-even, scale to zero) price it as an {p.product} "
                f"({p.bare_w:g} W bare, {p.loaded_idle_w:g} W with a model idle, {p.busy_w:g} W busy); "
                "power and energy read from the GPU are unaffected",
            )
        )
    if capped_from is not None:
        found.append(
            SpecWarning(
                cond.REASON_GPU_CAP,
                f"{capped_from} replicas of {spec.gpu.count} GPUs exceed the operator's "
                f"maxGpusPerModelService; held at {cap} replicas",
            )
        )
    return found


_WARNING_SEP = " | "


def warnings_condition(found: Sequence[SpecWarning]) -> cond.ConditionUpdate:
    if not found:
        return cond.ConditionUpdate(cond.WARNINGS, False, cond.REASON_NO_WARNINGS, "")
    reason = found[0].reason if len(found) == 1 else cond.REASON_MULTIPLE_WARNINGS
    message = _WARNING_SEP.join(f"{w.reason}: {w.message}" for w in found)
    return cond.ConditionUpdate(cond.WARNINGS, True, reason, message)


def _warning_reasons(condition: Mapping[str, Any] | None) -> set[str]:
    """The warning reasons a Warnings condition carries (as `warnings_condition` wrote them)."""
    if condition is None or condition.get("status") != "True":
        return set()
    parts = str(condition.get("message") or "").split(_WARNING_SEP)
    return {p.split(": ", 1)[0] for p in parts if ": " in p}


@dataclass(frozen=True)
class _Event:
    type: events.EventType
    reason: str
    message: str


def _events_for(
    old: Sequence[Mapping[str, Any]] | None,
    new: Sequence[Mapping[str, Any]],
    fresh_warnings: Sequence[SpecWarning],
    scale: ScaleIntent | None,
) -> list[_Event]:
    """Events for what changed, never for what merely persists: one Warning per distinct fault (a new
    Degraded reason) and per new spec warning, Normal for a rescale and for becoming Ready."""
    out: list[_Event] = []
    old_deg, new_deg = cond.get_condition(old, cond.DEGRADED), cond.get_condition(new, cond.DEGRADED)
    if new_deg is not None and new_deg.get("status") == "True":
        was = old_deg.get("reason") if old_deg is not None and old_deg.get("status") == "True" else None
        if was != new_deg.get("reason"):
            out.append(_Event("Warning", str(new_deg["reason"]), str(new_deg.get("message") or "")))
    for w in fresh_warnings:
        out.append(_Event("Warning", w.reason, w.message))
    if scale is not None and scale.changed:
        message = f"Scaled from {scale.previous} to {scale.desired} replicas: {scale.message}"
        out.append(_Event("Normal", cond.EVENT_RESCALE, message))
    old_ready, new_ready = cond.get_condition(old, cond.READY), cond.get_condition(new, cond.READY)
    became_ready = old_ready is None or old_ready.get("status") != "True"
    if new_ready is not None and new_ready.get("status") == "True" and became_ready:
        out.append(_Event("Normal", str(new_ready["reason"]), str(new_ready.get("message") or "")))
    return out


def _failure_info(old: Mapping[str, Any] | None, fault: Failure | None, now: str) -> FailureInfo | None:
    """lastFailureInfo for a fault seen now; its time stays that of the first sighting."""
    if fault is None:
        return None
    same = old is not None and old.get("reason") == fault.reason and old.get("message") == fault.message
    return FailureInfo(
        reason=fault.reason,
        message=fault.message,
        pod=fault.pod,
        container=fault.container,
        exit_code=fault.exit_code,
        time=str(old.get("time")) if same and old is not None and old.get("time") else now,
    )


async def _write_status(
    kube: KubeClient,
    body: Mapping[str, Any],
    update: ModelServiceStatus,
    conditions: Sequence[cond.ConditionUpdate],
    fault: Failure | None = None,
    warnings: Sequence[SpecWarning] = (),
    scale: ScaleIntent | None = None,
) -> dict[str, Any]:
    """Patch status from the typed model (only when something changed) and post the Events the change
    calls for (see `_events_for`): never one per pass, so no storms."""
    meta = body["metadata"]
    old_status: Mapping[str, Any] = body.get("status") or {}
    generation = meta.get("generation")
    old_conditions = old_status.get("conditions") or []
    # Every condition kept from an earlier pass is re-stamped with this generation: this pass judged
    # the current spec, and the conditions it does not recompute (the tick's MetricsAvailable and
    # Scaling) still hold for it. One left at an older generation would be written by the next resync,
    # a GET and a status PATCH per ModelService long after a fleet-wide spec change.
    new_conditions: list[dict[str, Any]] = cond.restamped(old_conditions, generation)
    for c in (*conditions, warnings_condition(warnings)):
        new_conditions = cond.set_condition(new_conditions, c, generation)
    extra: dict[str, Any] = {"observed_generation": generation, "conditions": new_conditions}
    info = _failure_info(old_status.get("lastFailureInfo"), fault, cond.now_rfc3339())
    if info is not None:
        extra["last_failure_info"] = info
    merged = merge_status(update, ModelServiceStatus(**extra))
    patch = status_patch(merged, old_status)
    changed = {k: v for k, v in patch.items() if old_status.get(k) != v}
    if changed:
        try:
            written = await kube.patch_status(MODELSERVICES, meta["name"], meta["namespace"], changed)
        except ApiError as err:
            if not err.not_found:  # deleted meanwhile: nothing to report on
                raise
            return patch
        # The cache knows our own write before its watch event comes: the next refresh from the cache
        # (`refresh_soon`) starts from it instead of a resourceVersion the API server has moved past.
        if CACHE.enabled:
            CACHE.observe_msvc(written)
    old_warnings = _warning_reasons(cond.get_condition(old_conditions, cond.WARNINGS))
    fresh = [w for w in warnings if w.reason not in old_warnings]
    for event in _events_for(old_conditions, new_conditions, fresh, scale):
        await events.post(kube, body, event.type, event.reason, event.message)
    return patch


@dataclass
class _Held:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # tasks holding or waiting for the lock


_LOCKS: dict[tuple[str, str], _Held] = {}


@asynccontextmanager
async def locked(namespace: str, name: str) -> AsyncIterator[None]:
    """One ModelService is reconciled by one task at a time. The periodic loop, kopf's handlers, the
    Deployment watch and the consolidator all end in a reconcile; interleaved, one that read the status
    before another wrote a new replica count would apply the old count back. An entry lives only while
    some task holds or awaits it (single-threaded asyncio: no gap between the count and the removal), so
    the map does not grow with every ModelService the process has seen."""
    key = (namespace, name)
    held = _LOCKS.setdefault(key, _Held())
    held.users += 1
    try:
        async with held.lock:
            yield
    finally:
        held.users -= 1
        if held.users == 0 and _LOCKS.get(key) is held:
            del _LOCKS[key]


def locks_in_use() -> int:
    return len(_LOCKS)


def busy(namespace: str, name: str) -> bool:
    """Some task holds or awaits this ModelService's lock."""
    return (namespace, name) in _LOCKS


BUSY = "Busy"  # an Outcome's reason: bookkeeping skipped a ModelService another task is reconciling


#: At most this many reconciles work at once (each after its ModelService's lock). A bulk create or a
#: restart of 1,000 ModelServices otherwise starts 1,000 at once: each holds its live body, its built
#: objects and its pod list while its requests queue behind all the others' (the operator's peak
#: memory), and the API server, executing all of them at once, answers each slower: at 1,000 on the
#: 2-core harness it executed 80 of the operator's requests at a time and 40 applies timed out after 30 s.
#: Its throughput does not grow with the number in flight; the operator's memory does.
MAX_CONCURRENT = 16


#: Priorities of a reconcile's wait for a slot (`Slots`), most urgent first.
#: An owned object's event: status catches up with what already happened (a replica became Ready).
OBSERVED = 0
#: A change to make: a spec edit or a creation (kopf's handlers), a scale decision.
CHANGE = 1
#: The metrics tick's bookkeeping: its first look at a new ModelService, conditions and figures.
BOOKKEEPING = 2


class Slots:
    """`MAX_CONCURRENT` reconcile slots, handed to the most urgent waiter first (FIFO within a priority).

    In a bulk create of 1,000 ModelServices, kopf's creation handlers and the metrics tick's first looks
    all queue for the slots at once. First come, first served, a Deployment's "replica Ready" waited
    behind every one of them before its ModelService could say Ready; its refresh is a status write or
    two, a creation ten requests."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque(), deque())

    @asynccontextmanager
    async def hold(self, priority: int = CHANGE) -> AsyncIterator[None]:
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        if self._free > 0 and not any(self._waiting):
            self._free -= 1
            return
        queue = self._waiting[priority]
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot as it was cancelled: pass it on
            elif waiter in queue:
                queue.remove(waiter)
            raise

    def _release(self) -> None:
        for queue in self._waiting:
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the slot passes straight to the waiter
                    return
        self._free += 1


_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Slots] = weakref.WeakKeyDictionary()


def slot(priority: int = CHANGE) -> AbstractAsyncContextManager[None]:
    # One per event loop: a waiter's future belongs to the loop it waits in (tests run several loops).
    loop = asyncio.get_running_loop()
    slots = _SLOTS.get(loop)
    if slots is None:
        slots = _SLOTS[loop] = Slots(MAX_CONCURRENT)
    return slots.hold(priority)


async def live_body(kube: KubeClient, body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ModelService as the API server has it now (kopf's cached body may predate our own status
    writes); None once it is gone or being deleted."""
    meta = body["metadata"]
    fresh = await kube.get_or_none(MODELSERVICES, meta["name"], meta["namespace"])
    if fresh is None or fresh["metadata"].get("deletionTimestamp"):
        return None
    return fresh


async def reconcile(
    kube: KubeClient,
    body: Mapping[str, Any],
    config: OperatorConfig,
    desired: int | None = None,
    extra: Extra | None = None,
) -> Outcome:
    """Bring the owned objects in line with the spec and report status, from the live object, under the
    ModelService's lock.

    `desired` overrides the replica count (the autoscaler passes its decision); otherwise the count
    stored in status is kept.
    """
    return await under_lock(kube, body, lambda live: reconcile_locked(kube, live, config, desired, extra))


async def reconcile_change(kube: KubeClient, body: Mapping[str, Any], config: OperatorConfig) -> Outcome:
    """`reconcile` for kopf's creation, spec-change and resume handler (handlers/modelservice.py).

    A spec change that moves no owned object (scaling bounds, a target, the energy policy) is settled
    from the watch-fed cache, which holds the event's version of the ModelService or a newer one: one
    status write guarded by the cached resourceVersion and nothing else (see `refresh_from_cache`). At
    a change of 1,000 ModelServices the GET before each status write was a third of the operator's
    requests. Anything else (an apply, a read the cache cannot answer, a refused write) is reconciled
    from a fresh read, as are ModelServices no reconcile has written status for (they have objects to
    apply)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    async with locked(namespace, name), slot(CHANGE):
        cached = CACHE.msvcs.get((namespace, name)) if CACHE.enabled else None
        written = cached is not None and (cached.get("status") or {}).get("observedGeneration") is not None
        if cached is not None and written and _as_new_as(cached, meta.get("resourceVersion")):
            settled = await _settle_from_cache(kube, namespace, name, config)
            if settled is not None:
                return settled
        return await _on_live(kube, body, lambda live: reconcile_locked(kube, live, config))


def _as_new_as(body: Mapping[str, Any], resource_version: object) -> bool:
    """`body` is the version `resource_version` names or a later one (resourceVersions as integers, as
    cluster/cache.py compares them; anything else is not known to be as new)."""
    try:
        return int(body["metadata"]["resourceVersion"]) >= int(str(resource_version))
    except (KeyError, TypeError, ValueError):
        return False


async def under_lock(
    kube: KubeClient,
    body: Mapping[str, Any],
    step: Callable[[Mapping[str, Any]], Awaitable[Outcome]],
    priority: int = CHANGE,
    skip_busy: bool = False,
    cached: Callable[[], Awaitable[Outcome | None]] | None = None,
) -> Outcome:
    """Run `step` on the live ModelService while holding its lock; nothing to do once it is gone.
    `priority`: see `Slots`. `skip_busy` (the metrics tick): take a slot first and skip a ModelService
    that another task is reconciling or waiting to (the Outcome's reason is `BUSY`). `cached`: tried
    first under the lock, the step run from the watch-fed cache (see `refresh_from_cache`); its
    Outcome when it settled the step, else None and `step` runs on a fresh read."""
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    if skip_busy:
        # The tick never holds a lock while it waits for a slot: a more urgent reconcile of the same
        # ModelService (a replica became Ready) would wait behind it for that lock. At a bulk create
        # the tick's looks held 200 locks for minutes while creations took every slot, and those
        # ModelServices stayed Ready=False with their pods Ready. The slot first, then the lock if
        # nobody holds or awaits it (no await in between); the next tick decides again.
        async with slot(priority):
            if busy(*key):
                return Outcome(False, BUSY, "another reconcile of this ModelService is under way")
            async with locked(*key):
                return await _on_live(kube, body, step, cached)
    # The lock first, then a slot: a task holding a slot never waits for another's lock.
    async with locked(*key), slot(priority):
        return await _on_live(kube, body, step, cached)


async def _on_live(
    kube: KubeClient,
    body: Mapping[str, Any],
    step: Callable[[Mapping[str, Any]], Awaitable[Outcome]],
    cached: Callable[[], Awaitable[Outcome | None]] | None = None,
) -> Outcome:
    settled = await cached() if cached is not None else None
    if settled is not None:
        return settled
    live = await live_body(kube, body)
    if live is None:
        return Outcome(False, "Deleted", "the ModelService is gone or being deleted")
    return await step(live)


async def reconcile_locked(
    kube: KubeClient,
    body: Mapping[str, Any],
    config: OperatorConfig,
    desired: int | None = None,
    extra: Extra | None = None,
) -> Outcome:
    """`reconcile` for a caller that already holds `locked` and has read the live body."""
    meta = body["metadata"]
    try:
        spec = parse_spec(dict(body.get("spec") or {}))
        resolve(spec.model.storage_uri)
    except ValidationError as err:
        out = Outcome(False, cond.REASON_INVALID_SPEC, _validation_message(err))
    except UnsupportedStorageError as err:
        out = Outcome(False, cond.REASON_UNSUPPORTED_STORAGE, str(err))
    else:
        return await _reconcile_valid(kube, body, spec, config, desired, extra)
    # Invalid specs are terminal until the user edits them: report, keep what is already running, no retry.
    log.warning("ModelService %s/%s: %s: %s", meta["namespace"], meta["name"], out.reason, out.message)
    conditions = fault_conditions(out.reason, out.message)
    fault = Failure(out.reason, out.message)
    out.status = await _write_status(kube, body, ModelServiceStatus(), conditions, fault)
    return out


async def _reconcile_valid(
    kube: KubeClient,
    body: Mapping[str, Any],
    spec: ModelServiceSpec,
    config: OperatorConfig,
    desired: int | None,
    extra: Extra | None = None,
) -> Outcome:
    owner = owner_of(body)
    status = body.get("status") or {}
    limit = bounded(spec, config, desired if desired is not None else desired_replicas(spec, status, config))
    replicas = limit.replicas
    options = builders.BuildOptions(scheduler_name=config.scheduler_name, agent_front=config.agent_front)
    # A consolidation move in flight runs its replacement as one extra replica (see consolidator.py).
    surge = 1 if status.get("move") and replicas > 0 else 0
    url = service_url(owner.name, owner.namespace, config)
    fields = ModelServiceStatus(url=url, address=Addressable(url=url))
    if extra is not None:
        fields = merge_status(extra.fields, fields)
    warnings = spec_warnings(spec, limit.capped_from, replica_cap(spec, config))
    zero_capable = routing.routed(spec, status, config)
    view: pools.MemberView | None = None
    try:
        if pools.participates(spec, status):
            # The tick's fresh rate (its write follows this pass): a crossing it saw moves the model now.
            rates = {owner.name: extra.fields.requests_per_second} if extra is not None else None
            view, replicas = await _pool_placement(kube, owner, spec, config, replicas, rates)
            surge = surge if replicas > 0 else 0
            fields = merge_status(fields, ModelServiceStatus(placement=_placement_status(view)))
        elif status.get("placement") is not None:
            # Out of its pool for good (or it may no longer share): on its own replicas, and why.
            why = pools.blocked(spec) or "stays on its own replicas"
            reason = pool_rule.EXCLUSIVE if why == pool_rule.EXCLUSIVE else pool_rule.NOT_SHAREABLE
            placed = PlacementStatus(shared=False, reason=reason, message=why)
            fields = merge_status(fields, ModelServiceStatus(placement=placed))
        applied: dict[str, Any] | None = None
        objs = builders.objects(
            owner,
            spec,
            replicas + surge,
            options,
            routed=view is not None and view.routed,
            zero_capable=zero_capable,
        )
        await ensure_ours(kube, objs)
        for obj in objs:
            result = await apply_if_changed(kube, obj)
            if obj["kind"] == "Deployment":
                applied = result
        pods = CACHE.pods_agreeing(owner.namespace, owner.name, applied)
        if pods is None:
            pods = await kube.list_objects(
                PODS, owner.namespace, label_selector=f"{LABEL_MODELSERVICE}={owner.name}"
            )
        if zero_capable:
            route = await routing.apply_route(
                kube,
                owner,
                spec,
                status,
                pods,
                config,
                pool_routed=view is not None and view.routed,
                serving_elsewhere=view is not None and bool(view.serving_pods),
            )
            fields = merge_status(fields, ModelServiceStatus(routing=route.routing))
            if not route.settled:
                refresh_later(kube, owner.namespace, owner.name, config, ROUTE_RETRY_S)
    except ConflictingObjectError as err:
        # Touch nothing of theirs; the change handler retries, so removing the conflict recovers.
        message = f"{err}; rename the ModelService or remove that object"
        log.warning("ModelService %s/%s: %s", owner.namespace, owner.name, message)
        fields = merge_status(fields, ModelServiceStatus(desired_replicas=replicas))
        reason = cond.REASON_CONFLICTING_OBJECT
        st = await _write_status(
            kube, body, fields, fault_conditions(reason, message), Failure(reason, message), warnings
        )
        return Outcome(False, reason, message, replicas, st, retry_after=30.0)
    except ApiError as err:
        if err.not_found and err.body.get("details", {}).get("kind") == "namespaces":
            raise
        message = f"applying owned objects failed: {err}"
        log.warning("ModelService %s/%s: %s", owner.namespace, owner.name, message)
        fields = merge_status(fields, ModelServiceStatus(desired_replicas=replicas))
        failed = fault_conditions(cond.REASON_APPLY_FAILED, message)
        st = await _write_status(
            kube, body, fields, failed, Failure(cond.REASON_APPLY_FAILED, message), warnings
        )
        return Outcome(False, cond.REASON_APPLY_FAILED, message, replicas, st, retry_after=30.0)
    obs = Observed(
        desired=replicas,
        deployment=applied,
        pods=pods,
        gpus_per_replica=spec.gpu.count,
        surge=surge,
        now=dt.datetime.now(dt.UTC),
    )
    found = assess(obs)
    conditions: list[cond.ConditionUpdate] = [*found.conditions]
    fault = found.fault
    if limit.capped_from is not None and replicas == 0:
        # Not even one replica fits under the cap: this is a fault, not a scale to zero.
        message = f"one replica needs {spec.gpu.count} GPUs, more than maxGpusPerModelService allows"
        conditions = [*fault_conditions(cond.REASON_GPU_CAP, message)]
        fault = Failure(cond.REASON_GPU_CAP, message)
    scale = extra.scale if extra is not None else None
    if view is not None and view.placement.shared:
        # Served from the pool: the autoscaler's count does not apply to the pool's pods.
        scale = None
        if replicas == 0:
            conditions[0] = _pool_ready(view)
    stored = status.get("desiredReplicas")
    if scale is None and isinstance(stored, int) and stored != replicas:
        # A spec edit moved the bounds (or the cap) across the stored count: a rescale like any other.
        bounds = f"minReplicas {spec.scaling.min_replicas}, maxReplicas {spec.scaling.max_replicas}"
        scale = ScaleIntent(stored, replicas, "SpecBounds", f"within {bounds}", limit.capped_from)
    previous_scaling = cond.get_condition(status.get("conditions"), cond.SCALING)
    if scale is None and cond.is_true(status.get("conditions"), cond.SCALING):
        # No decision this pass (a Deployment event): still complete a scale the Deployment has reached.
        scale = ScaleIntent(replicas, replicas, cond.REASON_SCALE_COMPLETE, f"{replicas} replicas")
    if scale is not None and scale.changed:
        fields = merge_status(fields, ModelServiceStatus(last_scale_time=cond.now_rfc3339()))
    if extra is not None:
        conditions.extend(extra.conditions)
    if scale is not None:
        conditions.append(scaling_condition(scale, previous_scaling, obs, found.current_ready))
    st = await _write_status(
        kube, body, merge_status(fields, status_fields(obs)), conditions, fault, warnings, scale
    )
    # After the status write, so that a replica becoming Ready shows in status without waiting for
    # this request too.
    await _lift_warmup_protection(kube, pods)
    ready = conditions[0]
    return Outcome(ready.status is True, ready.reason, ready.message, replicas, st)


def _placement_status(view: pools.MemberView) -> PlacementStatus:
    p = view.placement
    # `pool` stays set while the pool still holds the model (a move out in progress): the next pass then
    # still consults the pool, whatever the spec now says.
    pool = view.pool if p.shared or view.in_pool or view.serving_pods else None
    return PlacementStatus(shared=p.shared, pool=pool, reason=p.reason, message=p.message)


def _pool_ready(view: pools.MemberView) -> cond.ConditionUpdate:
    if view.serving_pods:
        n = len(view.serving_pods)
        message = f"served from the shared pool {view.pool} ({n} pod{'s' if n > 1 else ''})"
        return cond.ConditionUpdate(cond.READY, True, cond.REASON_SHARED_POOL, message)
    message = f"loading in the shared pool {view.pool}"
    return cond.ConditionUpdate(cond.READY, False, cond.REASON_LOADING_IN_POOL, message)


async def _pool_placement(
    kube: KubeClient,
    owner: builders.Owner,
    spec: ModelServiceSpec,
    config: OperatorConfig,
    replicas: int,
    rates: Mapping[str, float | None] | None = None,
) -> tuple[pools.MemberView, int]:
    """Sync the ModelService's pool and decide its own replica count (see reconcile/pools.py): zero
    while the pool serves it, once a pool pod is a ready endpoint of its Service (or it has no ready
    replica of its own to hand over from); at least one while it leaves the pool. Its own replicas carry
    the routing label while the Service selects by it."""

    def changed(name: str) -> None:
        # This ModelService too: the pool's background resync (which keeps this callback) may be the
        # one that finishes its handover, long after this reconcile (seen on the real node: the model
        # left the pool, and its Service kept the routing selector until the next full resync).
        refresh_soon(kube, owner.namespace, name, config)

    views = await pools.sync_pool(kube, pool_key(owner.namespace, spec), config, changed, rates=rates)
    view = views.get(owner.name)
    if view is None:
        # Being deleted (the pool leaves it out; seen on the real node as its namespace went): no move
        # for it any more, its objects go with it.
        gone = pool_rule.Placement(False, pool_rule.NOT_SHAREABLE, "the ModelService is being deleted")
        return pools.MemberView(gone, pool_key(owner.namespace, spec).name, False), replicas
    own = [
        p
        for p in await kube.list_objects(
            PODS, owner.namespace, label_selector=f"{LABEL_MODELSERVICE}={owner.name}"
        )
        if not pod_terminating(p)
    ]
    if view.placement.shared:
        own_ready = [p for p in own if pod_ready(p)]
        selected = await pools.selected_pods(kube, owner.namespace, owner.name) if own_ready else set()
        if not own_ready or selected & set(view.serving_pods):
            replicas = 0
    elif view.in_pool or view.serving_pods:
        replicas = max(1, replicas)
    if view.routed:
        await pools.label_own_replicas(kube, own, owner.name)
    return view, replicas


async def _lift_warmup_protection(kube: KubeClient, pods: list[dict[str, Any]]) -> None:
    """Ready replicas are no longer warming: node autoscalers may move them again (level-based: every
    pass lifts what is still set, so a restart between Ready and this patch loses nothing)."""
    for pod in pods:
        patch = builders.lift_warmup_protection(pod)
        if patch is None or pod["metadata"].get("deletionTimestamp"):
            continue
        try:
            await kube.patch(PODS, pod["metadata"]["name"], patch, pod["metadata"]["namespace"])
        except ApiError as err:
            if not err.not_found:
                raise


async def refresh_status(
    kube: KubeClient, namespace: str, name: str, config: OperatorConfig
) -> Outcome | None:
    """Re-run reconcile from the live ModelService (used when an owned Deployment changes)."""
    return await reconcile(kube, {"metadata": {"name": name, "namespace": namespace}}, config)


_PENDING: set[tuple[str, str]] = set()  # refreshes scheduled and not started yet
_TASKS: set[asyncio.Task[None]] = set()  # strong references until done


def refresh_soon(kube: KubeClient, namespace: str, name: str, config: OperatorConfig) -> bool:
    """Schedule `refresh_status` of one ModelService in the background, unless one is already waiting
    to start; True when this call scheduled it.

    For watch events of owned objects. kopf gives an object's events to its handlers one at a time: a
    handler that waited there for its turn at a reconcile slot kept every newer event of its object
    queued inside kopf, each a full body (a bulk create of 1,000 grew the operator past 270 MB with
    Deployments' rollout events). The refresh reads everything when it starts, so the events that
    arrive before it starts need no refresh of their own; one arriving after it started schedules the
    next. It reconciles from the cache first (`refresh_from_cache`), from a fresh read when that cannot
    settle it. A failure is logged: the metrics tick's resync is the safety net, as for any missed event."""
    key = (namespace, name)
    if key in _PENDING:
        return False
    _PENDING.add(key)

    async def run() -> None:
        try:
            async with locked(namespace, name), slot(OBSERVED):
                _PENDING.discard(key)
                if await refresh_from_cache(kube, namespace, name, config):
                    return
                live = await live_body(kube, {"metadata": {"name": name, "namespace": namespace}})
                if live is not None:
                    await reconcile_locked(kube, live, config)
        except Exception:
            log.exception("refreshing ModelService %s/%s failed", namespace, name)
        finally:
            _PENDING.discard(key)

    task = asyncio.get_running_loop().create_task(run())
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    return True


#: A routing switch waiting for the EndpointSlice controller is looked at again after this long.
ROUTE_RETRY_S = 2.0


def refresh_later(
    kube: KubeClient, namespace: str, name: str, config: OperatorConfig, delay_s: float
) -> None:
    """`refresh_soon` after `delay_s` (a routing switch waits for the EndpointSlice controller, whose
    slices greenserve does not watch)."""

    async def run() -> None:
        await asyncio.sleep(delay_s)
        refresh_soon(kube, namespace, name, config)

    task = asyncio.get_running_loop().create_task(run())
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


async def refresh_from_cache(kube: KubeClient, namespace: str, name: str, config: OperatorConfig) -> bool:
    """The reconcile of an owned object's event (a replica became Ready, a rollout moved), from the
    watch-fed cache: True when it is done, False when the caller must reconcile from a fresh read.
    Under the ModelService's lock.

    At a bulk create every Deployment's status events each cost a GET of the ModelService before its
    status write, thousands queued behind one another. From the cache, the reconcile sends only its
    writes (cluster/cache_reads.py `CachedWrites`), the status patch guarded by the cached
    resourceVersion: the API server refuses it (409) unless the cache held the current ModelService,
    and then nothing is sent and the fresh read follows. One that would apply an owned object, or needs
    a read the cache cannot answer, is not settled here either."""
    return await _settle_from_cache(kube, namespace, name, config) is not None


async def _settle_from_cache(
    kube: KubeClient, namespace: str, name: str, config: OperatorConfig
) -> Outcome | None:
    """`refresh_from_cache`, returning the reconcile's Outcome when the cache settled it, else None."""
    body = CACHE.msvcs.get((namespace, name)) if CACHE.enabled else None
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    dry = CachedWrites(CACHE)
    try:
        outcome = await reconcile_locked(dry, copy.deepcopy(body), config)
    except NeedsApiError:
        return None
    return outcome if await dry.replay(kube, body["metadata"]) else None


def deployment_owner(dep: Mapping[str, Any]) -> str | None:
    for ref in dep.get("metadata", {}).get("ownerReferences", []) or []:
        if ref.get("kind") == "ModelService" and ref.get("controller"):
            return str(ref["name"])
    return None


def pool_members(dep: Mapping[str, Any]) -> list[str]:
    """The member ModelServices of a shared pool's Deployment (none for any other Deployment)."""
    meta = dep.get("metadata") or {}
    if LABEL_POOL not in (meta.get("labels") or {}):
        return []
    return [str(r["name"]) for r in meta.get("ownerReferences") or [] if r.get("kind") == "ModelService"]


def pool_members_beside(deployments: Iterable[Mapping[str, Any]], namespace: str, name: str) -> list[str]:
    """The other members of every shared pool that ModelService `name` is a member of, from the pools'
    Deployments (`deployments`: the cache's owned objects): the ones whose reconcile re-plans a pool
    that `name` leaves."""
    out: list[str] = []
    for dep in deployments:
        if dep.get("kind") != "Deployment" or (dep.get("metadata") or {}).get("namespace") != namespace:
            continue
        members = pool_members(dep)
        if name in members:
            out.extend(m for m in members if m != name and m not in out)
    return out
