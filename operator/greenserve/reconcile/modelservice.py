"""Reconcile one ModelService: parse, apply the owned objects, report status. Level-based and idempotent.

Every call recomputes the full intent from the spec and the desired replica count and server-side
applies it, so a restart at any point, a missed event or a hand-edited Deployment all converge to the
same objects. Nothing here keeps state between calls except what is stored in the ModelService status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from greenserve.api import conditions as cond
from greenserve.api.constants import LABEL_MODELSERVICE
from greenserve.api.v1alpha1 import ModelServiceSpec, parse_spec
from greenserve.cluster import events
from greenserve.cluster.cache import ConflictingObjectError, apply_if_changed, ensure_ours
from greenserve.cluster.client import MODELSERVICES, PODS, ApiError, KubeClient
from greenserve.config import OperatorConfig
from greenserve.manifests import builders
from greenserve.manifests.storage import UnsupportedStorageError, resolve
from greenserve.reconcile.status import Observed, ready_condition, status_fields

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


def desired_replicas(spec: ModelServiceSpec, status: Mapping[str, Any]) -> int:
    """The replica count to apply: the autoscaler's last decision (kept in status), within the bounds."""
    current = status.get("desiredReplicas")
    if not isinstance(current, int):
        return builders.initial_replicas(spec)
    return max(spec.scaling.min_replicas, min(spec.scaling.max_replicas, current))


def owner_of(body: Mapping[str, Any]) -> builders.Owner:
    meta = body["metadata"]
    return builders.Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


@dataclass(frozen=True)
class Extra:
    """Status the periodic loop adds to a reconcile: telemetry fields and conditions other than Ready."""

    fields: Mapping[str, Any] = field(default_factory=dict)
    conditions: tuple[tuple[str, bool, str, str], ...] = ()


async def _write_status(
    kube: KubeClient,
    body: Mapping[str, Any],
    fields: dict[str, Any],
    ready: bool,
    reason: str,
    message: str,
    extra: Extra | None = None,
) -> dict[str, Any]:
    """Patch status and post an Event when the Ready condition changes (not on every pass: no storms)."""
    meta = body["metadata"]
    old_status = body.get("status") or {}
    generation = meta.get("generation")
    conditions: list[dict[str, Any]] = [dict(c) for c in old_status.get("conditions") or []]
    if extra is not None:
        fields = {**fields, **extra.fields}
        for ctype, cstatus, creason, cmessage in extra.conditions:
            conditions = cond.set_condition(conditions, ctype, cstatus, creason, cmessage, generation)
    conditions = cond.set_condition(conditions, cond.READY, ready, reason, message, generation)
    new_ready = cond.get_condition(conditions, cond.READY)
    changed = not cond.same_condition(cond.get_condition(old_status.get("conditions"), cond.READY), new_ready)
    status = {**fields, "observedGeneration": generation, "conditions": conditions}
    if any(old_status.get(k) != v for k, v in status.items()):
        try:
            await kube.patch_status(MODELSERVICES, meta["name"], meta["namespace"], status)
        except ApiError as err:
            if not err.not_found:  # deleted meanwhile: nothing to report on
                raise
    if changed:
        await events.post(kube, body, "Normal" if ready else "Warning", reason, message)
    return status


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


async def under_lock(
    kube: KubeClient, body: Mapping[str, Any], step: Callable[[Mapping[str, Any]], Awaitable[Outcome]]
) -> Outcome:
    """Run `step` on the live ModelService while holding its lock; nothing to do once it is gone."""
    meta = body["metadata"]
    async with locked(meta["namespace"], meta["name"]):
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
    out.status = await _write_status(kube, body, {}, False, out.reason, out.message)
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
    replicas = desired if desired is not None else desired_replicas(spec, status)
    replicas = max(spec.scaling.min_replicas, min(spec.scaling.max_replicas, replicas))
    options = builders.BuildOptions(scheduler_name=config.scheduler_name, agent_front=config.agent_front)
    # A consolidation move in flight runs its replacement as one extra replica (see consolidator.py).
    surge = 1 if status.get("move") and replicas > 0 else 0
    try:
        applied: dict[str, Any] | None = None
        objs = builders.objects(owner, spec, replicas + surge, options)
        await ensure_ours(kube, objs)
        for obj in objs:
            result = await apply_if_changed(kube, obj)
            if obj["kind"] == "Deployment":
                applied = result
        pods = await kube.list_objects(
            PODS, owner.namespace, label_selector=f"{LABEL_MODELSERVICE}={owner.name}"
        )
    except ConflictingObjectError as err:
        # Touch nothing of theirs; the change handler retries, so removing the conflict recovers.
        message = f"{err}; rename the ModelService or remove that object"
        log.warning("ModelService %s/%s: %s", owner.namespace, owner.name, message)
        fields = {"desiredReplicas": replicas}
        st = await _write_status(kube, body, fields, False, cond.REASON_CONFLICTING_OBJECT, message)
        return Outcome(False, cond.REASON_CONFLICTING_OBJECT, message, replicas, st, retry_after=30.0)
    except ApiError as err:
        if err.not_found and err.body.get("details", {}).get("kind") == "namespaces":
            raise
        message = f"applying owned objects failed: {err}"
        log.warning("ModelService %s/%s: %s", owner.namespace, owner.name, message)
        fields = {"desiredReplicas": replicas}
        st = await _write_status(kube, body, fields, False, cond.REASON_APPLY_FAILED, message)
        return Outcome(False, cond.REASON_APPLY_FAILED, message, replicas, st, retry_after=30.0)
    await _lift_warmup_protection(kube, pods)
    obs = Observed(desired=replicas, deployment=applied, pods=pods, gpus_per_replica=spec.gpu.count)
    ready, reason, message = ready_condition(obs)
    st = await _write_status(kube, body, status_fields(obs), ready, reason, message, extra)
    return Outcome(ready, reason, message, replicas, st)


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


def deployment_owner(dep: Mapping[str, Any]) -> str | None:
    for ref in dep.get("metadata", {}).get("ownerReferences", []) or []:
        if ref.get("kind") == "ModelService" and ref.get("controller"):
            return str(ref["name"])
    return None
