"""Spare GPU slots to keep free for bursts: pure.

A replica that finds no free GPU waits for a node to boot (minutes) before its model even starts to load,
so a packed cluster pays for every burst twice. Keeping a few free slots, as the cluster-proportional
overprovisioner does with low-priority "balloon" pods (preempted at once by real replicas), bounds that
wait to the model load. A free slot costs little: its GPU stays bare (P_bare in
policy/energy.py) and it only keeps a node when that node is otherwise needed anyway or the slots do
not fit elsewhere.

`spare_gpus` = max(minimum, ceil(fraction * GPUs in use + growth)), where growth is the GPUs a sustained
rise in demand will need within the time a new node takes to become usable (provisioning + cold start),
from `autoscaling.sustained_trend` per service.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def growth_gpus(trends: Iterable[tuple[float, float, float, int]], horizon_s: float) -> float:
    """GPUs the services' rising demand adds within `horizon_s`.

    Each item: (trend in requests/s per second, capacity per replica in requests/s, target utilization,
    GPUs per replica). Falling or flat demand adds nothing.
    """
    total = 0.0
    for trend, capacity_rps, target, gpus in trends:
        if trend > 0 and capacity_rps > 0:
            total += trend * horizon_s / (capacity_rps * min(1.0, max(0.05, target))) * gpus
    return total


def spare_gpus(in_use_gpus: int, fraction: float, minimum: int = 0, growth: float = 0.0) -> int:
    """Free GPU slots to keep on Ready or provisioning nodes (see the module docstring)."""
    if in_use_gpus <= 0 and growth <= 0:
        return max(0, minimum)
    want = max(0.0, fraction) * max(0, in_use_gpus) + max(0.0, growth)
    return max(max(0, minimum), math.ceil(want - 1e-9))
