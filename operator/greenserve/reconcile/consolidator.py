"""Execute consolidation plans on the cluster, one node's moves at a time, restart-safe.

A move never lowers capacity: it runs as "surge, wait, retire":

1. the source node gets the taint `greenserve.io/consolidating=true:NoSchedule`, so neither the replacement
   nor any scale-up lands there (the bin-packing scheduler then picks the fullest node that fits);
2. the ModelService's status records the move (`status.move`); reconcile applies desired + 1 replicas
   while a move is recorded, which starts the replacement;
3. once desired replicas are Ready without the source pod, the source pod gets the lowest
   pod-deletion-cost and the move is cleared; reconcile scales back to desired and the ReplicaSet removes
   exactly that pod (a graceful delete with the preStop drain, never below the PodDisruptionBudget);
4. the emptied node keeps its taint until it is gone; the node autoscaler (Karpenter or
   cluster-autoscaler) removes it.

A pool pod (a shared GPU's one pod, reconcile/pools.py) moves the same way, its state on the pod itself
(reconcile/pool_moves.py). A pass starts every move off the plan's first node together, one per
ModelService (`policy/consolidation.py` `batch`), and plans nothing new until they have all finished.

All state lives in the API (status.move, taints, annotations), so an operator killed at any step resumes
the same move after a restart: a surge already applied is not applied twice, and a replacement already
Ready is not started again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from greenserve.api import conditions as cond
from greenserve.api import constants as c
from greenserve.api.objects import node_gpus, node_taints, pod_gpus, pod_ready, pod_service, pod_terminating
from greenserve.api.v1alpha1 import ConsolidationPolicy, MoveStatus, parse_spec
from greenserve.cluster import events
from greenserve.cluster.client import MODELSERVICES, NODES, PODS, ApiError, KubeClient
from greenserve.cluster.informer import ClusterView, ListedView
from greenserve.config import OperatorConfig
from greenserve.metrics.operator_metrics import OperatorMetrics
from greenserve.policy import consolidation as pc
from greenserve.reconcile import modelservice as rec
from greenserve.reconcile import pool_moves
from greenserve.reconcile.moves import MOVE_TIMEOUT_S, MoveStep, do_not_disrupt

log = logging.getLogger(__name__)

TAINT_KEY = c.TAINT_CONSOLIDATING
TAINT_RETRIES = 5
AUTOSCALER_DELETION_TAINTS = (
    "ToBeDeletedByClusterAutoscaler",
    "DeletionCandidateOfClusterAutoscaler",
    "karpenter.sh/disrupted",
)


def _has_move(msvc: Mapping[str, Any]) -> bool:
    """A ModelService with a move recorded (`status.move`), in flight until its record is cleared."""
    return bool((msvc.get("status") or {}).get("move"))


@dataclass
class ConsolidatorState:
    """In-memory only: the rate limit. Losing it on restart can only delay a move, never repeat one."""

    last_move_at: float | None = None
    moves_started: int = 0
    moves_completed: int = 0
    log: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MoveRecord:
    """`status.move`: the only move state there is (the API holds it, not the operator's memory)."""

    pod: str
    from_node: str
    to_node: str
    started_at: float

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> MoveRecord | None:
        if not raw or not raw.get("pod"):
            return None
        return cls(
            str(raw["pod"]),
            str(raw.get("fromNode") or ""),
            str(raw.get("toNode") or ""),
            float(raw.get("startedAt") or 0.0),
        )

    def to_status(self) -> dict[str, Any]:
        """`status.move` as the CRD types it (api/v1alpha1.py MoveStatus)."""
        typed = MoveStatus(
            pod=self.pod, from_node=self.from_node, to_node=self.to_node, started_at=self.started_at
        )
        return typed.model_dump(mode="json", by_alias=True)


def next_step(
    move: MoveRecord,
    pods: Sequence[Mapping[str, Any]],
    desired: int,
    now: float,
    timeout_s: float = MOVE_TIMEOUT_S,
) -> MoveStep:
    """The move's next step from its service's live pods: retire the source only once `desired` replicas
    other than it are Ready (make-before-break), never on a count that includes a terminating pod."""
    live = [p for p in pods if not pod_terminating(p)]
    source = next((p for p in live if p["metadata"]["name"] == move.pod), None)
    if source is None:
        return MoveStep.SOURCE_GONE
    if sum(1 for p in live if p is not source and pod_ready(p)) >= desired:
        return MoveStep.RETIRE
    if now - move.started_at > timeout_s:
        return MoveStep.TIMED_OUT
    return MoveStep.WAIT


def node_view(node: Mapping[str, Any], allocated: int) -> pc.NodeView:
    meta, spec = node["metadata"], node.get("spec") or {}
    ann = meta.get("annotations") or {}
    taints = node_taints(node)
    protected = (
        ann.get(c.ANN_KARPENTER_DO_NOT_DISRUPT) == "true" or ann.get(c.ANN_CA_SCALE_DOWN_DISABLED) == "true"
    )
    draining = bool(spec.get("unschedulable")) or any(
        t.get("key") in AUTOSCALER_DELETION_TAINTS for t in taints
    )
    capacity = node_gpus(node)
    labels = dict(meta.get("labels") or {})
    return pc.NodeView(
        meta["name"], capacity, allocated, protected=protected, draining=draining, labels=labels
    )


def build_snapshot(
    nodes: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    movable_services: set[str],
    now: float | None = None,
) -> pc.ClusterSnapshot:
    """Policy view of the GPU nodes: every pod's GPUs count as allocated; only greenserve replicas of
    services that allow consolidation are movable, the rest are protected."""
    now = time.time() if now is None else now
    allocated: dict[str, int] = {}
    replicas: list[pc.ReplicaView] = []
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or pod_terminating(pod):
            continue
        gpus = pod_gpus(pod)
        allocated[node] = allocated.get(node, 0) + gpus
        key = pod_service(pod)
        if key is None or gpus == 0:
            continue
        protected = key not in movable_services or do_not_disrupt(pod, now)
        selector = dict((pod.get("spec") or {}).get("nodeSelector") or {})
        replicas.append(
            pc.ReplicaView(
                pod["metadata"]["name"], key, node, gpus, pod_ready(pod), protected, node_selector=selector
            )
        )
    replicas += pool_moves.replica_views(pods, movable_services, now)
    views = [node_view(n, allocated.get(n["metadata"]["name"], 0)) for n in nodes if node_gpus(n)]
    return pc.ClusterSnapshot(tuple(views), tuple(replicas))


def movable_services(msvcs: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]) -> set[str]:
    """The services whose replicas consolidation may move: consolidation on, policy not Performance, and
    not scaling in. A service scaling in sheds replicas anyway, cheapest node first (the deletion costs):
    moving one now would start a replacement for a replica that is about to go."""
    live: dict[str, int] = {}
    for p in pods:
        key = pod_service(p)
        if key is not None and not pod_terminating(p):
            live[key] = live.get(key, 0) + 1
    out = set()
    for m in msvcs:
        try:
            energy = parse_spec(dict(m.get("spec") or {})).energy
        except ValidationError:
            continue  # an invalid spec is reported by the reconcile; its replicas stay where they are
        key = f"{m['metadata']['namespace']}/{m['metadata']['name']}"
        desired = (m.get("status") or {}).get("desiredReplicas")
        shrinking = isinstance(desired, int) and live.get(key, 0) > desired
        if energy.consolidation and energy.policy != ConsolidationPolicy.PERFORMANCE and not shrinking:
            out.add(key)
    return out


class Consolidator:
    def __init__(
        self,
        kube: KubeClient,
        config: OperatorConfig,
        limits: pc.ConsolidationLimits | None = None,
        metrics: OperatorMetrics | None = None,
        view: ClusterView | None = None,
    ):
        self.kube = kube
        self.metrics = metrics
        self.config = config
        self.limits = limits or pc.limits(config.consolidation_interval_s)
        self.state = ConsolidatorState()
        # What a pass plans from: the operator passes the watch-fed view (cluster/informer.py), so a pass
        # that acts on nothing lists nothing; the LIST-based one is for tools and tests.
        self.listed = ListedView(kube, config.namespaces)
        self.view: ClusterView = view or self.listed
        self.pools = pool_moves.PoolMover(kube, config, self._note, metrics)

    def _note(self, text: str) -> None:
        log.info("consolidation: %s", text)
        self.state.log.append(text)

    async def _set_move(
        self, msvc: Mapping[str, Any], move: dict[str, Any] | None, message: str
    ) -> dict[str, Any]:
        """Write `status.move` and the Consolidating condition under the ModelService's lock, from the live
        object, so a concurrent reconcile's status write is neither overwritten nor overwrites this one."""
        meta = msvc["metadata"]
        async with rec.locked(meta["namespace"], meta["name"]):
            live = await rec.live_body(self.kube, msvc)
            if live is None:
                return dict(msvc)  # deleted meanwhile: nothing left to record the move on
            status = live.get("status") or {}
            condition = cond.ConditionUpdate(
                cond.CONSOLIDATING, move is not None, "MoveInProgress" if move else "Idle", message
            )
            conditions = cond.set_condition(
                status.get("conditions"), condition, live["metadata"].get("generation")
            )
            return await self.kube.patch_status(
                MODELSERVICES, meta["name"], meta["namespace"], {"move": move, "conditions": conditions}
            )

    async def _taint(self, node: Mapping[str, Any], on: bool) -> None:
        """Add or remove our taint on a fresh read, guarded by resourceVersion: a taint that Karpenter or
        the cluster-autoscaler adds between our read and our write makes the patch fail with 409 (and we
        re-read) instead of being dropped by a whole-list write from a stale copy."""
        name = node["metadata"]["name"]
        for _ in range(TAINT_RETRIES):
            try:
                live = await self.kube.get(NODES, name)
            except ApiError as err:
                if err.not_found:
                    return
                raise
            current = (live.get("spec") or {}).get("taints") or []
            taints = [t for t in current if t.get("key") != TAINT_KEY]
            if on:
                taints.append({"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"})
            if taints == current:
                return
            patch = {
                "metadata": {"resourceVersion": live["metadata"]["resourceVersion"]},
                "spec": {"taints": taints},
            }
            try:
                await self.kube.patch(NODES, name, patch)
                return
            except ApiError as err:
                if err.not_found:
                    return
                if not err.conflict:
                    raise
        raise ApiError(409, "Conflict", f"node {name}: taint not written after {TAINT_RETRIES} conflicts")

    async def _set_deletion_costs(self, pods: Sequence[Mapping[str, Any]], costs: Mapping[str, int]) -> None:
        for pod in pods:
            name = pod["metadata"]["name"]
            if name not in costs:
                continue
            want = str(costs[name])
            if (pod["metadata"].get("annotations") or {}).get(c.ANN_POD_DELETION_COST) == want:
                continue  # idempotent: write only on change
            try:
                await self.kube.patch(
                    PODS,
                    name,
                    {"metadata": {"annotations": {c.ANN_POD_DELETION_COST: want}}},
                    pod["metadata"]["namespace"],
                )
            except ApiError as err:
                if not err.not_found:
                    raise

    async def _progress(self, msvc: Mapping[str, Any], now: float) -> bool:
        """Advance an in-flight move by one step, from a fresh read of the ModelService and its pods
        (the pass's cluster-wide list may predate a retirement or a scale-in); True while in flight."""
        meta = msvc["metadata"]
        ns, name = meta["namespace"], meta["name"]
        live = await rec.live_body(self.kube, msvc)
        record = MoveRecord.from_status(((live or {}).get("status") or {}).get("move"))
        if live is None or record is None:
            return False
        pods = await self.kube.list_objects(PODS, ns, label_selector=f"{c.LABEL_MODELSERVICE}={name}")
        desired = int((live.get("status") or {}).get("desiredReplicas") or 0)
        step = next_step(record, pods, desired, now)
        if step is MoveStep.SOURCE_GONE:
            await self._set_move(live, None, f"{record.pod} is gone; move closed")
            return False
        if step is MoveStep.RETIRE:
            # The replacement serves: retire the source through the ReplicaSet, cheapest pod first. The
            # cost is written before the move is cleared, so a restart in between retires the same pod.
            source = next(p for p in pods if p["metadata"]["name"] == record.pod)
            await self._set_deletion_costs([source], {record.pod: pc.DRAIN_DELETION_COST})
            updated = await self._set_move(live, None, f"moved {record.pod} off {record.from_node}")
            await rec.reconcile(self.kube, updated, self.config)
            await events.post(
                self.kube,
                live,
                "Normal",
                "ReplicaMoved",
                f"replica {record.pod} moved off {record.from_node} to free the GPU node",
            )
            self.state.moves_completed += 1
            if self.metrics is not None:
                self.metrics.record_move(ns, name)
            self._note(f"{ns}/{name}: retired {record.pod} from {record.from_node}")
            return False
        if step is MoveStep.TIMED_OUT:
            updated = await self._set_move(live, None, "replacement not ready in time; move abandoned")
            await rec.reconcile(self.kube, updated, self.config)
            await events.post(
                self.kube,
                live,
                "Warning",
                "MoveTimedOut",
                f"replacement for {record.pod} not ready after {MOVE_TIMEOUT_S:.0f}s",
            )
            return False
        # MoveStep.WAIT. The surge is applied by the reconcile that follows writing status.move; if that
        # reconcile never ran (the pass failed in between), nothing else would apply it, since kopf does not
        # react to status changes: so re-run it whenever fewer pods than desired + the surge exist. The
        # apply is idempotent, and a surge already applied is not applied twice.
        live_pods = sum(1 for p in pods if not pod_terminating(p))
        if live_pods < desired + 1:
            await rec.reconcile(self.kube, live, self.config)
        return True

    async def _none_in_flight(self) -> bool:
        """A fresh read before a batch starts: no move is in flight (the view may not show one yet: one
        just started, or one from before a restart). Read once per batch, not per move: only the leader
        (the Lease holder) starts moves, so none can begin between this read and the batch's own."""
        moving = any(_has_move(m) for m in await self.listed.modelservices())
        if moving or pool_moves.in_flight(await self.listed.pods()):
            self._note("plan is stale: a move is in flight; replanning next pass")
            return False
        return True

    async def _still_valid(self, move: pc.Move, claimed: Mapping[str, int]) -> Mapping[str, Any] | None:
        """Re-check a planned move against a fresh read before acting on it (the plan came from lists
        taken at the start of the pass): the source pod still runs Ready on its node, and the target
        still takes new replicas and has room for the replacement, counting the GPUs of the replacements
        this pass already sent there (`claimed`, per target node). Returns the source pod as read, which
        the move then acts on, or None where the plan is stale."""
        # A ModelService's key is "<ns>/<name>", a pool pod's "pool:<ns>/<pool GPU>".
        ns = move.service.removeprefix(pool_moves.KEY_PREFIX).split("/", 1)[0]
        source = await self.kube.get_or_none(PODS, move.pod, ns)
        if (
            source is None
            or pod_terminating(source)
            or not pod_ready(source)
            or (source.get("spec") or {}).get("nodeName") != move.from_node
        ):
            self._note(f"plan for {move.pod} is stale: the source changed; replanning next pass")
            return None
        target = await self.kube.get_or_none(NODES, move.to_node)
        if target is None:
            self._note(f"plan for {move.pod} is stale: node {move.to_node} is gone")
            return None
        on_target = await self.kube.list_objects(PODS, field_selector=f"spec.nodeName={move.to_node}")
        # Replacements this pass already started for this node may not be bound yet: count them (a bound
        # one is then counted twice, which can only defer a move to the next plan).
        used = sum(pod_gpus(p) for p in on_target if not pod_terminating(p)) + claimed.get(move.to_node, 0)
        view = node_view(target, used)
        tainted = any(t.get("key") == TAINT_KEY for t in node_taints(target))
        if view.draining or view.protected or tainted or view.gpu_capacity - used < move.gpus:
            self._note(f"plan for {move.pod} is stale: node {move.to_node} no longer fits it")
            return None
        return source

    async def _start_move(
        self, move: pc.Move, msvcs: Sequence[Mapping[str, Any]], reason: str, now: float
    ) -> None:
        """Record a ModelService replica's move in its status; the reconcile that follows surges."""
        ns, name = move.service.split("/", 1)
        msvc = next(m for m in msvcs if m["metadata"]["namespace"] == ns and m["metadata"]["name"] == name)
        record = MoveRecord(move.pod, move.from_node, move.to_node, now)
        updated = await self._set_move(msvc, record.to_status(), f"moving {move.pod} off {move.from_node}")
        await rec.reconcile(self.kube, updated, self.config)
        await events.post(
            self.kube,
            msvc,
            "Normal",
            "ConsolidationMove",
            f"starting a replacement for {move.pod} to empty node {move.from_node} ({reason})",
        )
        self._note(f"{move.service}: moving {move.pod} {move.from_node} -> {move.to_node}")

    def _watched(self, obj: Mapping[str, Any]) -> bool:
        return not self.config.namespaces or obj["metadata"].get("namespace") in self.config.namespaces

    async def run_once(self, now: float) -> pc.ConsolidationPlan | None:
        plan = await self._pass(now)
        if self.metrics is not None:
            self.metrics.record_pass("consolidation")
        return plan

    async def _pass(self, now: float) -> pc.ConsolidationPlan | None:
        msvcs = await self.view.modelservices()
        # Every namespace's GPU pods, also when namespaced: another tenant's GPU pods fill a node as much
        # as ours, and a plan blind to them would surge replicas onto nodes that have no room.
        pods = await self.view.pods()
        nodes = await self.view.nodes()
        if msvcs is None or pods is None or nodes is None:
            self._note("cluster view not synced yet; planning next pass")
            return None
        # 1. Finish what is in flight (one node's moves at a time, cluster-wide, pool pods' included).
        in_flight = False
        for msvc in msvcs:
            if _has_move(msvc):
                in_flight = await self._progress(msvc, now) or in_flight
        pool_moving = pool_moves.in_flight(pods)
        for pod in pool_moving:
            in_flight = await self.pools.progress(pod, now) or in_flight
        if in_flight or pool_moving or any(_has_move(m) for m in msvcs):
            # A move closed this pass: its source is about to be removed by the ReplicaSet, by its lowest
            # deletion cost. Planning now would rewrite that cost before the ReplicaSet acts, so the next
            # pass plans, from a picture without the retired pod.
            return None
        movable = movable_services(msvcs, pods)
        snapshot = build_snapshot(nodes, pods, movable, now)
        plan = pc.plan(snapshot, now, replace(self.limits, last_move_at=self.state.last_move_at))
        ours = [p for p in pods if pod_service(p) and self._watched(p) and not pod_terminating(p)]
        await self._set_deletion_costs(ours, plan.deletion_costs)
        # 2. Taints follow the plan: nodes to empty are closed to new replicas, others reopened. A closed
        # node that is empty now stays closed for the node autoscaler to remove, unless a replica of ours
        # is waiting for room (then every closed node reopens rather than leave it Pending).
        by_name = {n["metadata"]["name"]: n for n in nodes}
        allocated = {n.name: n.gpu_allocated for n in snapshot.nodes}
        waiting = any(not (p.get("spec") or {}).get("nodeName") for p in ours)
        for name, node in by_name.items():
            tainted = any(t.get("key") == TAINT_KEY for t in node_taints(node))
            emptied = tainted and allocated.get(name, 0) == 0 and not waiting
            wanted = name in plan.emptied_nodes or emptied
            if tainted != wanted:
                await self._taint(node, wanted)
                self._note(f"{'closed' if wanted else 'reopened'} node {name}")
        # 3. Start the next node's moves together, each only after a fresh read still bears it out. The
        # first stale one ends the batch: what it would have moved is planned again once these finish.
        batch = pc.batch(plan.moves)
        if not batch or not await self._none_in_flight():
            return plan
        claimed: dict[str, int] = {}
        for move in batch:
            source = await self._still_valid(move, claimed)
            if source is None:
                break
            if move.service.startswith(pool_moves.KEY_PREFIX):
                if not await self.pools.start(move, source, now):
                    break
            else:
                await self._start_move(move, msvcs, plan.reason, now)
            claimed[move.to_node] = claimed.get(move.to_node, 0) + move.gpus
            self.state.last_move_at = now
            self.state.moves_started += 1
        return plan
