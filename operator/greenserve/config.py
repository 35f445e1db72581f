"""Operator configuration from the environment (the chart sets these on the operator Deployment)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes"}:
        return True
    if raw in {"0", "false", "no"}:
        return False
    raise ValueError(f"{name}={raw!r}: expected true or false")


def _env_headers(name: str) -> tuple[tuple[str, str], ...]:
    """A JSON object of header name -> value, e.g. {"X-Scope-OrgID": "tenant-1"}."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return ()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name}: not JSON ({exc.msg}); expected an object of header: value") from exc
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{name}: expected a JSON object of string header names to string values")
    return tuple(value.items())


def _env_ref(name: str) -> tuple[str, str] | None:
    """A "namespace/name" reference, None when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    namespace, sep, obj = raw.partition("/")
    if not sep or not namespace or not obj or "/" in obj:
        raise ValueError(f"{name}={raw!r}: expected namespace/name")
    return namespace, obj


@dataclass(frozen=True)
class OperatorConfig:
    #: Prometheus HTTP API base URL; unset means metrics are scraped from pods directly.
    prometheus_url: str | None = None
    #: Bearer token file for Prometheus, re-read when it changes (e.g. a projected ServiceAccount token).
    prometheus_bearer_token_file: str | None = None
    #: Basic auth for Prometheus: the username and a file holding the password (a mounted Secret).
    prometheus_username: str | None = None
    prometheus_password_file: str | None = None
    #: CA bundle (PEM file) that signs an https Prometheus' certificate.
    prometheus_ca_file: str | None = None
    #: Skip TLS verification of Prometheus (testing only).
    prometheus_insecure_skip_verify: bool = False
    #: Extra headers on every Prometheus query, e.g. X-Scope-OrgID for Mimir, Cortex or Thanos tenants.
    prometheus_headers: tuple[tuple[str, str], ...] = ()
    #: Scrape the serving pods' agents directly when no Prometheus is configured (opt in: the operator
    #: then connects to pod IPs).
    scrape_pods: bool = False
    #: Scheduler profile for serving pods, e.g. a MostAllocated bin-packing profile installed by the chart.
    scheduler_name: str | None = None
    #: The serving agent's REST proxy (GREENSERVE_AGENT_FRONT); off: TF Serving answers REST itself.
    agent_front: bool = True
    #: Grid carbon intensity used for status.gramsCO2e unless a ModelService overrides it.
    carbon_intensity_g_per_kwh: float = 400.0
    #: Seconds between metrics ticks: one fleet-wide metrics read, acting only where a decision changes.
    reconcile_interval_s: float = 15.0
    #: At most this often (s) a ModelService's status is rewritten for slowly moving figures alone (power,
    #: energy, CO2e, request rate); decisions and condition changes are written at once.
    status_refresh_s: float = 300.0
    #: Safety net (s, jittered): the whole level-based reconcile of each ModelService even if nothing
    #: seems to have changed. Drift of owned objects is repaired at once from watch events, not by this.
    full_resync_s: float = 900.0
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
    #: Namespace of the leader Lease: only its holder runs the metrics tick and consolidation.
    lease_namespace: str = "default"
    #: Most GPUs one ModelService may hold (replicas x gpu.count); 0 means no cap.
    max_gpus_per_modelservice: int = 0
    #: Cluster DNS domain in status.url (http://<name>.<namespace>.svc.<domain>:8501).
    cluster_domain: str = "cluster.local"
    #: The activator's Service ("namespace/name", the chart's): Services of minReplicas 0 ModelServices
    #: route to its pods while no replica is ready. None: scale to zero without holding requests.
    activator_service: tuple[str, str] | None = None
    #: Namespaces to watch; empty means the whole cluster.
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    #: Shared GPU pools (README, "Shared GPU pools"): GPU memory of one pool GPU, to pack models by
    #: spec.gpu.memory (a quantity).
    pool_gpu_memory: str = "16Gi"
    #: Most GPUs (pool pods) one pool may hold; a model the placement would put on a further GPU keeps its
    #: own replicas (PoolFull).
    pool_max_gpus: int = 64
    #: The pool pods' container requests and memory limit (quantities).
    pool_cpu_request: str = "1"
    pool_memory_request: str = "2Gi"
    pool_memory_limit: str = "16Gi"
    #: Seconds between the pool model server's reads of its model list.
    pool_poll_seconds: int = 2
    #: Seconds between removing a model's routing label from the pool pods and unloading it: endpoint
    #: removal reaches every proxy first.
    pool_unload_grace_s: float = 10.0
    #: Where the operator reads a model's status on a pool pod ({ip}, {port}, {model}, {namespace}, {pod}).
    model_status_url: str = "http://{ip}:{port}/v1/models/{model}"

    @classmethod
    def from_env(cls) -> OperatorConfig:
        namespaces = tuple(n for n in os.environ.get("GREENSERVE_NAMESPACES", "").split(",") if n)
        return cls(
            prometheus_url=os.environ.get("GREENSERVE_PROMETHEUS_URL") or None,
            prometheus_bearer_token_file=os.environ.get("GREENSERVE_PROMETHEUS_BEARER_TOKEN_FILE") or None,
            prometheus_username=os.environ.get("GREENSERVE_PROMETHEUS_USERNAME") or None,
            prometheus_password_file=os.environ.get("GREENSERVE_PROMETHEUS_PASSWORD_FILE") or None,
            prometheus_ca_file=os.environ.get("GREENSERVE_PROMETHEUS_CA_FILE") or None,
            prometheus_insecure_skip_verify=_env_bool("GREENSERVE_PROMETHEUS_INSECURE_SKIP_VERIFY", False),
            prometheus_headers=_env_headers("GREENSERVE_PROMETHEUS_HEADERS"),
            scheduler_name=os.environ.get("GREENSERVE_SCHEDULER_NAME") or None,
            agent_front=_env_bool("GREENSERVE_AGENT_FRONT", True),
            scrape_pods=os.environ.get("GREENSERVE_SCRAPE_PODS", "").lower() in {"1", "true", "yes"},
            carbon_intensity_g_per_kwh=_env_float("GREENSERVE_CARBON_INTENSITY", 400.0),
            reconcile_interval_s=_env_float("GREENSERVE_RECONCILE_INTERVAL", 15.0),
            status_refresh_s=_env_float("GREENSERVE_STATUS_REFRESH", 300.0),
            full_resync_s=_env_float("GREENSERVE_FULL_RESYNC", 900.0),
            consolidation_enabled=os.environ.get("GREENSERVE_CONSOLIDATION", "true").lower()
            not in {"0", "false", "no"},
            consolidation_interval_s=_env_float("GREENSERVE_CONSOLIDATION_INTERVAL", 30.0),
            metrics_window_s=_env_float("GREENSERVE_METRICS_WINDOW", 60.0),
            metrics_stale_after_s=_env_float("GREENSERVE_METRICS_STALE_AFTER", 120.0),
            metrics_port=int(_env_float("GREENSERVE_METRICS_PORT", 9090)),
            lease_namespace=os.environ.get("POD_NAMESPACE")
            or os.environ.get("GREENSERVE_LEASE_NAMESPACE")
            or "default",
            max_gpus_per_modelservice=int(_env_float("GREENSERVE_MAX_GPUS_PER_MODELSERVICE", 0)),
            cluster_domain=os.environ.get("GREENSERVE_CLUSTER_DOMAIN") or "cluster.local",
            namespaces=namespaces,
            activator_service=_env_ref("GREENSERVE_ACTIVATOR_SERVICE"),
            pool_gpu_memory=os.environ.get("GREENSERVE_POOL_GPU_MEMORY") or "16Gi",
            pool_max_gpus=max(1, int(_env_float("GREENSERVE_POOL_MAX_GPUS", 64))),
            pool_cpu_request=os.environ.get("GREENSERVE_POOL_CPU_REQUEST") or "1",
            pool_memory_request=os.environ.get("GREENSERVE_POOL_MEMORY_REQUEST") or "2Gi",
            pool_memory_limit=os.environ.get("GREENSERVE_POOL_MEMORY_LIMIT") or "16Gi",
            pool_poll_seconds=int(_env_float("GREENSERVE_POOL_POLL_SECONDS", 2)),
            pool_unload_grace_s=_env_float("GREENSERVE_POOL_UNLOAD_GRACE", 10.0),
            model_status_url=os.environ.get("GREENSERVE_MODEL_STATUS_URL")
            or "http://{ip}:{port}/v1/models/{model}",
        )
