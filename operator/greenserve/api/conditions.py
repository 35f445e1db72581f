"""metav1.Condition helpers: a typed `ConditionUpdate` in, the plain dicts stored in status.conditions out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"
SCALING: Final = "Scaling"
WARNINGS: Final = "Warnings"
CONSOLIDATING: Final = "Consolidating"

# Reasons (CamelCase, as the API conventions ask).
REASON_AVAILABLE: Final = "ReplicasAvailable"
REASON_PROGRESSING: Final = "ReplicasProgressing"
REASON_ROLLING_OUT: Final = "RollingOut"
REASON_STARTING: Final = "ReplicasStarting"
REASON_TERMINATING: Final = "ReplicasTerminating"
REASON_COMPLETE: Final = "Complete"
REASON_SCALED_TO_ZERO: Final = "ScaledToZero"
REASON_SHARED_POOL: Final = "ServedFromSharedPool"
REASON_LOADING_IN_POOL: Final = "LoadingInSharedPool"
REASON_NO_FAILURE: Final = "NoFailure"
REASON_NO_WARNINGS: Final = "NoWarnings"
REASON_MULTIPLE_WARNINGS: Final = "MultipleWarnings"
# Faults: each posts one Warning Event when it appears (see reconcile/modelservice.py).
REASON_INVALID_SPEC: Final = "InvalidSpec"
REASON_UNSUPPORTED_STORAGE: Final = "UnsupportedStorageUri"
REASON_APPLY_FAILED: Final = "ApplyFailed"
REASON_CONFLICTING_OBJECT: Final = "ConflictingObject"
REASON_UNSCHEDULABLE: Final = "Unschedulable"
REASON_MODEL_LOAD_FAILED: Final = "ModelLoadFailed"
REASON_MODEL_LOAD_TIMEOUT: Final = "ModelLoadTimeout"
REASON_OOM_KILLED: Final = "OOMKilled"
REASON_IMAGE_PULL_FAILED: Final = "ImagePullFailed"
REASON_CONTAINER_CONFIG: Final = "ContainerConfigError"
REASON_POD_SECURITY: Final = "PodSecurityRejected"
REASON_QUOTA: Final = "QuotaExceeded"
REASON_REPLICA_FAILURE: Final = "ReplicaFailure"
REASON_POD_EVICTED: Final = "PodEvicted"
REASON_POD_FAILED: Final = "PodFailed"
REASON_PROGRESS_DEADLINE: Final = "ProgressDeadlineExceeded"
REASON_GPU_CAP: Final = "GpuCapReached"
# Scaling (Normal: SuccessfulRescale events).
REASON_SCALE_UP: Final = "ScaleUp"
REASON_SCALE_DOWN: Final = "ScaleDown"
REASON_SCALE_COMPLETE: Final = "ScaleComplete"  # reached, seen on a Deployment event between two ticks
EVENT_RESCALE: Final = "SuccessfulRescale"

ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class ConditionUpdate:
    """What one pass says about one condition; `set_condition` turns it into a metav1.Condition."""

    type: str
    status: bool | Literal["Unknown"]
    reason: str
    message: str = ""

    @property
    def status_str(self) -> ConditionStatus:
        if self.status == "Unknown":
            return "Unknown"
        return "True" if self.status else "False"


def now_rfc3339(now: dt.datetime | None = None) -> str:
    moment = now or dt.datetime.now(dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def get_condition(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for cond in conditions or ():
        if cond.get("type") == type_:
            return cond
    return None


def is_true(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> bool:
    found = get_condition(conditions, type_)
    return found is not None and found.get("status") == "True"


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    update: ConditionUpdate,
    observed_generation: int | None,
    now: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Return conditions with `update` applied; lastTransitionTime changes only when the status changes."""
    status_str = update.status_str
    previous = get_condition(conditions, update.type)
    transition = (
        str(previous["lastTransitionTime"])
        if previous is not None
        and previous.get("status") == status_str
        and previous.get("lastTransitionTime")
        else now_rfc3339(now)
    )
    updated: dict[str, Any] = {
        "type": update.type,
        "status": status_str,
        "reason": update.reason,
        "message": update.message,
        "lastTransitionTime": transition,
    }
    if observed_generation is not None:
        updated["observedGeneration"] = observed_generation
    result = [dict(c) for c in conditions or () if c.get("type") != update.type]
    result.append(updated)
    return sorted(result, key=lambda c: str(c["type"]))


def restamped(
    conditions: Sequence[Mapping[str, Any]] | None, observed_generation: int | None
) -> list[dict[str, Any]]:
    """Copies of `conditions`, each carrying `observed_generation` (unchanged when it is None)."""
    out = [dict(c) for c in conditions or ()]
    if observed_generation is not None:
        for c in out:
            c["observedGeneration"] = observed_generation
    return out


def same_condition(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """True when two conditions say the same thing (ignoring the transition time)."""
    if a is None or b is None:
        return a is b
    keys = ("type", "status", "reason", "message", "observedGeneration")
    return all(a.get(k) == b.get(k) for k in keys)
