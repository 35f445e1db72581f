"""Consolidation moves of pool pods: surge, wait, retire, as a ModelService replica's move
(reconcile/consolidator.py), so that a shared pool GPU does not keep a node from emptying.

A pool GPU is a Deployment of one pod that loads the models its ConfigMap lists (reconcile/pools.py), so a
second pod of it loads the same models. A move:

1. the plan closes the source node (the consolidating taint), so the replacement lands elsewhere;
2. the source pod gets the `greenserve.io/pool-move` annotation, and the pool sync applies two replicas
   while a pod of the pool GPU carries it; the replacement loads every listed model, and the pool sync
   labels it for each model it reports AVAILABLE (the Services then select it beside the source);
3. once another pod of the pool GPU is Ready, carries the routing label of every model the source
   serves, and is a ready endpoint of each of those models' Services, one patch gives the source the
   lowest deletion cost and drops the annotation; the pool sync applies one replica again and the
   ReplicaSet removes exactly the source, a graceful delete whose preStop sleep outlasts the endpoint
   removal, as any scale-in;
4. past MOVE_TIMEOUT_S without that, the move is abandoned the other way round: the replacement gets the
   lowest deletion cost and goes, and the source keeps serving.

The annotation on the source pod is the only state: an operator restarted at any step takes the same
step again, and a source that goes away by itself closes the move with it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from greenserve.api import constants as c
from greenserve.api.objects import pod_gpus, pod_ready, pod_terminating
from greenserve.api.v1alpha1 import parse_spec
from greenserve.cluster import events
from greenserve.cluster.client import MODELSERVICES, PODS, ApiError, KubeClient
from greenserve.config import OperatorConfig
from greenserve.manifests import pools as pm
from greenserve.metrics.operator_metrics import OperatorMetrics
from greenserve.policy import consolidation as pc
from greenserve.reconcile import modelservice as rec
from greenserve.reconcile import pools
from greenserve.reconcile.moves import MOVE_TIMEOUT_S, MoveStep, do_not_disrupt

log = logging.getLogger(__name__)

# A pool pod's key in the consolidation plan: "pool:<namespace>/<pool GPU>", beside "<namespace>/<name>"
# for a ModelService's replicas.
KEY_PREFIX = "pool:"


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def pool_gpu(pod: Mapping[str, Any]) -> str | None:
    """The pool GPU (its Deployment's name) a pod belongs to; None for any other pod."""
    labels = _meta(pod).get("labels") or {}
    return None if c.LABEL_MODELSERVICE in labels else labels.get(c.LABEL_POOL)


def routed(pod: Mapping[str, Any]) -> list[str]:
    """The ModelServices a pool pod serves now: those whose routing label it carries."""
    labels = _meta(pod).get("labels") or {}
    return sorted(
        k.removeprefix(c.ROUTE_LABEL_PREFIX)
        for k, v in labels.items()
        if k.startswith(c.ROUTE_LABEL_PREFIX) and v == c.ROUTE_AVAILABLE
    )


def plan_key(pod: Mapping[str, Any]) -> str | None:
    gpu = pool_gpu(pod)
    return f"{KEY_PREFIX}{_meta(pod).get('namespace')}/{gpu}" if gpu else None


@dataclass(frozen=True)
class PoolMoveRecord:
    """The `greenserve.io/pool-move` annotation of the source pod."""

    from_node: str
    to_node: str
    started_at: float

    @classmethod
    def of(cls, pod: Mapping[str, Any] | None) -> PoolMoveRecord | None:
        raw = (_meta(pod or {}).get("annotations") or {}).get(c.ANN_POOL_MOVE)
        try:
            value = json.loads(raw) if raw else None
        except ValueError:
            value = None
        if not isinstance(value, dict):
            return None
        try:
            started = float(value.get("startedAt") or 0.0)
        except (TypeError, ValueError):
            started = 0.0  # unreadable: timed out at once, so the source keeps serving
        return cls(str(value.get("fromNode") or ""), str(value.get("toNode") or ""), started)

    def annotation(self) -> str:
        return json.dumps({"fromNode": self.from_node, "toNode": self.to_node, "startedAt": self.started_at})


def in_flight(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Pool pods with a move under way."""
    return [
        p
        for p in pods
        if pool_gpu(p) and not pod_terminating(p) and c.ANN_POOL_MOVE in (_meta(p).get("annotations") or {})
    ]


def replacement(
    source: Mapping[str, Any], shard_pods: Sequence[Mapping[str, Any]], endpoints: Mapping[str, set[str]]
) -> str | None:
    """A pod of the source's pool GPU that serves everything the source serves: Ready, with the routing
    label of each model the source carries, and a ready endpoint of each of those models' Services."""
    name, models = _meta(source).get("name"), routed(source)
    for pod in shard_pods:
        other = str(_meta(pod).get("name"))
        if other == name or pod_terminating(pod) or not pod_ready(pod):
            continue
        if set(models) <= set(routed(pod)) and all(other in endpoints.get(m, set()) for m in models):
            return other
    return None


def next_step(
    record: PoolMoveRecord,
    source: Mapping[str, Any] | None,
    shard_pods: Sequence[Mapping[str, Any]],
    endpoints: Mapping[str, set[str]],
    now: float,
    timeout_s: float = MOVE_TIMEOUT_S,
) -> MoveStep:
    """The move's next step from a fresh read of the source, its pool GPU's pods and the ready endpoints
    of the models the source serves: retire the source only once a replacement serves all of them."""
    if source is None or pod_terminating(source) or PoolMoveRecord.of(source) is None:
        return MoveStep.SOURCE_GONE
    if replacement(source, shard_pods, endpoints) is not None:
        return MoveStep.RETIRE
    if now - record.started_at > timeout_s:
        return MoveStep.TIMED_OUT
    return MoveStep.WAIT


def replica_views(
    pods: Sequence[Mapping[str, Any]], movable_services: set[str], now: float
) -> list[pc.ReplicaView]:
    """The pool pods as the plan sees them. One is movable when it serves at least one model, every model
    it serves allows consolidation (`movable_services`), it is its pool GPU's only live pod (no move or
    rollout under way) and no do-not-disrupt protects it (a new pod's warm-up)."""
    per_gpu: dict[tuple[str, str], int] = {}
    for p in pods:
        gpu = pool_gpu(p)
        if gpu and not pod_terminating(p):
            where = (str(_meta(p).get("namespace")), gpu)
            per_gpu[where] = per_gpu.get(where, 0) + 1
    out: list[pc.ReplicaView] = []
    for p in pods:
        key, node = plan_key(p), (p.get("spec") or {}).get("nodeName")
        gpus = pod_gpus(p)
        if key is None or not node or gpus == 0 or pod_terminating(p):
            continue
        ns, gpu = str(_meta(p).get("namespace")), str(pool_gpu(p))
        models = routed(p)
        protected = (
            not models
            or any(f"{ns}/{m}" not in movable_services for m in models)
            or per_gpu.get((ns, gpu), 0) > 1
            or do_not_disrupt(p, now)
        )
        selector = dict((p.get("spec") or {}).get("nodeSelector") or {})
        out.append(pc.ReplicaView(str(_meta(p)["name"]), key, node, gpus, pod_ready(p), protected, selector))
    return out


def pool_key_of(pod: Mapping[str, Any]) -> pm.PoolKey:
    """The pool of a pool pod, from the pod itself: its namespace, GPU product selector and image are the
    pool's key (manifests/pools.py `pool_deployment`)."""
    spec = pod.get("spec") or {}
    product = (spec.get("nodeSelector") or {}).get(c.GPU_PRODUCT_LABEL)
    image = str(((spec.get("containers") or [{}])[0]).get("image") or "")
    return pm.PoolKey(str(_meta(pod).get("namespace")), product, image)


class PoolMover:
    """Starts and advances pool pod moves for the consolidator (one node's moves at a time, cluster-wide,
    counting these and ModelService moves together)."""

    def __init__(
        self,
        kube: KubeClient,
        config: OperatorConfig,
        note: Callable[[str], None],
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self.kube, self.config, self.note, self.metrics = kube, config, note, metrics
        self.moves_started = 0
        self.moves_completed = 0

    async def _sync(self, pod: Mapping[str, Any]) -> None:
        """Apply the pool's replica count now (two while a pod of a pool GPU carries the annotation); the
        members whose view changes are refreshed as after any pool sync."""
        key = pool_key_of(pod)
        if pm.shard_of(key, str(pool_gpu(pod))) is None:
            # The pod's image was rewritten after admission (a digest-pinning webhook): the key comes
            # from a member's spec instead; without one there is nothing to sync.
            key = await self._member_key(pod) or key
        if pm.shard_of(key, str(pool_gpu(pod))) is None:
            log.warning(
                "pool pod %s: its pool is not found from the pod or its models", pod["metadata"]["name"]
            )
            return

        def changed(name: str) -> None:
            rec.refresh_soon(self.kube, key.namespace, name, self.config)

        await pools.sync_pool(self.kube, key, self.config, changed)

    async def _member_key(self, pod: Mapping[str, Any]) -> pm.PoolKey | None:
        ns = str(_meta(pod).get("namespace"))
        for name in routed(pod):
            body = await self.kube.get_or_none(MODELSERVICES, name, ns)
            try:
                return pm.pool_key(ns, parse_spec(dict((body or {}).get("spec") or {})))
            except ValidationError:
                continue
        return None

    async def _patch_pod(self, pod: Mapping[str, Any], annotations: Mapping[str, str | None]) -> bool:
        """Patch a pod's annotations guarded by its resourceVersion (the read the step was decided on);
        False when the pod changed or went meanwhile (the next pass decides again)."""
        meta = pod["metadata"]
        body = {"metadata": {"resourceVersion": meta["resourceVersion"], "annotations": dict(annotations)}}
        try:
            await self.kube.patch(PODS, meta["name"], body, meta["namespace"])
        except ApiError as err:
            if err.not_found or err.conflict:
                return False
            raise
        return True

    async def start(self, move: pc.Move, source: Mapping[str, Any], now: float) -> bool:
        """Mark the (freshly read, Ready) source pod and apply the surge."""
        record = PoolMoveRecord(move.from_node, move.to_node, now)
        if not await self._patch_pod(source, {c.ANN_POOL_MOVE: record.annotation()}):
            return False
        name = source["metadata"]["name"]
        await events.post(
            self.kube,
            source,
            "Normal",
            "ConsolidationMove",
            f"starting a replacement for pool pod {name} to empty node {move.from_node}",
        )
        self.moves_started += 1
        self.note(f"{move.service}: moving pool pod {name} {move.from_node} -> {move.to_node}")
        await self._sync(source)  # two replicas while the source carries the annotation
        return True

    async def progress(self, seen: Mapping[str, Any], now: float) -> bool:
        """Advance one pool pod's move by one step from a fresh read; True while it is in flight."""
        ns, name = _meta(seen)["namespace"], _meta(seen)["name"]
        source = await self.kube.get_or_none(PODS, name, ns)
        record = PoolMoveRecord.of(source)
        gpu = pool_gpu(source or seen)
        if source is None or record is None or gpu is None:
            return False
        shard_pods = await self.kube.list_objects(PODS, ns, label_selector=f"{c.LABEL_POOL}={gpu}")
        endpoints: dict[str, set[str]] = {}
        # The Services' endpoints are read only once a pod could replace the source.
        candidates = [p for p in shard_pods if _meta(p).get("name") != name and pod_ready(p)]
        if candidates and not pod_terminating(source):
            for model in routed(source):
                endpoints[model] = await pools.selected_pods(self.kube, ns, model)
        step = next_step(record, source, shard_pods, endpoints, now)
        if step is MoveStep.SOURCE_GONE:
            return False
        if step is MoveStep.RETIRE:
            # One patch: the lowest deletion cost and the end of the move, so the scale-in that follows
            # (now, or after a restart) removes exactly the source.
            cost = str(pc.DRAIN_DELETION_COST)
            if not await self._patch_pod(source, {c.ANN_POOL_MOVE: None, c.ANN_POD_DELETION_COST: cost}):
                return True
            await events.post(
                self.kube,
                source,
                "Normal",
                "ReplicaMoved",
                f"pool pod {name} replaced off {record.from_node} to free the GPU node",
            )
            self.moves_completed += 1
            if self.metrics is not None:
                self.metrics.record_move(ns, gpu, reason="pool-consolidation")
            self.note(f"{KEY_PREFIX}{ns}/{gpu}: retired {name} from {record.from_node}")
            await self._sync(source)  # one replica again: the ReplicaSet removes the source
            return False
        if step is MoveStep.TIMED_OUT:
            # The replacements go instead of the source (the ReplicaSet prefers a not-Ready pod anyway).
            for pod in shard_pods:
                if _meta(pod).get("name") != name and not pod_terminating(pod):
                    await self._patch_pod(pod, {c.ANN_POD_DELETION_COST: str(pc.DRAIN_DELETION_COST)})
            if not await self._patch_pod(source, {c.ANN_POOL_MOVE: None}):
                return True
            await self._sync(source)
            await events.post(
                self.kube,
                source,
                "Warning",
                "MoveTimedOut",
                f"replacement for pool pod {name} not serving its models after {MOVE_TIMEOUT_S:.0f}s",
            )
            return False
        # WAIT: the surge is applied by the pool sync; apply it again if that never ran (a failed pass).
        if sum(1 for p in shard_pods if not pod_terminating(p)) < 2:
            await self._sync(source)
        return True
