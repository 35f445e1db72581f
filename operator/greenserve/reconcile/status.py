"""Pure status computation: observed Deployment and pods in, ModelService status fields out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from greenserve.api import conditions as cond


@dataclass(frozen=True)
class Observed:
    """What the operator saw of the objects it owns."""

    desired: int
    deployment: Mapping[str, Any] | None
    pods: Sequence[Mapping[str, Any]] = ()
    gpus_per_replica: int = 0


def _unschedulable_message(pods: Sequence[Mapping[str, Any]]) -> str | None:
    for pod in pods:
        if pod.get("metadata", {}).get("deletionTimestamp"):
            continue
        for c in pod.get("status", {}).get("conditions", []) or []:
            if (
                c.get("type") == "PodScheduled"
                and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"
            ):
                return f"pod {pod['metadata']['name']}: {c.get('message', 'unschedulable')}"
    return None


def ready_condition(obs: Observed) -> tuple[bool, str, str]:
    """(ready, reason, message) for the Ready condition."""
    dep = obs.deployment
    if dep is None:
        return False, cond.REASON_PROGRESSING, "Deployment not created yet"
    st = dep.get("status", {}) or {}
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    rolled = int(st.get("observedGeneration") or 0) >= int(dep.get("metadata", {}).get("generation") or 0)
    if obs.desired == 0:
        return True, cond.REASON_SCALED_TO_ZERO, "scaled to zero while idle"
    if rolled and ready >= obs.desired and updated >= obs.desired:
        return True, cond.REASON_AVAILABLE, f"{ready}/{obs.desired} replicas ready"
    blocked = _unschedulable_message(obs.pods)
    if blocked:
        return False, cond.REASON_UNSCHEDULABLE, blocked
    return False, cond.REASON_PROGRESSING, f"{ready}/{obs.desired} replicas ready, {updated} updated"


def status_fields(obs: Observed) -> dict[str, Any]:
    st = (obs.deployment or {}).get("status", {}) or {}
    ready = int(st.get("readyReplicas") or 0)
    return {
        "replicas": int(st.get("replicas") or 0),
        "readyReplicas": ready,
        "desiredReplicas": obs.desired,
        "gpus": ready * obs.gpus_per_replica,
    }
