"""Watch-fed views of the cluster, so an idle fleet costs the API server nothing.

kopf already watches ModelServices, the serving pods and the owned objects; its event handlers
(handlers/cache.py) feed one `ClusterCache` per process. Readers use it to decide *whether* to act; the
act itself still reads the live object first (reconcile/modelservice.py `under_lock`). Two uses:

* `apply_if_changed`: an owned object is applied only when its desired manifest differs from the one
  last applied, or when the object has changed since (someone scaled or edited it: its `generation`
  moved; for kinds without a generation, its `resourceVersion`), or is gone. Nothing is skipped before
  the first apply of this process, so a restart re-applies everything once (restart repair).
* `ModelService` bodies and serving pods per ModelService for the metrics tick (reconcile/ticker.py).

A cache entry is replaced only by a newer object: resourceVersions are compared as integers, which is
what the API server hands out with etcd; a value that is not an integer always replaces (the safe side:
at worst one extra apply).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from greenserve.api import constants as c
from greenserve.api.objects import pod_ready, pod_terminating
from greenserve.cluster.client import KubeClient, resource_for

ObjKey = tuple[str, str, str]  # (kind, namespace, name)
SvcKey = tuple[str, str]  # (namespace, ModelService name)

# Kinds whose spec changes move metadata.generation; for the others the resourceVersion is the marker
# (their status, if any, does not change on its own for the objects greenserve writes).
_GENERATION_KINDS = frozenset({"Deployment", "PodDisruptionBudget"})


def _rv(obj: Mapping[str, Any]) -> int | None:
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


def _newer(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    if old is None:
        return True
    a, b = _rv(old), _rv(new)
    return a is None or b is None or b >= a


_META_KEPT = ("name", "namespace", "labels", "resourceVersion", "generation", "deletionTimestamp",
              "ownerReferences")  # fmt: skip


def _slim_meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    return {k: meta[k] for k in _META_KEPT if k in meta}


# kopf's copy of the last handled spec (handlers/startup.py): nobody reads it from the cache.
_KOPF_DIFFBASE = f"{c.GROUP}/last-handled-configuration"


def _msvc_meta(body: Mapping[str, Any]) -> dict[str, Any]:
    """A ModelService's metadata as cached: without managedFields and kopf's copy of the spec, which
    together are most of its size (at 1,000 ModelServices, megabytes the operator's RSS would hold)."""
    meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    annotations = meta.get("annotations")
    if annotations and _KOPF_DIFFBASE in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != _KOPF_DIFFBASE}
    return meta


def _serving(pod: Mapping[str, Any] | None) -> bool:
    return pod is not None and not pod_terminating(pod) and pod_ready(pod)


def slim_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What the tick and a cache-only reconcile (cluster/cache_reads.py) read of a serving pod: its
    identity, annotations (the spec hash, warm-up protection), node and status (reconcile/status.py
    reads the conditions and container states). kopf's watch of every pod is the memory cost at fleet
    scale, so the cache keeps no more than this: no managedFields, no pod spec."""
    meta = _slim_meta(pod)
    annotations = (pod.get("metadata") or {}).get("annotations")
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "metadata": meta,
        "spec": {"nodeName": (pod.get("spec") or {}).get("nodeName")},
        "status": dict(pod.get("status") or {}),
    }


def slim_owned(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An owned object as the cache keeps it: identity and markers; a Deployment also its spec.replicas,
    its pod template's spec hash and status (reconcile/status.py reads them when the apply was skipped)."""
    out: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": _slim_meta(obj),
    }
    if obj.get("kind") == "Deployment":
        spec = obj.get("spec") or {}
        out["spec"] = {"replicas": spec.get("replicas")}
        template = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
        if c.ANN_SPEC_HASH in template:
            out["spec"]["template"] = {
                "metadata": {"annotations": {c.ANN_SPEC_HASH: template[c.ANN_SPEC_HASH]}}
            }
        out["status"] = dict(obj.get("status") or {})
    return out


def marker(obj: Mapping[str, Any]) -> str:
    """What changes when someone else changes the object's intent (not its status)."""
    meta = obj.get("metadata") or {}
    if obj.get("kind") in _GENERATION_KINDS:
        return f"g{meta.get('generation')}"
    return f"rv{meta.get('resourceVersion')}"


def digest(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def obj_key(obj: Mapping[str, Any]) -> ObjKey:
    meta = obj["metadata"]
    return (str(obj.get("kind")), str(meta.get("namespace") or ""), str(meta["name"]))


@dataclass
class ClusterCache:
    enabled: bool = False
    msvcs: dict[SvcKey, dict[str, Any]] = field(default_factory=dict)
    pods: dict[SvcKey, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # Shared pool pods per (namespace, pool): the tick reads its pooled models' metrics from them.
    pool_pods: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    owned: dict[ObjKey, dict[str, Any]] = field(default_factory=dict)
    # What this process last applied: (digest of the desired manifest, marker of the object it produced).
    applied: dict[ObjKey, tuple[str, str]] = field(default_factory=dict)
    applies_skipped: int = 0

    # --- fed by watch events -------------------------------------------------------------------------

    def observe_msvc(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if deleted:
            self.msvcs.pop(key, None)
            self.pods.pop(key, None)
        elif _newer(self.msvcs.get(key), body):
            self.msvcs[key] = {**dict(body), "metadata": _msvc_meta(body)}

    def observe_pod(self, body: Mapping[str, Any], deleted: bool = False) -> bool:
        """Record a serving pod's event; True when it changed whether the pod serves (live and Ready),
        i.e. what its ModelService's Ready and readyReplicas report."""
        meta = body["metadata"]
        svc = (meta.get("labels") or {}).get(c.LABEL_MODELSERVICE)
        if not svc:
            return False
        pods = self.pods.setdefault((meta["namespace"], svc), {})
        before = pods.get(meta["name"])
        if deleted:
            pods.pop(meta["name"], None)
        elif _newer(before, body):
            pods[meta["name"]] = slim_pod(body)
        return _serving(before) != _serving(pods.get(meta["name"]))

    def observe_pool_pod(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        meta = body["metadata"]
        pool = (meta.get("labels") or {}).get(c.LABEL_POOL)
        if not pool:
            return
        key = (meta["namespace"], pool)
        pods = self.pool_pods.setdefault(key, {})
        if deleted:
            pods.pop(meta["name"], None)
            if not pods:
                del self.pool_pods[key]
        elif _newer(pods.get(meta["name"]), body):
            pods[meta["name"]] = slim_pod(body)

    def observe_owned(self, body: Mapping[str, Any], deleted: bool = False) -> bool:
        """Record an owned object's event; True when it drifted from what this process applied (deleted,
        or changed by someone else), i.e. its owner should be reconciled now."""
        key = obj_key(body)
        if deleted:
            self.owned.pop(key, None)
            return key in self.applied
        if not _newer(self.owned.get(key), body):
            return False
        self.owned[key] = slim_owned(body)
        mark = self.applied.get(key)
        return mark is not None and mark[1] != marker(body)

    # --- readers ---------------------------------------------------------------------------------------

    def pods_of(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return list(self.pods.get((namespace, name), {}).values())

    def pool_pods_of(self, namespace: str, pool: str) -> list[dict[str, Any]]:
        return list(self.pool_pods.get((namespace, pool), {}).values())

    def pods_agreeing(
        self, namespace: str, name: str, deployment: Mapping[str, Any] | None
    ) -> list[dict[str, Any]] | None:
        """The cached serving pods when they agree with `deployment`'s status (at least as many live pods
        as its `replicas`, at least as many Ready as its `readyReplicas`), else None: then the pod watch
        has not caught up with the Deployment, and the caller lists the pods instead. Spares a LIST per
        reconcile, which the API server answers by filtering every pod of the namespace."""
        if not self.enabled or deployment is None:
            return None
        status = deployment.get("status") or {}
        pods = self.pods_of(namespace, name)
        live = [p for p in pods if not pod_terminating(p)]
        ready = sum(1 for p in live if pod_ready(p))
        # Ahead of the status is agreement too: the deployment controller sums the same pods' events
        # into it, seconds later under load (at 1,000 ModelServices on 2 cores, 20 s behind the pods).
        if len(live) < int(status.get("replicas") or 0) or ready < int(status.get("readyReplicas") or 0):
            return None
        return pods

    def forget(self, namespace: str, name: str) -> None:
        """A deleted ModelService: drop what belongs to it (its owned objects go with the GC)."""
        self.msvcs.pop((namespace, name), None)
        self.pods.pop((namespace, name), None)
        mine = (name, f"{name}-config")  # the owned objects' names (manifests/builders.py)
        for key in [k for k in self.applied if k[1] == namespace and k[2] in mine]:
            self.applied.pop(key, None)

    def unchanged(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """The cached object when applying `obj` would change nothing, else None."""
        if not self.enabled:
            return None
        key = obj_key(obj)
        seen, mark = self.owned.get(key), self.applied.get(key)
        if seen is None or mark is None or mark != (digest(obj), marker(seen)):
            return None
        return seen


#: The process-wide cache; the operator's startup enables it, unit tests and tools leave it off.
CACHE = ClusterCache()


class ConflictingObjectError(Exception):
    """An object greenserve would write exists and belongs to something else; it is left untouched."""

    def __init__(self, obj: Mapping[str, Any], holder: str) -> None:
        kind, namespace, name = obj_key(obj)
        super().__init__(f"{kind} {namespace}/{name} exists and is not this ModelService's ({holder})")
        self.kind, self.namespace, self.name, self.holder = kind, namespace, name, holder


def _controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def holder_of(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> str | None:
    """Who else holds `existing`, or None when it is ours: Kubernetes' own controllers adopt only objects
    whose controller reference is theirs, never one with another controller or none (a user's object)."""
    mine, theirs = _controller_uid(desired), _controller_uid(existing)
    if theirs is not None and theirs == mine:
        return None
    if theirs is not None:
        return f"controlled by another owner, uid {theirs}"
    return "no controller owner reference: created by someone else"


async def ensure_ours(
    kube: KubeClient, objs: Sequence[Mapping[str, Any]], cache: ClusterCache = CACHE
) -> None:
    """Before this process first writes any of `objs`, read each: one that exists and is not this
    ModelService's raises ConflictingObjectError, and none of `objs` is written (server-side apply with
    force would take over its fields and owner reference, and the garbage collector would later delete
    it with the ModelService)."""
    for obj in objs:
        key = obj_key(obj)
        if key in cache.applied:
            continue
        existing = await kube.get_or_none(resource_for(obj), key[2], key[1] or None)
        if existing is not None:
            holder = holder_of(existing, obj)
            if holder is not None:
                raise ConflictingObjectError(obj, holder)


async def apply_if_changed(
    kube: KubeClient, obj: Mapping[str, Any], cache: ClusterCache = CACHE
) -> dict[str, Any]:
    """Server-side apply `obj` unless the cache shows it would change nothing (see the module docstring);
    callers check ownership first (`ensure_ours`)."""
    same = cache.unchanged(obj)
    if same is not None:
        cache.applies_skipped += 1
        return same
    result = await kube.apply(obj)
    if cache.enabled:
        key = obj_key(obj)
        cache.applied[key] = (digest(obj), marker(result))
        if _newer(cache.owned.get(key), result):
            cache.owned[key] = slim_owned(result)
    return result
