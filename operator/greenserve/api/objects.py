"""Accessors of Pods and Nodes as the API server returns them (plain dicts): the one place that says what
Ready, terminating or a pod's GPUs mean, for the builders, the status, the tick and consolidation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from greenserve.api import constants as c


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """The pod's Ready condition is True (its containers passed their readiness probes)."""
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(x.get("type") == "Ready" and x.get("status") == "True" for x in conds)


def pod_terminating(pod: Mapping[str, Any]) -> bool:
    """Being deleted, or finished: it no longer counts as a replica."""
    meta = pod.get("metadata") or {}
    return bool(meta.get("deletionTimestamp")) or (pod.get("status") or {}).get("phase") in (
        "Succeeded",
        "Failed",
    )


def pod_gpus(pod: Mapping[str, Any]) -> int:
    """GPUs the pod's containers hold (their nvidia.com/gpu limits)."""
    total = 0
    for ctr in (pod.get("spec") or {}).get("containers") or []:
        limits = (ctr.get("resources") or {}).get("limits") or {}
        total += int(limits.get(c.GPU_RESOURCE, 0) or 0)
    return total


def pod_service(pod: Mapping[str, Any]) -> str | None:
    """ "namespace/name" of the ModelService the pod serves, None for anyone else's pod."""
    meta = pod.get("metadata") or {}
    svc = (meta.get("labels") or {}).get(c.LABEL_MODELSERVICE)
    return f"{meta.get('namespace')}/{svc}" if svc else None


def node_gpus(node: Mapping[str, Any]) -> int:
    """Allocatable GPUs of a node (0: not a GPU node)."""
    return int(((node.get("status") or {}).get("allocatable") or {}).get(c.GPU_RESOURCE, 0) or 0)


def node_taints(node: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((node.get("spec") or {}).get("taints") or [])


def activation_demand(body: Mapping[str, Any]) -> float | None:
    """When the activator last held a request for this ModelService (Unix time), None without a readable
    mark (the annotation is written by the activator; anything else in it is ignored, not an error)."""
    raw = ((body.get("metadata") or {}).get("annotations") or {}).get(c.ANN_ACTIVATION_DEMAND)
    try:
        value = float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and value == value and value > 0 else None  # NaN never counts


def endpoints_ready(slices: Sequence[Mapping[str, Any]]) -> list[str]:
    """Addresses of the ready endpoints of EndpointSlices (a missing `ready` means ready, as in the API)."""
    out: list[str] = []
    for s in slices:
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready", True) is not False:
                out.extend(ep.get("addresses") or [])
    return out
