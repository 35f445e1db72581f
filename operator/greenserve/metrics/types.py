"""Typed samples the metrics sources return. A value that could not be read is ``None``, never 0."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from greenserve import contract as k

SourceKind = Literal["prometheus/agent", "prometheus/dcgm", "scrape", "none"]


@dataclass(frozen=True)
class PodRef:
    """A serving pod, as the operator's index knows it. ``ip`` is needed for direct scraping only."""

    namespace: str
    name: str
    ip: str | None = None
    node: str | None = None
    metrics_port: int = k.AGENT_METRICS_PORT
    # Only a Ready replica must report: one still scheduling or loading its model has no series yet, and
    # its absence must not turn the whole reading stale (that would hold a scale-up mid-ramp).
    ready: bool = True


@dataclass(frozen=True)
class PooledModel:
    """A ModelService's model in a shared GPU pool (reconcile/pools.py): read from the pool pods'
    per-model series (metrics/pooled.py). `memory_bytes` is its GPU memory need (spec.gpu.memory), its
    weight in the split of the pool GPU's idle energy."""

    pool: str
    model: str  # its TF Serving model name in the pool
    pods: tuple[PodRef, ...]  # the pool's pods
    memory_bytes: int = 0


@dataclass(frozen=True)
class ServiceMetrics:
    """GPU power, energy and traffic of one ModelService, summed over its replicas.

    * ``power_w``: current GPU power of all replicas' GPUs.
    * ``energy_j``: sum of the replicas' energy counters (each counts from its agent's start, or from the
      driver load for DCGM). Use :func:`greenserve.metrics.carbon.accumulate_energy` with ``pod_energy_j``
      for a cumulative figure that survives replicas coming and going.
    * ``energy_window_j``, ``requests_per_s``, ``joules_per_request``, ``latency_p95_ms``: over the last
      ``window_s`` seconds. ``joules_per_request`` is None when no request was served in the window.
    * ``sampled_at``: Unix time of the oldest of the newest samples used; ``stale`` when that is older than
      the source's threshold or nothing was found. ``missing`` names the fields (or ``pod:<name>``) that
      could not be read.
    """

    namespace: str
    name: str
    power_w: float | None = None
    energy_j: float | None = None
    energy_window_j: float | None = None
    requests_per_s: float | None = None
    joules_per_request: float | None = None
    gpu_utilization: float | None = None
    latency_p95_ms: float | None = None
    # Requests in flight through the agents now (None without agents: plain TF Serving has no gauge).
    inflight_requests: float | None = None
    # Mean request rates of adjacent windows of window_s, newest first (index 0 is requests_per_s); as
    # many as the source has, for the policy's sustained-rise projection.
    rate_history: tuple[float, ...] = ()
    replicas_reporting: int = 0
    gpus: int | None = None
    simulated: bool | None = None
    pod_energy_j: Mapping[str, float] = field(default_factory=dict)
    window_s: float = 0.0
    sampled_at: float | None = None
    stale: bool = True
    missing: tuple[str, ...] = ()
    source: SourceKind = "none"
