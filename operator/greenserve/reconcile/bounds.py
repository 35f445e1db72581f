"""The replica count the operator may apply: the spec's bounds, then the operator's GPU cap.

The cap (`maxGpusPerModelService`, like a ResourceQuota on one object) wins over `minReplicas`: a
ModelService asking for more GPUs than it may hold gets as many replicas as fit, a Warning, and a
`Scaling` reason that says so, never a flood of pending pods.
"""

from __future__ import annotations

from dataclasses import dataclass

from greenserve.api.v1alpha1 import ModelServiceSpec
from greenserve.config import OperatorConfig


@dataclass(frozen=True)
class Bounded:
    replicas: int
    capped_from: int | None = None  # the count within the spec's bounds, when the cap lowered it


def replica_cap(spec: ModelServiceSpec, config: OperatorConfig) -> int | None:
    """Most replicas the GPU cap allows (None: no cap, or a CPU service)."""
    if config.max_gpus_per_modelservice <= 0 or spec.gpu.count <= 0:
        return None
    return config.max_gpus_per_modelservice // spec.gpu.count


def bounded(spec: ModelServiceSpec, config: OperatorConfig, replicas: int) -> Bounded:
    within = max(spec.scaling.min_replicas, min(spec.scaling.max_replicas, replicas))
    cap = replica_cap(spec, config)
    if cap is not None and within > cap:
        return Bounded(cap, within)
    return Bounded(within)
