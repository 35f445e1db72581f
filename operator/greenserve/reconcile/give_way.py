"""Held replicas give way to the tick's scale-ups (policy/release.py) on the GPUs the cluster has now.

The metrics tick (reconcile/ticker.py) decides every ModelService in one pass. Where some of those
decisions add replicas and the GPUs free on the nodes those replicas may run on do not take them, the
node autoscaler would add a node; replicas that other ModelServices hold only for their stabilisation
window give way first (`release.release`). The scale-ups that wait for GPUs being freed (a released or
otherwise terminating pod still drains) are held back until those GPUs are free (`release.plan_scale_ups`),
so the node autoscaler never sees them pending for GPUs that are about to free. Replicas held as rise
headroom give way too, but only to replicas that some ModelService's load seen asks for (`Entry.bare`,
without the rise headroom) and that no node holds: its pods already pending, and its scale-up's new ones
(`release.give_way`). Each ModelService's pods bound to a node are counted from the same view.

GPUs per node selector (`manifests.builders.node_selector`: the GPU product and the user's selector), from
consolidation's watch-fed view of every GPU node and pod (cluster/informer.py), counting every tenant's
pods:

* free now, per node: allocatable GPUs of each open node that matches, less every pod bound there,
  terminating ones included (they still hold their GPUs);
* being freed, per node: the GPUs of terminating pods on it, while within their grace period (a pod stuck
  past it, say behind a finalizer, frees nothing anyone can wait for);
* pending: the pods already waiting for such nodes, which take free GPUs before any new replica.

Per node, because a replica's GPUs are all on one node (policy/release.py `place`).

A node is open unless cordoned, closed by consolidation or an autoscaler's deletion taint, not ready, or
not yet registered. Nodes the autoscaler is still provisioning are not Nodes yet, so they count as
nothing: a release may then happen beside a node already on its way (the node is then left empty and the
autoscaler removes it). Without the view (consolidation off, or its watches not listed yet) nothing gives
way and the decisions apply as made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from greenserve.api import conditions as cond
from greenserve.api import constants as c
from greenserve.api.objects import node_gpus, node_taints, pod_gpus, pod_service, pod_terminating
from greenserve.policy import autoscaling as pa
from greenserve.policy import profile, release
from greenserve.reconcile.autoscale import Decision

SvcKey = tuple[str, str]

# Taints that keep every new pod off a node (besides spec.unschedulable).
CLOSED_TAINTS = frozenset(
    {
        c.TAINT_CONSOLIDATING,
        "ToBeDeletedByClusterAutoscaler",
        "DeletionCandidateOfClusterAutoscaler",
        "karpenter.sh/disrupted",
        "karpenter.sh/unregistered",
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    }
)


@dataclass(frozen=True)
class Entry:
    """One ModelService's decision this tick, as the give-way step reads it."""

    key: SvcKey
    current: int  # replicas applied (status.desiredReplicas)
    desired: int  # the decision's count
    ready: int
    gpus: int  # per replica
    selector: Mapping[str, str]  # its pods' nodeSelector
    wanted: int | None = None  # set while the stabilisation window alone holds `desired`
    held_until: float | None = None
    bare: int | None = None  # what the load seen asks for without the rise headroom (None: no reading)


def may_ask(e: Entry) -> bool:
    """Whether the entry may need GPUs this tick: a scale-up, or load seen beyond its ready replicas (some
    may wait for a node; `give_way` counts those bound to one from the pods)."""
    return e.desired > e.current or (e.bare is not None and e.bare > e.ready)


def _fits(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _open(node: Mapping[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    return not any(
        t.get("key") in CLOSED_TAINTS and t.get("effect") in ("NoSchedule", "NoExecute", None)
        for t in node_taints(node)
    )


def _draining(pod: Mapping[str, Any], now: float) -> bool:
    """Terminating and still within its grace period (deletionTimestamp is when it is killed)."""
    stamp = (pod.get("metadata") or {}).get("deletionTimestamp")
    if not stamp:
        return False
    try:
        return now < datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return False


@dataclass(frozen=True)
class Gpus:
    """GPUs for pods with one nodeSelector, per open node that matches it (the same order in both)."""

    free: list[int]  # free now
    freeing: list[int]  # held by pods that are draining
    pending: list[int]  # GPUs of each pod already pending for these nodes (no node yet)

    @property
    def later(self) -> list[int]:
        """Free once the draining pods have gone."""
        return [f + d for f, d in zip(self.free, self.freeing, strict=True)]


def gpus_for(
    selector: Mapping[str, str],
    nodes: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    now: float,
) -> Gpus:
    """The GPUs for pods with this nodeSelector, per node (see the module docstring)."""
    fitting = {
        n["metadata"]["name"]: n
        for n in nodes
        if node_gpus(n) > 0 and _fits((n.get("metadata") or {}).get("labels") or {}, selector)
    }
    open_nodes = sorted(name for name, n in fitting.items() if _open(n))
    index = {name: i for i, name in enumerate(open_nodes)}
    free = [node_gpus(fitting[name]) for name in open_nodes]
    freeing = [0] * len(open_nodes)
    pending: list[int] = []
    for pod in pods:
        gpus = pod_gpus(pod)
        if gpus == 0:
            continue
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if node:
            if node not in index or phase in ("Succeeded", "Failed"):
                continue
            free[index[node]] -= gpus
            if _draining(pod, now):
                freeing[index[node]] += gpus
        elif not pod_terminating(pod):
            pod_selector = (pod.get("spec") or {}).get("nodeSelector") or {}
            if any(
                _fits((fitting[n].get("metadata") or {}).get("labels") or {}, pod_selector)
                for n in open_nodes
            ):
                pending.append(gpus)  # it takes free GPUs before any new replica
    return Gpus([max(0, f) for f in free], freeing, pending)


def give_way(
    entries: Sequence[Entry],
    nodes: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    now: float,
) -> dict[SvcKey, int]:
    """The count each ModelService applies where it differs from its decision: held replicas released
    for the scale-ups that would need a node, and scale-ups held back for GPUs that are being freed."""
    groups: dict[tuple[tuple[str, str], ...], list[Entry]] = {}
    for e in entries:
        groups.setdefault(tuple(sorted(e.selector.items())), []).append(e)
    out: dict[SvcKey, int] = {}
    bound: dict[str, int] = {}  # each ModelService's pods on a node (ready or starting), not leaving
    for pod in pods:
        key = pod_service(pod)
        if key and (pod.get("spec") or {}).get("nodeName") and not pod_terminating(pod):
            bound[key] = bound.get(key, 0) + 1
    for selector, members in groups.items():
        ticks = [
            release.Tick(
                _name(e.key),
                e.current,
                e.desired,
                e.ready,
                bound.get(_name(e.key), 0),
                e.wanted,
                e.bare,
                e.held_until or 0.0,
                e.gpus,
            )
            for e in members
        ]
        if not release.asks(ticks):
            continue
        gpus = gpus_for(dict(selector), nodes, pods, now)
        released = release.tick_give_way(ticks, gpus.later, gpus.pending, now, profile.NODE_PROVISION_S)
        by_name = {_name(e.key): e for e in members}
        for name, n in released.items():
            out[by_name[name].key] = n
        freed = release.freed(ticks, released)
        ups = [u for t in ticks if (u := t.scale_up) is not None]
        asked = {u.key: u.desired for u in ups}
        plan = release.plan_scale_ups(ups, gpus.free + [0] * len(freed), gpus.later + freed, gpus.pending)
        for name, n in plan.items():
            if n != asked[name]:
                out[by_name[name].key] = n
    return out


def _name(key: SvcKey) -> str:
    return f"{key[0]}/{key[1]}"


def adjusted(decision: Decision, count: int) -> Decision:
    """`decision` with the count `give_way` set: a release (fewer) or a scale-up in part (the rest waits
    for GPUs being freed). Its stabilisation state is the decision's own: the window still remembers the
    held count, and the rest of a scale-up is asked for again on the next tick."""
    previous = decision.previous if decision.previous is not None else decision.desired
    if count < previous:
        reason = pa.RELEASED
        given = previous - count
        message = (
            f"{reason}, {given} replica(s) held for a load that may come (stabilisation window or rise "
            "headroom) give way to another ModelService's scale-up, which would otherwise wait for a new node"
        )
    else:
        reason = decision.intent.reason
        message = f"{reason}, {count} now; {decision.desired - count} more once GPUs being freed are free"
    status = decision.status
    if decision.previous is not None and count != decision.previous:
        status = status.model_copy(update={"last_scale_time": cond.now_rfc3339()})
    intent = replace(decision.intent, desired=count, reason=reason, message=message)
    return replace(decision, desired=count, intent=intent, status=status, wanted=None, held_until=None)
