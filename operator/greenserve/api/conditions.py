"""metav1.Condition helpers: pure functions over the plain dicts stored in status.conditions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Final

READY: Final = "Ready"
CONSOLIDATING: Final = "Consolidating"
SCALING: Final = "Scaling"

# Reasons (CamelCase, as the API conventions ask).
REASON_AVAILABLE: Final = "ReplicasAvailable"
REASON_PROGRESSING: Final = "ReplicasProgressing"
REASON_SCALED_TO_ZERO: Final = "ScaledToZero"
REASON_INVALID_SPEC: Final = "InvalidSpec"
REASON_UNSUPPORTED_STORAGE: Final = "UnsupportedStorageUri"
REASON_APPLY_FAILED: Final = "ApplyFailed"
REASON_CONFLICTING_OBJECT: Final = "ConflictingObject"
REASON_UNSCHEDULABLE: Final = "Unschedulable"


def now_rfc3339(now: dt.datetime | None = None) -> str:
    moment = now or dt.datetime.now(dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def get_condition(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for cond in conditions or ():
        if cond.get("type") == type_:
            return cond
    return None


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    observed_generation: int | None,
    now: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Return conditions with `type_` set; lastTransitionTime changes only when the status changes."""
    status_str = status if isinstance(status, str) else ("True" if status else "False")
    previous = get_condition(conditions, type_)
    transition = (
        str(previous["lastTransitionTime"])
        if previous is not None
        and previous.get("status") == status_str
        and previous.get("lastTransitionTime")
        else now_rfc3339(now)
    )
    updated: dict[str, Any] = {
        "type": type_,
        "status": status_str,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if observed_generation is not None:
        updated["observedGeneration"] = observed_generation
    result = [dict(c) for c in conditions or () if c.get("type") != type_]
    result.append(updated)
    return sorted(result, key=lambda c: str(c["type"]))


def same_condition(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """True when two conditions say the same thing (ignoring the transition time)."""
    if a is None or b is None:
        return a is b
    keys = ("type", "status", "reason", "message", "observedGeneration")
    return all(a.get(k) == b.get(k) for k in keys)
