"""The metrics tick: one pass over the whole fleet, acting only where something changed.

Every `reconcile_interval_s` the tick reads the metrics of all ModelServices at once (one fleet read,
see metrics/base.py `fleet_metrics`), then decides for each from the watch-fed cache (cluster/cache.py),
without a request to the API server. It acts (lock, apply what changed, write status) only when the step
would change something that matters now:

* the replica count (from a fresh read: it applies the Deployment);
* the state or reason of the Scaling or MetricsAvailable condition, or a live figure appearing or
  disappearing (fresh vs stale metrics): the step runs from the cache and sends its status write alone,
  guarded by the cached resourceVersion (a refused one, or a step that would apply something, runs
  again from a fresh read);
* the slowly moving figures (power, energy, CO2e, request rate) once `status_refresh_s` has passed since
  this ModelService's last status write, so noise never forces a write every tick; that write is one
  status patch guarded by the cached resourceVersion, nothing else;
* the safety-net resync, every `full_resync_s` per ModelService (jittered): the whole level-based
  reconcile, run first against the cache alone (cluster/cache_reads.py). Only when that run would apply
  or write something (or needs a read the cache cannot answer) does the real one run, from a fresh read;
  a resync that finds nothing to do sends nothing.

The autoscaler's stabilisation state lives in memory between writes and is written with them. After a
restart it is loaded from status with every held recommendation re-stamped to the load time: status may
lag memory by up to `status_refresh_s`, and re-stamping can only delay a scale-down (by at most one
stabilisation window after a restart), never bring one forward. Energy accumulates from the counters
last written to status, so deferring a write loses no energy.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from greenserve.api import conditions as cond
from greenserve.api import constants as c
from greenserve.api.objects import activation_demand
from greenserve.api.quantity import parse_quantity
from greenserve.api.v1alpha1 import (
    ModelServiceSpec,
    ModelServiceStatus,
    Routing,
    merge_status,
    parse_spec,
    status_patch,
)
from greenserve.cluster.cache import CACHE, ClusterCache, SvcKey
from greenserve.cluster.cache_reads import CachedWrites, CacheReads, NeedsApiError
from greenserve.cluster.client import MODELSERVICES, ApiError
from greenserve.cluster.informer import ClusterView
from greenserve.manifests.builders import node_selector
from greenserve.metrics.pooled import combine
from greenserve.metrics.types import PodRef, PooledModel, ServiceMetrics
from greenserve.reconcile import autoscale, give_way, loop, pools, routing, telemetry
from greenserve.reconcile import modelservice as rec

log = logging.getLogger(__name__)

# Figures whose appearance or disappearance (fresh vs stale metrics) is written at once.
_LIVE = ("powerWatts", "requestsPerSecond", "inflightRequests", "joulesPerRequest")


@dataclass
class TickState:
    """In-memory bookkeeping of the tick, per ModelService."""

    scaler: dict[SvcKey, dict[str, Any]] = field(default_factory=dict)
    last_write: dict[SvcKey, float] = field(default_factory=dict)
    next_resync: dict[SvcKey, float] = field(default_factory=dict)
    backfilled: set[SvcKey] = field(default_factory=set)  # rise histories refilled from the source
    acted: int = 0
    refreshed: int = 0
    held: int = 0
    resynced: int = 0  # resyncs the cache could not settle (run for real)
    resynced_from_cache: int = 0  # resyncs that found nothing to send


def restamped(raw: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    """The stabilisation state loaded from status after a restart, every held recommendation counted
    from `now` (see the module docstring)."""
    state = dict(raw or {})
    recs = state.get("recommendations")
    if isinstance(recs, list):
        state["recommendations"] = [[now, r[1]] for r in recs if isinstance(r, list | tuple) and len(r) == 2]
    return state


def _condition_changed(status: Mapping[str, Any], type_: str, value: bool, reason: str) -> bool:
    old = cond.get_condition(status.get("conditions"), type_)
    return old is None or old.get("status") != ("True" if value else "False") or old.get("reason") != reason


def pods_complete(cache: ClusterCache, key: SvcKey) -> bool:
    """The cache has every pod the Deployment counts (after a restart the pod watch may still be
    listing): until then the tick holds this ModelService rather than read a partial fleet."""
    dep = cache.owned.get(("Deployment", key[0], key[1]))
    if dep is None:
        return True  # no Deployment yet (or not seen yet): nothing to under-count
    want = int(((dep.get("status") or {}).get("readyReplicas")) or 0)
    have = sum(1 for p in cache.pods_of(*key) if not p["metadata"].get("deletionTimestamp"))
    return have >= want


def served_from_pool(status: Mapping[str, Any]) -> bool:
    """Placed in a shared pool: the pool's pods serve it, and the autoscaler's count and Scaling
    condition do not apply to them (reconcile/modelservice.py keeps its own replicas at zero)."""
    return bool((status.get("placement") or {}).get("shared"))


def needs_action(
    status: Mapping[str, Any],
    tele: telemetry.Telemetry,
    decision: autoscale.Decision,
) -> str | None:
    """Why the step must be written now, or None when nothing that matters now would change."""
    if served_from_pool(status):
        return _figures_changed(status, tele)
    if status.get("desiredReplicas") != decision.desired:
        return "replicas"
    # While Scaling is True (a count the Deployment has not reached yet), the Deployment's own watch
    # events complete it (reconcile/status.py scaling_condition); at rest it carries the policy's reason.
    old = cond.get_condition(status.get("conditions"), cond.SCALING)
    moving = (
        old is not None
        and old.get("status") == "True"
        and old.get("reason") in (cond.REASON_SCALE_UP, cond.REASON_SCALE_DOWN)
    )
    intent = decision.intent
    reason = cond.REASON_GPU_CAP if intent.capped_from is not None else intent.reason
    if not moving and _condition_changed(status, cond.SCALING, False, reason):
        return "scaling condition"
    return _figures_changed(status, tele)


def _figures_changed(status: Mapping[str, Any], tele: telemetry.Telemetry) -> str | None:
    if _condition_changed(status, telemetry.METRICS_AVAILABLE, tele.fresh, tele.reason):
        return "metrics condition"
    fields = status_patch(tele.fields, status)
    for key in _LIVE:
        if key in fields and (fields[key] is None) != (status.get(key) is None):
            return "live figures"
    return None


@dataclass(frozen=True)
class Assessed:
    """One ModelService's step as the tick decided it, before it acts."""

    spec: ModelServiceSpec
    status: dict[str, Any]
    telemetry: telemetry.Telemetry
    decision: autoscale.Decision


class Ticker:
    def __init__(
        self,
        deps: loop.LoopDeps,
        cache: ClusterCache = CACHE,
        state: TickState | None = None,
        view: ClusterView | None = None,
    ):
        self.deps = deps
        self.cache = cache
        self.state = state or TickState()
        # GPU nodes and pods (consolidation's informers): what held replicas give way on; None: they don't.
        self.view = view

    async def _readings(self, keys: list[SvcKey]) -> dict[SvcKey, ServiceMetrics | None]:
        source = self.deps.source
        if source is None:
            return dict.fromkeys(keys)
        pods: dict[SvcKey, list[PodRef]] = {k: loop.pod_refs(self.cache.pods_of(*k)) for k in keys}
        pooled = self._pooled(keys)
        try:
            got = await source.fleet_metrics(pods)
        except Exception as err:  # a broken source must never stop the tick; it reads as "no metrics"
            log.warning("fleet metrics unavailable: %s", err)
            return dict.fromkeys(keys)
        try:
            # Asked with no pooled model too: the source then forgets the last one's state (deleted).
            in_pool = await source.pooled_metrics(pooled)
        except Exception as err:  # the pooled models read as "no metrics"; the others are unaffected
            log.warning("pooled models' metrics unavailable: %s", err)
            in_pool = {k: ServiceMetrics(*k, missing=("pool",)) for k in pooled}
        out: dict[SvcKey, ServiceMetrics | None] = {k: got.get(k) for k in keys}
        for k, part in in_pool.items():
            own = out.get(k)
            out[k] = part if own is None else combine(own, part)
        await self._backfill(out, pooled)
        return out

    async def _backfill(
        self, readings: Mapping[SvcKey, ServiceMetrics | None], pooled: Mapping[SvcKey, PooledModel]
    ) -> None:
        """Refill the rise history (autoscale.RateHistory) of every ModelService read fresh that has none
        in this process (a restart, or a new operator taking the lead) from the source's past windows,
        before its first decision: a restart converges to the headroom the history gave before it. Once per
        ModelService; a source error leaves it for the next tick."""
        source, history = self.deps.source, autoscale.HISTORY
        todo = {
            key: reading
            for key, reading in readings.items()
            if reading is not None
            and not reading.stale
            and reading.sampled_at is not None
            and reading.window_s > 0
            and key not in self.state.backfilled
            and not history.knows(key)
        }
        if source is None or not todo:
            return
        until = min(r.sampled_at or 0.0 for r in todo.values())
        try:
            past = await source.rate_history(
                {key: pooled[key].model if key in pooled else None for key in todo},
                until,
                autoscale.RISE_HISTORY_S,
            )
        except Exception as err:  # the history refills as it runs; the next tick tries again
            log.warning("past request rates unavailable: %s", err)
            return
        for key, reading in todo.items():
            history.backfill(key, past.get(key, ()), reading.window_s)
            self.state.backfilled.add(key)

    def _pooled(self, keys: list[SvcKey]) -> dict[SvcKey, PooledModel]:
        """The ModelServices a shared pool holds (status.placement.pool: served, loading or handing
        over), each with the pods of its pool GPU from the watch-fed cache, and any other pool pod that
        still serves it (its routing label: the GPU it is moving away from, until that one lets go)."""
        routed: dict[SvcKey, list[dict[str, Any]]] = {}
        for (namespace, _), pods in self.cache.pool_pods.items():
            for pod in pods.values():
                for label, value in ((pod.get("metadata") or {}).get("labels") or {}).items():
                    if label.startswith(c.ROUTE_LABEL_PREFIX) and value == c.ROUTE_AVAILABLE:
                        routed.setdefault((namespace, label[len(c.ROUTE_LABEL_PREFIX) :]), []).append(pod)
        out: dict[SvcKey, PooledModel] = {}
        for key in keys:
            body = self.cache.msvcs[key]
            pool = ((body.get("status") or {}).get("placement") or {}).get("pool")
            spec = body.get("spec") or {}
            if not pool:
                continue
            memory = (spec.get("gpu") or {}).get("memory")
            try:
                memory_bytes = int(parse_quantity(memory)) if memory is not None else 0
            except ValueError:
                memory_bytes = 0
            home = self.cache.pool_pods_of(key[0], str(pool))
            names = {p["metadata"]["name"] for p in home}
            also = [p for p in routed.get(key, []) if p["metadata"]["name"] not in names]
            refs = tuple(loop.pod_refs(home + also))
            model = str((spec.get("model") or {}).get("name") or key[1])
            out[key] = PooledModel(str(pool), model, refs, memory_bytes)
        return out

    async def tick(self, now: float) -> None:
        keys = [k for k in self.cache.msvcs if not self.cache.msvcs[k]["metadata"].get("deletionTimestamp")]
        known = set(keys)
        for book in (self.state.scaler, self.state.last_write, self.state.next_resync):
            for gone in [k for k in book if k not in known]:
                del book[gone]
        self.state.backfilled &= known
        readings = await self._readings(keys)
        await self._follow_activator(keys)
        assessed: dict[SvcKey, Assessed] = {}
        for key in keys:
            try:
                found = self._assess(key, self.cache.msvcs[key], readings.get(key), now)
            except Exception:  # one ModelService must not stop the others; the next tick retries
                log.exception("metrics tick for %s/%s failed", *key)
                continue
            if found is not None:
                assessed[key] = found
        await self._give_way(assessed, now)

        async def one(key: SvcKey) -> None:
            body = self.cache.msvcs.get(key)
            if body is None or key not in assessed:
                return
            try:
                await self._one(key, body, readings.get(key), now, assessed[key])
            except Exception:  # one ModelService must not stop the others; the next tick retries
                log.exception("metrics tick for %s/%s failed", *key)

        # Side by side: what acts waits for one of the reconcile slots (reconcile/modelservice.py
        # MAX_CONCURRENT), not for every ModelService before it (1,000 acting in one tick, one after
        # the other, took three minutes on the 2-core harness).
        await asyncio.gather(*(one(key) for key in keys))
        if self.deps.metrics is not None:
            self.deps.metrics.record_pass("resync")

    async def _follow_activator(self, keys: list[SvcKey]) -> None:
        """While some Service routes (or is about to route) to the activator, read the activator's
        addresses every tick, and re-route those Services when they changed (a restarted activator pod
        has a new address). Nothing is read while no ModelService is at zero."""
        cfg = self.deps.config
        if cfg.activator_service is None:
            return
        waiting = [
            k
            for k in keys
            if (st := self.cache.msvcs[k].get("status") or {}).get("routing") == Routing.ACTIVATOR.value
            or st.get("desiredReplicas") == 0
        ]
        if not waiting:
            return
        try:
            changed = await routing.ACTIVATOR.refresh(self.deps.kube, cfg)
        except Exception as err:  # the next tick reads again
            log.warning("reading the activator's endpoints failed: %s", err)
            return
        if changed:
            for namespace, name in waiting:
                rec.refresh_soon(self.deps.kube, namespace, name, cfg)

    def _assess(
        self, key: SvcKey, body: Mapping[str, Any], reading: ServiceMetrics | None, now: float
    ) -> Assessed | None:
        """The step's decision from the cache (pure but for the fleet book); None when there is nothing
        to decide (an invalid spec, reported by the change handlers, or pods the cache has not all seen)."""
        cfg = self.deps.config
        state = self.state
        if key not in state.scaler:
            state.scaler[key] = restamped((body.get("status") or {}).get("scaler"), now)
            # Spread the first refresh and resync of a fleet seen at once (a restart) over their periods.
            state.last_write[key] = now - random.uniform(0, cfg.status_refresh_s)
            state.next_resync[key] = now + random.uniform(0.5, 1.0) * cfg.full_resync_s
        try:
            spec = parse_spec(dict(body.get("spec") or {}))
        except ValidationError:
            return None
        status: dict[str, Any] = {**(body.get("status") or {}), "scaler": state.scaler[key]}
        if not pods_complete(self.cache, key):
            state.held += 1
            return None
        tele, decision = loop.assess(self.deps, spec, status, reading, now, activation_demand(body))
        return Assessed(spec, status, tele, decision)

    async def _give_way(self, assessed: dict[SvcKey, Assessed], now: float) -> None:
        """Held replicas give way to this tick's scale-ups, and scale-ups wait for GPUs being freed
        (reconcile/give_way.py): the decisions it changes are replaced in `assessed`."""
        entries = []
        for key, a in assessed.items():
            current = a.status.get("desiredReplicas")
            if served_from_pool(a.status) or not isinstance(current, int) or not a.spec.gpu.count:
                continue
            entries.append(
                give_way.Entry(
                    key,
                    current,
                    a.decision.desired,
                    int(a.status.get("readyReplicas") or 0),
                    a.spec.gpu.count,
                    node_selector(a.spec),
                    a.decision.wanted,
                    a.decision.held_until,
                    a.decision.bare,
                )
            )
        if self.view is None or not any(give_way.may_ask(e) for e in entries):
            return
        nodes, pods = await self.view.nodes(), await self.view.pods()
        if nodes is None or pods is None:
            return  # the informers have not listed yet: the decisions apply as made
        for key, count in give_way.give_way(entries, nodes, pods, now).items():
            a = assessed[key]
            assessed[key] = dataclasses.replace(a, decision=give_way.adjusted(a.decision, count))
            log.info("%s/%s: %s", *key, assessed[key].decision.intent.message)

    async def _one(
        self,
        key: SvcKey,
        body: Mapping[str, Any],
        reading: ServiceMetrics | None,
        now: float,
        assessed: Assessed,
    ) -> None:
        cfg = self.deps.config
        state = self.state
        spec, status, tele, decision = assessed.spec, assessed.status, assessed.telemetry, assessed.decision
        scaler = dict(decision.status.scaler or {})
        why = needs_action(status, tele, decision)
        if (
            why is None
            and tele.fresh
            and pools.participates(spec, status)
            and pools.placement_due(
                key[1],
                spec,
                status,
                tele.fields.requests_per_second,
                cfg,
                autoscale.HISTORY.factor(key),
                autoscale.HISTORY.sized_rate(key),
            )
        ):
            why = "placement"  # its load crossed its sharing threshold: into or out of its pool now
            placed = (status.get("placement") or {}).get("reason")
            rps = tele.fields.requests_per_second
            log.info("%s/%s: %s req/s crosses its sharing threshold (placed: %s)", *key, rps, placed)
        if why is None and now >= state.next_resync[key]:
            why = await self._resync_needs_api(key, body, reading, tele, scaler)
            if why is None:
                state.next_resync[key] = now + random.uniform(0.9, 1.1) * cfg.full_resync_s
        if why is None:
            state.scaler[key] = scaler
            loop.export(self.deps, reading, tele, decision.desired, status.get("readyReplicas"))
            figures = status_patch(tele.fields, status)
            if now - state.last_write[key] >= cfg.status_refresh_s and any(
                status.get(f) != v for f, v in figures.items()
            ):
                update = merge_status(tele.fields, ModelServiceStatus(scaler=scaler))
                await self._refresh(key, body, status_patch(update, status), reading, now)
            return
        rv = (body.get("metadata") or {}).get("resourceVersion")
        await self._act(key, body, reading, now, why, loop.Assessed(rv, tele, decision))

    async def _resync_needs_api(
        self,
        key: SvcKey,
        body: Mapping[str, Any],
        reading: ServiceMetrics | None,
        tele: telemetry.Telemetry,
        scaler: Mapping[str, Any],
    ) -> str | None:
        """The resync run against the cache alone: None when it found nothing to send, else "resync"
        (the real run follows). The slow figures and the autoscaler's state may differ: the tick writes
        those on its own schedule."""
        deferrable = frozenset(
            status_patch(merge_status(tele.fields, ModelServiceStatus(scaler=dict(scaler))), {})
        )
        dry = dataclasses.replace(self.deps, kube=CacheReads(self.cache, deferrable), metrics=None)
        try:
            await loop.step_locked(dry, copy.deepcopy(dict(body)), reading, scaler)
        except NeedsApiError as err:
            self.state.resynced += 1
            log.info("resync of %s/%s found something to send: %s", *key, err)
            return "resync"
        self.state.resynced_from_cache += 1
        return None

    async def _act(
        self,
        key: SvcKey,
        body: Mapping[str, Any],
        reading: ServiceMetrics | None,
        now: float,
        why: str,
        assessed: loop.Assessed | None = None,
    ) -> None:
        """The whole step under the lock from a fresh read: apply what changed, write what changed."""
        state = self.state
        state.acted += 1
        log.debug("tick acts on %s/%s: %s", *key, why)

        async def act(live: Mapping[str, Any]) -> rec.Outcome:
            step = await loop.step_locked(self.deps, live, reading, state.scaler[key], assessed)
            if step.scaler is not None:
                state.scaler[key] = dict(step.scaler)
            return step.outcome

        async def from_cache() -> rec.Outcome | None:
            """The step from the watch-fed cache, its status write guarded by the cached
            resourceVersion (reconcile/modelservice.py `refresh_from_cache`): a condition or a live
            figure that changed costs that one write, no GET before it. None when the cache cannot
            settle it (an apply, a read it cannot answer, a refused write)."""
            cached = self.cache.msvcs.get(key)
            if cached is None or cached["metadata"].get("deletionTimestamp"):
                return None
            dry = CachedWrites(self.cache)
            deps = dataclasses.replace(self.deps, kube=dry, metrics=None)
            try:
                step = await loop.step_locked(
                    deps, copy.deepcopy(cached), reading, state.scaler[key], assessed
                )
            except NeedsApiError:
                return None
            if not await dry.replay(self.deps.kube, cached["metadata"]):
                return None
            loop.record(self.deps, *key, reading, step)
            if step.scaler is not None:
                state.scaler[key] = dict(step.scaler)
            return step.outcome

        # A new replica count is a change like a spec edit; the rest is the tick's bookkeeping (Slots).
        # A new count applies the Deployment, and a resync (or a refused refresh) is the safety net:
        # those read fresh; a condition or a live figure is written from the cache. A placement change
        # re-plans the pool (its list, the pool's pods, the Services' endpoints): fresh too.
        priority = rec.CHANGE if why in ("replicas", "placement") else rec.BOOKKEEPING
        first = None if why in ("replicas", "placement", "resync", "conflict") else from_cache
        outcome = await rec.under_lock(self.deps.kube, body, act, priority, skip_busy=True, cached=first)
        if outcome.reason == rec.BUSY:
            return  # another reconcile of it is under way; the next tick decides again
        state.last_write[key] = now
        if why == "resync" or now >= state.next_resync[key]:
            state.next_resync[key] = now + random.uniform(0.9, 1.1) * self.deps.config.full_resync_s

    async def _refresh(
        self,
        key: SvcKey,
        body: Mapping[str, Any],
        fields: dict[str, Any],
        reading: ServiceMetrics | None,
        now: float,
    ) -> None:
        """Write the slowly moving figures alone: one status patch, guarded by the cached body's
        resourceVersion (a stale cache gets 409 and falls back to the full step from a fresh read)."""
        meta = body["metadata"]
        patch = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": fields}
        # The slot first, then the lock only if it is free (see rec.under_lock for why).
        async with rec.slot(rec.BOOKKEEPING):
            if rec.busy(*key):
                return  # another reconcile of it is under way; the next tick decides again
            async with rec.locked(*key):
                try:
                    written = await self.deps.kube.patch(
                        MODELSERVICES, meta["name"], patch, meta["namespace"], "status"
                    )
                except ApiError as err:
                    if err.not_found:
                        return
                    if not err.conflict:
                        raise
                    written = None
        if written is None:
            await self._act(key, body, reading, now, "conflict")
            return
        self.state.refreshed += 1
        self.state.last_write[key] = now
        self.cache.observe_msvc(written)
