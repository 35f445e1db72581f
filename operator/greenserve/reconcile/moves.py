"""What a ModelService replica's move (reconcile/consolidator.py) and a pool pod's move
(reconcile/pool_moves.py) share: the steps of surge, wait, retire, and how long a replacement may take."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from greenserve.api import constants as c

MOVE_TIMEOUT_S = 300.0


class MoveStep(enum.Enum):
    """Where an in-flight move stands; every step is decided afresh from the API's state, so an operator
    restarted at any point takes the same step again (each is idempotent)."""

    WAIT = "ReplacementPending"  # started: the surge runs, the replacement is not Ready yet
    RETIRE = "ReplacementReady"  # the replacement serves: retire the source and close the move
    SOURCE_GONE = "SourceGone"  # the source went away by itself (scale-in, eviction): close the move
    TIMED_OUT = "TimedOut"  # no Ready replacement within MOVE_TIMEOUT_S: abandon, the source stays


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def do_not_disrupt(pod: Mapping[str, Any], now: float) -> bool:
    """Karpenter's pod annotation: "true" protects; a duration (e.g. "15m", greenserve's warm-up value)
    protects until that long after the pod started; anything unparsable protects (the safe reading)."""
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(c.ANN_KARPENTER_DO_NOT_DISRUPT, "")
    if value in ("", "false"):
        return False
    m = _DURATION.match(value)
    if value == "true" or m is None or not any(m.groups()):
        return True
    h, mi, se = (int(g or 0) for g in m.groups())
    started = (pod.get("status") or {}).get("startTime") or pod["metadata"].get("creationTimestamp")
    if not started:
        return True
    start = datetime.fromisoformat(str(started).replace("Z", "+00:00")).timestamp()
    return now < start + 3600 * h + 60 * mi + se
