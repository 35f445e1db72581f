"""Operator configuration from the environment (the chart sets these on the operator Deployment)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


@dataclass(frozen=True)
class OperatorConfig:
    #: Prometheus HTTP API base URL; unset means metrics are scraped from pods directly.
    prometheus_url: str | None = None
    #: Scrape the serving pods' agents directly when no Prometheus is configured (opt in: the operator
    #: then connects to pod IPs).
    scrape_pods: bool = False
    #: Scheduler profile for serving pods, e.g. a MostAllocated bin-packing profile installed by the chart.
    scheduler_name: str | None = None
    #: Grid carbon intensity used for status.gramsCO2e unless a ModelService overrides it.
    carbon_intensity_g_per_kwh: float = 400.0
    #: Seconds between level-based reconciles of every ModelService (drift repair, autoscaling, status).
    reconcile_interval_s: float = 15.0
    #: Run the cluster-wide consolidation loop at all.
    consolidation_enabled: bool = True
    #: Seconds between consolidation moves (one active operator only).
    consolidation_interval_s: float = 30.0
    #: Rate window (s) for requests/s and energy over time; at least four scrape intervals.
    metrics_window_s: float = 60.0
    #: Metrics older than this are stale: scaling holds instead of acting on them.
    metrics_stale_after_s: float = 120.0
    #: Port of the operator's own Prometheus metrics (0 disables the endpoint).
    metrics_port: int = 9090
    #: Namespace of the operator's Lease for the one-active consolidation loop.
    lease_namespace: str = "default"
    #: Namespaces to watch; empty means the whole cluster.
    namespaces: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls) -> OperatorConfig:
        namespaces = tuple(n for n in os.environ.get("GREENSERVE_NAMESPACES", "").split(",") if n)
        return cls(
            prometheus_url=os.environ.get("GREENSERVE_PROMETHEUS_URL") or None,
            scheduler_name=os.environ.get("GREENSERVE_SCHEDULER_NAME") or None,
            scrape_pods=os.environ.get("GREENSERVE_SCRAPE_PODS", "").lower() in {"1", "true", "yes"},
            carbon_intensity_g_per_kwh=_env_float("GREENSERVE_CARBON_INTENSITY", 400.0),
            reconcile_interval_s=_env_float("GREENSERVE_RECONCILE_INTERVAL", 15.0),
            consolidation_enabled=os.environ.get("GREENSERVE_CONSOLIDATION", "true").lower()
            not in {"0", "false", "no"},
            consolidation_interval_s=_env_float("GREENSERVE_CONSOLIDATION_INTERVAL", 30.0),
            metrics_window_s=_env_float("GREENSERVE_METRICS_WINDOW", 60.0),
            metrics_stale_after_s=_env_float("GREENSERVE_METRICS_STALE_AFTER", 120.0),
            metrics_port=int(_env_float("GREENSERVE_METRICS_PORT", 9090)),
            lease_namespace=os.environ.get("POD_NAMESPACE")
            or os.environ.get("GREENSERVE_LEASE_NAMESPACE")
            or "default",
            namespaces=namespaces,
        )
