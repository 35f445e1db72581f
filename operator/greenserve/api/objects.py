"""Accessors of Pods and Nodes as the API server returns them (plain dicts): the one place that says what
Ready, terminating or a pod's GPUs mean, for the builders, the status, the tick and consolidation."""

from __future__ import annotations

from collections.abc import Mapping
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
