"""The metrics contract shared by the serving-image agent and the operator.

Every metric name, label key and unit the agent exports and the operator queries lives here, so the two
sides cannot drift apart. This module is pure (no pynvml, no prometheus_client) and the agent imports it
as ``greenserve.contract``.

Labels and where they come from
-------------------------------
* ``gpu`` (NVML index as a string), ``uuid``, ``name`` (product name), ``simulated`` ("true"/"false") and
  ``model`` are written by the agent itself.
* ``namespace``, ``pod``, ``node`` and ``modelservice`` are **target labels added by Prometheus**
  relabelling from Kubernetes service discovery (see :func:`kubernetes_pod_scrape_config`), not by the
  agent. A pod cannot reliably know what the scraper calls it, and exporting these itself would collide
  with the scraper's own target labels (they would be renamed ``exported_*``). The direct-scrape source
  attaches the same labels from the pod it scraped, so both operator sources see one label set.

Units follow Prometheus conventions: base units (watts, joules, bytes, hertz, seconds, ratio 0..1) in the
name, ``_total`` on counters. NVML's native units (mW, mJ, %, MiB, MHz) are converted in the agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

PREFIX: Final = "greenserve_"

# --- label keys -----------------------------------------------------------------------------------------
LABEL_GPU: Final = "gpu"
LABEL_UUID: Final = "uuid"
LABEL_GPU_NAME: Final = "name"
LABEL_SIMULATED: Final = "simulated"
LABEL_MODEL: Final = "model"
LABEL_FIELD: Final = "field"
LABEL_BACKEND: Final = "backend"
LABEL_VERSION: Final = "version"
# Target labels (added by Prometheus relabelling / the direct-scrape source):
LABEL_NAMESPACE: Final = "namespace"
LABEL_POD: Final = "pod"
LABEL_NODE: Final = "node"
LABEL_MODELSERVICE: Final = "modelservice"
LABEL_POOL: Final = "pool"  # a shared pool pod's pool (its `greenserve.io/pool` pod label)

#: The Kubernetes pod label the operator sets on serving pods (``greenserve.io/modelservice``), as
#: Prometheus' service discovery spells it after sanitising.
SD_POD_LABEL_MODELSERVICE: Final = "__meta_kubernetes_pod_label_greenserve_io_modelservice"
#: The pod label of a shared pool's pods (``greenserve.io/pool``), as service discovery spells it.
SD_POD_LABEL_POOL: Final = "__meta_kubernetes_pod_label_greenserve_io_pool"

MetricType = Literal["gauge", "counter", "histogram", "info"]


@dataclass(frozen=True)
class MetricSpec:
    """One exported family. ``name`` is the sample name as Prometheus stores it (counters with ``_total``)."""

    name: str
    type: MetricType
    unit: str
    labels: tuple[str, ...]
    help: str

    @property
    def family(self) -> str:
        """The family name as prometheus_client's CounterMetricFamily/InfoMetricFamily wants it."""
        if self.type == "counter" and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        if self.type == "info" and self.name.endswith("_info"):
            return self.name[: -len("_info")]
        return self.name


_GPU_LABELS: Final = (LABEL_GPU, LABEL_UUID, LABEL_SIMULATED)

GPU_POWER: Final = MetricSpec(
    PREFIX + "gpu_power_watts", "gauge", "watts", _GPU_LABELS, "GPU power draw (NVML power usage)."
)
GPU_ENERGY: Final = MetricSpec(
    PREFIX + "gpu_energy_joules_total",
    "counter",
    "joules",
    _GPU_LABELS,
    "GPU energy since the agent started, from NVML's mJ counter; survives driver counter resets.",
)
GPU_UTILIZATION: Final = MetricSpec(
    PREFIX + "gpu_utilization_ratio",
    "gauge",
    "ratio",
    _GPU_LABELS,
    "Fraction of the last sample period in which a kernel ran (NVML utilization.gpu / 100).",
)
GPU_MEMORY_UTILIZATION: Final = MetricSpec(
    PREFIX + "gpu_memory_utilization_ratio",
    "gauge",
    "ratio",
    _GPU_LABELS,
    "Fraction of the last sample period in which device memory was read or written.",
)
GPU_MEMORY_USED: Final = MetricSpec(
    PREFIX + "gpu_memory_used_bytes", "gauge", "bytes", _GPU_LABELS, "Device memory in use."
)
GPU_MEMORY_TOTAL: Final = MetricSpec(
    PREFIX + "gpu_memory_total_bytes", "gauge", "bytes", _GPU_LABELS, "Device memory installed."
)
GPU_SM_CLOCK: Final = MetricSpec(
    PREFIX + "gpu_sm_clock_hertz", "gauge", "hertz", _GPU_LABELS, "Current SM clock."
)
GPU_MEMORY_CLOCK: Final = MetricSpec(
    PREFIX + "gpu_memory_clock_hertz", "gauge", "hertz", _GPU_LABELS, "Current memory clock."
)
GPU_POWER_LIMIT: Final = MetricSpec(
    PREFIX + "gpu_power_limit_watts", "gauge", "watts", _GPU_LABELS, "Enforced power limit."
)
GPU_INFO: Final = MetricSpec(
    PREFIX + "gpu_info",
    "info",
    "",
    (LABEL_GPU, LABEL_UUID, LABEL_GPU_NAME, LABEL_SIMULATED),
    "One series per visible GPU, value 1: identity of the device.",
)
GPU_READ_ERRORS: Final = MetricSpec(
    PREFIX + "gpu_read_errors_total",
    "counter",
    "",
    (LABEL_GPU, LABEL_FIELD),
    "NVML reads that failed (NotSupported, NoPermission, ...); the field is then absent, never zero.",
)
AGENT_SIMULATED: Final = MetricSpec(
    PREFIX + "agent_simulated",
    "gauge",
    "",
    (),
    "1 when the GPU figures come from the simulated NVML device, 0 for a real GPU.",
)
AGENT_INFO: Final = MetricSpec(
    PREFIX + "agent_info",
    "info",
    "",
    (LABEL_VERSION, LABEL_BACKEND, LABEL_MODEL, LABEL_SIMULATED),
    "The agent build, the model server it supervises (tfserving or local) and the model name.",
)
AGENT_READY: Final = MetricSpec(
    PREFIX + "agent_ready", "gauge", "", (), "1 while the replica is ready, 0 while starting or draining."
)
AGENT_INFLIGHT: Final = MetricSpec(
    PREFIX + "agent_inflight_requests", "gauge", "", (), "REST requests being proxied now."
)
REQUESTS: Final = MetricSpec(
    PREFIX + "requests_total",
    "counter",
    "",
    (LABEL_MODEL, "code"),
    "REST requests the agent proxied, by HTTP status code.",
)
REQUEST_DURATION: Final = MetricSpec(
    PREFIX + "request_duration_seconds",
    "histogram",
    "seconds",
    (LABEL_MODEL,),
    "Wall time of REST requests through the agent.",
)

#: Every family the agent itself exports (the GPU families only when a GPU, real or simulated, is seen).
AGENT_METRICS: Final = (
    GPU_POWER,
    GPU_ENERGY,
    GPU_UTILIZATION,
    GPU_MEMORY_UTILIZATION,
    GPU_MEMORY_USED,
    GPU_MEMORY_TOTAL,
    GPU_SM_CLOCK,
    GPU_MEMORY_CLOCK,
    GPU_POWER_LIMIT,
    GPU_INFO,
    GPU_READ_ERRORS,
    AGENT_SIMULATED,
    AGENT_INFO,
    AGENT_READY,
    AGENT_INFLIGHT,
    REQUESTS,
    REQUEST_DURATION,
)

# --- TF Serving's own metrics (passed through verbatim by the agent) -----------------------------------
# tensorflow_serving/servables/tensorflow/util.cc: a Counter<2> "/tensorflow/serving/request_count"
# {model_name, status} and a Sampler<3> "/tensorflow/serving/request_latency" {model_name, API, entrypoint}
# in microseconds (exponential buckets 10 * 1.8^i, 33 buckets). The Prometheus exporter turns '/' into ':'
# and does not add `_total` to counters.
TFS_REQUEST_COUNT: Final = ":tensorflow:serving:request_count"
TFS_REQUEST_LATENCY: Final = ":tensorflow:serving:request_latency"
TFS_PREFIX: Final = ":tensorflow:serving:"
TFS_LABEL_MODEL: Final = "model_name"
TFS_LABEL_STATUS: Final = "status"
TFS_LABEL_API: Final = "API"
TFS_LABEL_ENTRYPOINT: Final = "entrypoint"
TFS_LATENCY_UNIT_S: Final = 1e-6  # request_latency is in microseconds
TFS_LATENCY_BUCKETS_US: Final = tuple(10.0 * 1.8**i for i in range(32))  # plus +Inf
TFS_MONITORING_PATH: Final = "/monitoring/prometheus/metrics"
# TF Serving exports nothing without --monitoring_config_file naming this (text-format MonitoringConfig).
# The operator's pods get it from their ConfigMap; the serving image ships the same file
# (serving-image/monitoring.config).
TFS_MONITORING_CONFIG: Final = (
    'prometheus_config {\n  enable: true,\n  path: "' + TFS_MONITORING_PATH + '"\n}\n'
)

# --- NVIDIA DCGM exporter (read by the operator, never exported by greenserve) --------------------------
DCGM_POWER: Final = "DCGM_FI_DEV_POWER_USAGE"  # gauge, W
DCGM_ENERGY: Final = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"  # counter, mJ (no _total suffix)
DCGM_GPU_UTIL: Final = "DCGM_FI_DEV_GPU_UTIL"  # gauge, percent 0..100
DCGM_ENERGY_UNIT_J: Final = 1e-3
DCGM_UTIL_UNIT_RATIO: Final = 1e-2
#: dcgm-exporter <= 4.5.3-4.8.2 writes `Hostname`; later releases write `hostname`. Queries accept both.
DCGM_HOST_LABELS: Final = ("Hostname", "hostname")
DCGM_LABEL_UUID: Final = "UUID"
DCGM_LABEL_GPU: Final = "gpu"
DCGM_LABEL_MODEL_NAME: Final = "modelName"
# dcgm-exporter's namespace/pod labels as Prometheus renames them when the scrape does not honor labels
# (the GPU operator's ServiceMonitor): the target's own namespace/pod take the plain names.
DCGM_LABEL_EXPORTED_NAMESPACE: Final = "exported_namespace"
DCGM_LABEL_EXPORTED_POD: Final = "exported_pod"

# --- agent environment and ports ----------------------------------------------------------------------
AGENT_METRICS_PORT: Final = 9400
AGENT_METRICS_PATH: Final = "/metrics"
AGENT_READY_PATH: Final = "/ready"
ENV_SIMULATE: Final = "GREENSERVE_SIMULATE_GPU"  # "auto" (default), "true", "false"
ENV_SIMULATED_PRODUCT: Final = "GREENSERVE_SIMULATED_GPU"  # e.g. "T4" (default), "A100-SXM4-80GB"
ENV_SIMULATED_COUNT: Final = "GREENSERVE_SIMULATED_GPU_COUNT"


def kubernetes_pod_scrape_config(job_name: str = "greenserve-agents", interval: str = "5s") -> dict[str, Any]:
    """A Prometheus ``scrape_configs`` entry that scrapes the agents and writes the contract's target labels.

    It keeps pods annotated ``prometheus.io/scrape: "true"`` that carry the ``greenserve.io/modelservice``
    label (a ModelService's own replicas) or the ``greenserve.io/pool`` label (a shared pool's pods),
    scrapes the port named by ``prometheus.io/port`` and maps namespace, pod, node, ModelService and pool
    to the ``namespace``, ``pod``, ``node``, ``modelservice`` and ``pool`` labels the operator's queries
    use.
    """
    return {
        "job_name": job_name,
        "scrape_interval": interval,
        "kubernetes_sd_configs": [{"role": "pod"}],
        "relabel_configs": [
            {
                "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                "regex": "true",
                "action": "keep",
            },
            {
                "source_labels": [SD_POD_LABEL_MODELSERVICE, SD_POD_LABEL_POOL],
                "regex": ".+;.*|.*;.+",
                "action": "keep",
            },
            {
                "source_labels": ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
                "regex": r"([^:]+)(?::\d+)?;(\d+)",
                "replacement": "$1:$2",
                "target_label": "__address__",
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": LABEL_NAMESPACE},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": LABEL_POD},
            {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": LABEL_NODE},
            {"source_labels": [SD_POD_LABEL_MODELSERVICE], "target_label": LABEL_MODELSERVICE},
            {"source_labels": [SD_POD_LABEL_POOL], "target_label": LABEL_POOL},
        ],
    }


# --- the operator's own metrics, one series per ModelService --------------------------------------------
_MSVC_LABELS: Final = (LABEL_NAMESPACE, LABEL_MODELSERVICE)
OP_POWER: Final = MetricSpec(
    PREFIX + "modelservice_power_watts", "gauge", "watts", _MSVC_LABELS, "GPU power of the ModelService."
)
OP_ENERGY: Final = MetricSpec(
    PREFIX + "modelservice_energy_joules",
    "gauge",
    "joules",
    _MSVC_LABELS,
    "Cumulative GPU energy of the ModelService, as its status counts it (survives replica moves).",
)
OP_RPS: Final = MetricSpec(
    PREFIX + "modelservice_requests_per_second", "gauge", "", _MSVC_LABELS, "Requests per second."
)
OP_JPR: Final = MetricSpec(
    PREFIX + "modelservice_joules_per_request", "gauge", "joules", _MSVC_LABELS, "GPU energy per request."
)
OP_CO2: Final = MetricSpec(
    PREFIX + "modelservice_co2e_grams",
    "gauge",
    "grams",
    _MSVC_LABELS,
    "Cumulative emissions: energy times the configured grid carbon intensity.",
)
OP_REPLICAS_DESIRED: Final = MetricSpec(
    PREFIX + "modelservice_replicas_desired", "gauge", "", _MSVC_LABELS, "Replicas the operator wants."
)
OP_REPLICAS_READY: Final = MetricSpec(
    PREFIX + "modelservice_replicas_ready", "gauge", "", _MSVC_LABELS, "Replicas that are ready."
)
OP_METRICS_STALE: Final = MetricSpec(
    PREFIX + "modelservice_metrics_stale",
    "gauge",
    "",
    _MSVC_LABELS,
    "1 when the last metrics read for the ModelService was stale or incomplete.",
)
OP_SCALE_DECISIONS: Final = MetricSpec(
    PREFIX + "modelservice_scale_decisions_total",
    "counter",
    "",
    (*_MSVC_LABELS, "direction"),
    "Replica count changes decided by the operator (direction up or down).",
)
OP_MOVES: Final = MetricSpec(
    PREFIX + "modelservice_moves_total",
    "counter",
    "",
    (*_MSVC_LABELS, "reason"),
    "Replicas moved (make-before-break) by consolidation.",
)
OP_PASSES: Final = MetricSpec(
    PREFIX + "operator_passes_total",
    "counter",
    "",
    ("loop",),
    "Completed passes of the operator's loops (loop resync: one ModelService; consolidation: the cluster).",
)
OPERATOR_METRICS: Final = (
    OP_POWER,
    OP_ENERGY,
    OP_RPS,
    OP_JPR,
    OP_CO2,
    OP_REPLICAS_DESIRED,
    OP_REPLICAS_READY,
    OP_METRICS_STALE,
    OP_SCALE_DECISIONS,
    OP_MOVES,
    OP_PASSES,
)

# --- the activator (greenserve/activator/): requests for a ModelService with no ready replica -------------
ACTIVATOR_HELD: Final = MetricSpec(
    PREFIX + "activator_requests_held",
    "gauge",
    "",
    _MSVC_LABELS,
    "Requests the activator holds now, waiting for a ready replica of the ModelService.",
)
ACTIVATOR_REQUESTS: Final = MetricSpec(
    PREFIX + "activator_requests_total",
    "counter",
    "",
    (*_MSVC_LABELS, "outcome"),
    "Requests through the activator by outcome: forwarded, timeout (503 past the bounded wait), "
    "unknown (no such ModelService or model), error (the replica failed to answer).",
)
ACTIVATOR_WAIT: Final = MetricSpec(
    PREFIX + "activator_wait_seconds",
    "histogram",
    "seconds",
    _MSVC_LABELS,
    "How long a request waited at the activator for a ready replica (forwarded or timed out).",
)
ACTIVATOR_METRICS: Final = (ACTIVATOR_HELD, ACTIVATOR_REQUESTS, ACTIVATOR_WAIT)
#: Headers a proxy (the agent's REST front, the activator) never copies through, either way, in lower
#: case: hop-by-hop headers (RFC 9110 section 7.6.1) and those aiohttp recomputes for the body it sends.
#: aiohttp decodes a gzip or deflate body on both sides (server request payloads, client responses), so
#: the body passed on is the decoded one and its Content-Encoding must not follow it.
HOP_BY_HOP_HEADERS: Final = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
        "Content-Encoding",
    )
)
#: A client may ask the activator to wait less than its bound (seconds), never more.
ACTIVATOR_MAX_WAIT_HEADER: Final = "X-Greenserve-Max-Wait"
