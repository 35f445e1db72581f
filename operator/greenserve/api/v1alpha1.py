"""ModelService v1alpha1: the spec and status types.

These pydantic models are the single source of truth for the CRD: `greenserve.api.crdgen` renders
`crds/modelservices.greenserve.io.yaml` from them, and a unit test fails when the two drift apart.
The API server enforces the schema and the CEL rules; the operator parses the same models again, so
anything that slips past the API server (or an object stored before a schema change) still gets a clear
`Ready=False` instead of a crash.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from greenserve.api import constants, k8s
from greenserve.api.k8s_vendor import QUANTITY_MAX_LENGTH, QUANTITY_PATTERN

# Kubernetes' quantity grammar ("500m", "2Gi", "1e3"), without a sign: resource amounts cannot be negative.
RESOURCE_QUANTITY_PATTERN = QUANTITY_PATTERN.replace(r"^(\+|-)?", r"^\+?", 1)
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A qualified name (label and annotation keys, resource names): an optional DNS prefix and a 63-char name.
QUALIFIED_NAME_PATTERN = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# TF Serving model names: what fits a URL path segment and a flag value (/v1/models/<name>, --model_name).
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][-A-Za-z0-9_.]*$"
# Characters a storage URI may hold: no whitespace, quotes, shell metacharacters (;|&$`<>(){}*?!\), % (an
# encoded "..") or non-ASCII. ".." path segments are rejected by a CEL rule (RE2 has no lookahead).
STORAGE_URI_PATTERN = r"^([a-z][a-z0-9+.-]*://[-A-Za-z0-9._~/:@=+,]+|/[-A-Za-z0-9._~/:@=+,]+)$"
# Flags of the model server the operator owns; runtime.args may not set them.
OWNED_ARGS_PATTERN = r"^--?(port|rest_api_port|model_name|model_base_path)(=|$)"
# Volume names the operator uses itself (see manifests/storage.py and manifests/builders.py).
RESERVED_VOLUMES = ("model-store", "greenserve-config", "gcs-credentials")
RESERVED_MESSAGE = f"pod.volumes must not use the operator's volume names {', '.join(RESERVED_VOLUMES)}"
DEFAULT_CREDENTIALS_KEY = "key.json"

CEL = "x-kubernetes-validations"


def camel(name: str) -> str:
    """snake_case -> lowerCamelCase as Kubernetes spells fields: only an underscore starts a capital.

    pydantic's `to_camel` also capitalises a letter after a digit (grams_co2e -> gramsCo2E), which made
    the CRD declare a field the operator never wrote. Acronyms (gramsCO2e) are explicit aliases.
    """
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=camel, populate_by_name=True, extra="forbid", frozen=True, use_enum_values=False
    )


SUPPORTED_SCHEMES = ("pvc://", "gs://", "/")
S3_MESSAGE = (
    "model.storageUri: s3:// is not supported: TF Serving 2.7 and later has no S3 filesystem; "
    "copy the model to a PVC (pvc://) or to Google Cloud Storage (gs://)"
)
TRAVERSAL_MESSAGE = "model.storageUri must not contain '..' path segments"


def _check_storage_uri(value: str) -> str:
    if value.startswith("s3://"):
        raise ValueError(S3_MESSAGE)
    if ".." in value.split("/"):
        raise ValueError(TRAVERSAL_MESSAGE)
    return value


class ModelSpec(_Model):
    """The model to serve."""

    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                {
                    "rule": "!self.storageUri.startsWith('s3://')",
                    "message": S3_MESSAGE,
                    "fieldPath": ".storageUri",
                },
                {
                    "rule": "!self.storageUri.matches('(^|/)\\\\.\\\\.(/|$)')",
                    "message": TRAVERSAL_MESSAGE,
                    "fieldPath": ".storageUri",
                },
            ]
        }
    )

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=63,
            pattern=MODEL_NAME_PATTERN,
            description="Model name in TF Serving's API (/v1/models/<name>): letters, digits, '-', '_', '.'.",
        ),
    ]
    storage_uri: Annotated[
        str,
        Field(
            min_length=2,
            max_length=2048,
            # The scheme check lives in the operator, so an unsupported but well-formed URI (hdfs://,
            # http://) is accepted and reported as Ready=False/UnsupportedStorageUri.
            pattern=STORAGE_URI_PATTERN,
            description="pvc://<claim>/<path>, gs://<bucket>/<path>, or an absolute path inside the serving "
            "image. The path holds numbered version directories of a SavedModel. s3:// is rejected: TF "
            "Serving 2.7 and later has no S3 filesystem.",
        ),
        AfterValidator(_check_storage_uri),
    ]
    credentials_secret: Annotated[
        str | None,
        Field(
            default=None,
            max_length=253,
            pattern=DNS_SUBDOMAIN_PATTERN,
            description="gs:// only: a Secret mounted as files at /var/secrets/google, with "
            "GOOGLE_APPLICATION_CREDENTIALS pointing at its credentialsKey; its keys are also exported as "
            "environment variables.",
        ),
    ] = None
    credentials_key: Annotated[
        str | None,
        Field(
            default=None,
            max_length=253,
            pattern=r"^[-._a-zA-Z0-9]+$",
            description=f"Key of credentialsSecret holding the service-account key file; default "
            f"{DEFAULT_CREDENTIALS_KEY}.",
        ),
    ] = None


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, bool):
        raise ValueError("a quantity is a number or a string such as 500m or 2Gi")
    if isinstance(value, int):
        if not 0 <= value < 2**63:
            raise ValueError(f"quantity {value} is out of range")
        return value
    if len(value) > QUANTITY_MAX_LENGTH or not re.fullmatch(RESOURCE_QUANTITY_PATTERN, value):
        raise ValueError(f"{value[:80]!r} is not a Kubernetes quantity (such as 500m, 2Gi, 1)")
    return value


# int-or-string, as Kubernetes' own resource.Quantity in a CRD: `cpu: 1` and `cpu: "1"` are both valid.
Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "pattern": RESOURCE_QUANTITY_PATTERN,
            "maxLength": QUANTITY_MAX_LENGTH,
            "minimum": 0,
        }
    ),
]
ResourceName = Annotated[str, Field(max_length=253, pattern=QUALIFIED_NAME_PATTERN)]
ResourceMap = Annotated[dict[ResourceName, Quantity], Field(max_length=16)]
LabelMap = Annotated[
    dict[
        Annotated[str, Field(max_length=316, pattern=QUALIFIED_NAME_PATTERN)],
        Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)],
    ],
    Field(max_length=64),
]
AnnotationMap = Annotated[
    dict[
        Annotated[str, Field(max_length=316, pattern=QUALIFIED_NAME_PATTERN)],
        Annotated[str, Field(max_length=16384)],
    ],
    Field(max_length=64),
]
ObjectName = Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]


class Resources(_Model):
    """Resources of the model-server container, any resource name (cpu, memory, ephemeral-storage, ...).
    GPUs are set by spec.gpu, not here."""

    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                {
                    "rule": "!(has(self.requests) && 'nvidia.com/gpu' in self.requests) && "
                    "!(has(self.limits) && 'nvidia.com/gpu' in self.limits)",
                    "message": "nvidia.com/gpu is set by spec.gpu.count, not by runtime.resources",
                }
            ]
        }
    )

    requests: ResourceMap = Field(default_factory=lambda: dict[str, int | str](cpu="1", memory="2Gi"))
    limits: ResourceMap = Field(default_factory=lambda: dict[str, int | str](memory="8Gi"))

    @model_validator(mode="after")
    def _no_gpus(self) -> Resources:
        if constants.GPU_RESOURCE in self.requests or constants.GPU_RESOURCE in self.limits:
            raise ValueError("nvidia.com/gpu is set by spec.gpu.count, not by runtime.resources")
        return self


class Batching(_Model):
    """TF Serving server-side batching (--enable_batching with a batching parameters file)."""

    enabled: bool = False
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    batch_timeout_micros: Annotated[int, Field(ge=0, le=10_000_000)] = 1000
    num_batch_threads: Annotated[int, Field(ge=1, le=256)] = 4
    max_enqueued_batches: Annotated[int, Field(ge=1, le=100_000)] = 100


OWNED_ARGS_MESSAGE = (
    "runtime.args must not set --port, --rest_api_port, --model_name or --model_base_path (the operator does)"
)


def _check_args(args: list[str] | None) -> list[str] | None:
    if args and any(re.match(OWNED_ARGS_PATTERN, a) for a in args):
        raise ValueError(OWNED_ARGS_MESSAGE)
    return args


class RuntimeSpec(_Model):
    """The model-server container."""

    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                {
                    "rule": f"!has(self.args) || self.args.all(a, !a.matches('{OWNED_ARGS_PATTERN}'))",
                    "message": OWNED_ARGS_MESSAGE,
                    "fieldPath": ".args",
                }
            ]
        }
    )

    image: Annotated[
        str,
        Field(
            min_length=1,
            max_length=512,
            # As Kubernetes: an image with leading or trailing whitespace can never be pulled.
            pattern=r"^[^\s]+$",
            description="Model-server image: greenserve's serving image (TF Serving with the greenserve "
            "agent) or one built FROM it; a tag, a digest or a mirror; a GPU build when spec.gpu.count > 0.",
        ),
    ] = constants.DEFAULT_SERVING_IMAGE
    resources: Resources = Field(default_factory=Resources)
    batching: Batching = Field(default_factory=Batching)
    grpc: Annotated[
        bool,
        Field(
            description="Expose TF Serving's gRPC port (8500) on the container and the Service. Off by "
            "default: the gRPC API includes TF Serving's model-management service."
        ),
    ] = False
    args: Annotated[
        list[Annotated[str, Field(max_length=4096)]] | None,
        Field(default=None, max_length=64, description="Extra model-server flags, after the operator's."),
        AfterValidator(_check_args),
    ] = None
    env: Annotated[
        list[dict[str, Any]] | None,
        Field(default=None, max_length=64),
        k8s.list_schema(
            "EnvVar", 64, "Environment variables of the model-server container (core/v1 EnvVar)."
        ),
    ] = None
    volume_mounts: Annotated[
        list[dict[str, Any]] | None,
        Field(default=None, max_length=32),
        k8s.list_schema("VolumeMount", 32, "Mounts of spec.pod.volumes into the model-server container."),
    ] = None
    security_context: Annotated[
        dict[str, Any] | None,
        Field(default=None),
        k8s.json_schema("SecurityContext", "securityContext of the model-server container (core/v1)."),
    ] = None


class GpuSharing(enum.StrEnum):
    """Whether a model may share a GPU of a serving pool with other models (README, "Shared GPU pools")."""

    AUTO = "Auto"  # the placement rule may put it in a shared pool while its load fits a fraction of a GPU
    EXCLUSIVE = "Exclusive"  # always its own replicas, each with whole GPUs


SHARING_COUNT_MESSAGE = "gpu.sharing Auto needs gpu.count 1: a shared model uses a fraction of one GPU"


class GpuSpec(_Model):
    """GPUs per replica and where they may come from."""

    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                {
                    "rule": "!has(self.sharing) || self.sharing != 'Auto' || self.count == 1",
                    "message": SHARING_COUNT_MESSAGE,
                    "fieldPath": ".sharing",
                }
            ]
        }
    )

    count: Annotated[int, Field(ge=0, le=16, description="nvidia.com/gpu per replica; 0 serves on CPU.")] = 1
    product: Annotated[
        str | None,
        Field(
            default=None,
            max_length=63,
            pattern=LABEL_VALUE_PATTERN,
            description="Required value of the nvidia.com/gpu.product node label (GPU feature discovery).",
        ),
    ] = None
    tolerations: Annotated[
        list[dict[str, Any]] | None,
        Field(default=None, max_length=16),
        k8s.list_schema(
            "Toleration",
            16,
            "Tolerations of the serving pods (core/v1), added to the operator's "
            "nvidia.com/gpu:NoSchedule toleration when count > 0.",
        ),
    ] = None
    sharing: Annotated[
        GpuSharing | None,
        Field(
            default=None,
            description="Auto: the model may be served from a shared GPU pool (one model server, several "
            "models per GPU) while its load fits a fraction of a GPU, and moves to its own replicas when it "
            "outgrows it. Exclusive: always its own replicas. Unset: Auto for the Balanced and PowerSaving "
            "energy policies, Exclusive for Performance. Sharing also needs gpu.memory.",
        ),
    ] = None
    memory: Annotated[
        Quantity | None,
        Field(
            default=None,
            description="GPU memory the model needs (a quantity, such as 2Gi), used to pack shared GPUs; a "
            "model without it is never shared.",
        ),
    ] = None

    @model_validator(mode="after")
    def _sharing(self) -> GpuSpec:
        if self.sharing == GpuSharing.AUTO and self.count != 1:
            raise ValueError(SHARING_COUNT_MESSAGE)
        return self


class PodOptions(_Model):
    """Pod-level settings of the serving pods, merged into the Deployment's pod template. The operator's
    own fields win where it needs them: the selector labels, the GPU limit, the model container's name and
    ports."""

    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                {
                    "rule": "!has(self.volumes) || self.volumes.all(v, !(v.name in "
                    + str(list(RESERVED_VOLUMES))
                    + "))",
                    "message": RESERVED_MESSAGE,
                    "fieldPath": ".volumes",
                }
            ]
        }
    )

    labels: Annotated[LabelMap | None, Field(default=None, description="Extra pod labels.")] = None
    annotations: Annotated[
        AnnotationMap | None, Field(default=None, description="Extra pod annotations.")
    ] = None
    service_account_name: Annotated[
        ObjectName | None,
        Field(default=None, description="ServiceAccount of the serving pods (IRSA, Workload Identity)."),
    ] = None
    automount_service_account_token: Annotated[
        bool | None,
        Field(default=None, description="Mount the ServiceAccount's API token; false unless set to true."),
    ] = None
    image_pull_secrets: Annotated[
        list[dict[str, Any]] | None,
        Field(default=None, max_length=16),
        k8s.list_schema("LocalObjectReference", 16, "Secrets for pulling the serving image."),
    ] = None
    node_selector: Annotated[
        LabelMap | None,
        Field(
            default=None, description="Added to the operator's nvidia.com/gpu.product selector (gpu.product)."
        ),
    ] = None
    affinity: Annotated[dict[str, Any] | None, Field(default=None), k8s.json_schema("Affinity")] = None
    runtime_class_name: Annotated[
        ObjectName | None, Field(default=None, description="For example nvidia (k3s, RKE2, CDI setups).")
    ] = None
    priority_class_name: Annotated[ObjectName | None, Field(default=None)] = None
    security_context: Annotated[
        dict[str, Any] | None, Field(default=None), k8s.json_schema("PodSecurityContext")
    ] = None
    topology_spread_constraints: Annotated[
        list[dict[str, Any]] | None,
        Field(default=None, max_length=16),
        k8s.list_schema("TopologySpreadConstraint", 16),
    ] = None
    volumes: Annotated[
        list[dict[str, Any]] | None,
        Field(default=None, max_length=32),
        k8s.list_schema("Volume", 32, "Volumes for runtime.volumeMounts (core/v1 Volume)."),
    ] = None

    @model_validator(mode="after")
    def _reserved_volumes(self) -> PodOptions:
        if any(v.get("name") in RESERVED_VOLUMES for v in self.volumes or []):
            raise ValueError(RESERVED_MESSAGE)
        return self


class ScalingMetric(enum.StrEnum):
    REQUESTS_PER_SECOND = "requestsPerSecond"
    GPU_UTILIZATION = "gpuUtilization"
    # Requests in flight per replica (Knative's concurrency), from the greenserve agent's gauge.
    CONCURRENCY = "concurrency"


class ScalingSpec(_Model):
    """Replica bounds and the autoscaling target."""

    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                {
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must be less than or equal to maxReplicas",
                    "fieldPath": ".minReplicas",
                },
                {
                    "rule": "!has(self.scaleToZeroAfterSeconds) || self.minReplicas == 0",
                    "message": "scaleToZeroAfterSeconds applies only with minReplicas 0",
                    "fieldPath": ".scaleToZeroAfterSeconds",
                },
                {
                    "rule": "self.metric != 'gpuUtilization' || self.target <= 100.0",
                    "message": "target is a percentage (at most 100) when metric is gpuUtilization",
                    "fieldPath": ".target",
                },
            ]
        }
    )

    min_replicas: Annotated[int, Field(ge=0, le=1000, description="0 allows scale to zero when idle.")] = 1
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = 4
    metric: ScalingMetric = ScalingMetric.REQUESTS_PER_SECOND
    target: Annotated[
        float,
        Field(
            gt=0,
            le=1_000_000,
            description="requestsPerSecond: requests/s one replica serves at its target load, 80% busy (may "
            "be below 1 for a slow model); the autoscaler takes target / 0.8 as the replica's service rate "
            "(requests/s at 100%) in its queueing model. gpuUtilization: target GPU utilization in percent. "
            "concurrency: requests in flight per replica.",
        ),
    ] = 50
    scale_down_delay_seconds: Annotated[
        int, Field(ge=0, le=86_400, description="Stabilisation window before replicas are removed.")
    ] = 300
    scale_to_zero_after_seconds: Annotated[
        int | None,
        Field(
            default=None,
            ge=10,
            le=86_400,
            description="minReplicas 0 only: seconds without a request, on fresh metrics, before the last "
            "replica is removed. Default: the energy break-even of a warm idle replica against a cold "
            "start, never shorter than the cold start.",
        ),
    ] = None

    # The same rules as the CEL above, for objects that reach the operator without them (stored earlier).
    @model_validator(mode="after")
    def _bounds(self) -> ScalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must be less than or equal to maxReplicas")
        if self.scale_to_zero_after_seconds is not None and self.min_replicas != 0:
            raise ValueError("scaleToZeroAfterSeconds applies only with minReplicas 0")
        if self.metric == ScalingMetric.GPU_UTILIZATION and self.target > 100:
            raise ValueError("target is a percentage (at most 100) when metric is gpuUtilization")
        return self


class ConsolidationPolicy(enum.StrEnum):
    """How hard consolidation may move replicas to free GPU nodes."""

    PERFORMANCE = "Performance"  # never move replicas; scale only
    BALANCED = "Balanced"  # move when a whole node is freed and SLO headroom stays
    POWER_SAVING = "PowerSaving"  # also pack tighter (less headroom) to free nodes sooner


class EnergySpec(_Model):
    consolidation: bool = True
    policy: ConsolidationPolicy = ConsolidationPolicy.BALANCED
    carbon_intensity_grams_per_kwh: Annotated[
        int | None,
        Field(default=None, ge=0, le=2000, description="Overrides the operator's configured grid intensity."),
    ] = None


class SloSpec(_Model):
    latency_p95_ms: Annotated[
        int | None,
        Field(default=None, ge=1, le=600_000, description="p95 latency objective; guards scale-down."),
    ] = None


CREDENTIALS_MESSAGE = "model.credentialsSecret applies only to gs:// storage"
GPU_METRIC_MESSAGE = "scaling.metric gpuUtilization needs GPUs: gpu.count is 0"
MOUNTS_MESSAGE = "every runtime.volumeMounts name must be a volume in pod.volumes"


class ModelServiceSpec(_Model):
    model: ModelSpec
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    gpu: GpuSpec = Field(default_factory=GpuSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    energy: EnergySpec = Field(default_factory=EnergySpec)
    slo: SloSpec = Field(default_factory=SloSpec)
    pod: Annotated[
        PodOptions | None,
        Field(
            default=None,
            description="Pod-level settings of the serving pods (service account, "
            "scheduling, security context, volumes, labels and annotations).",
        ),
    ] = None

    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                {
                    "rule": "(!has(self.model.credentialsSecret) && !has(self.model.credentialsKey)) || "
                    "self.model.storageUri.startsWith('gs://')",
                    "message": CREDENTIALS_MESSAGE,
                    "fieldPath": ".model.credentialsSecret",
                },
                {
                    "rule": "self.scaling.metric != 'gpuUtilization' || self.gpu.count > 0",
                    "message": GPU_METRIC_MESSAGE,
                    "fieldPath": ".scaling.metric",
                },
                {
                    "rule": "!has(self.runtime.volumeMounts) || self.runtime.volumeMounts.all(m, "
                    "has(self.pod) && has(self.pod.volumes) && self.pod.volumes.exists(v, v.name == m.name))",
                    "message": MOUNTS_MESSAGE,
                    "fieldPath": ".runtime.volumeMounts",
                },
            ]
        }
    )

    @model_validator(mode="after")
    def _cross_field(self) -> ModelServiceSpec:
        model = self.model
        if (model.credentials_secret or model.credentials_key) and not model.storage_uri.startswith("gs://"):
            raise ValueError(CREDENTIALS_MESSAGE)
        if self.scaling.metric == ScalingMetric.GPU_UTILIZATION and self.gpu.count == 0:
            raise ValueError(GPU_METRIC_MESSAGE)
        volumes = {v.get("name") for v in (self.pod.volumes if self.pod else None) or []}
        if any(m.get("name") not in volumes for m in self.runtime.volume_mounts or []):
            raise ValueError(MOUNTS_MESSAGE)
        return self


class Condition(_Model):
    """metav1.Condition."""

    type: str
    status: Annotated[str, Field(pattern=r"^(True|False|Unknown)$")]
    reason: Annotated[str, Field(max_length=1024)]
    message: Annotated[str, Field(max_length=32768)] = ""
    observed_generation: int | None = None
    last_transition_time: str


class Addressable(_Model):
    """Where clients reach the model server inside the cluster (Knative's duck type)."""

    url: Annotated[str, Field(max_length=1024, description="TF Serving's REST endpoint through the Service.")]


class FailureInfo(_Model):
    """The last failure seen on the serving pods (KServe's lastFailureInfo), kept after recovery."""

    reason: Annotated[
        str, Field(max_length=1024, description="The Ready/Degraded condition reason it produced.")
    ]
    message: Annotated[str, Field(max_length=4096)] = ""
    pod: Annotated[str | None, Field(default=None, max_length=253)] = None
    container: Annotated[str | None, Field(default=None, max_length=253)] = None
    exit_code: int | None = None
    time: Annotated[
        str | None, Field(default=None, max_length=64, description="When the operator first saw it.")
    ] = None


class MoveStatus(_Model):
    """A consolidation move in flight (reconcile/consolidator.py): a surge replica runs until it is Ready,
    then `pod` is retired. All the move's state is here, so an operator restarted mid-move finishes it."""

    pod: Annotated[str, Field(min_length=1, max_length=253, description="The replica being moved.")]
    from_node: Annotated[str, Field(max_length=253, description="The node it leaves.")]
    to_node: Annotated[str, Field(max_length=253, description="The node planned for its replacement.")]
    started_at: Annotated[
        float, Field(ge=0, description="Unix time the move started; its timeout counts from here.")
    ]


class PlacementStatus(_Model):
    """Where the model is served: a shared GPU pool or its own replicas (README, "Shared GPU pools")."""

    shared: Annotated[bool, Field(description="True while the placement puts it in a shared pool.")]
    pool: Annotated[
        str | None, Field(default=None, max_length=253, description="The pool Deployment, when shared.")
    ] = None
    reason: Annotated[str, Field(max_length=128, description="Why it is placed so.")] = ""
    message: Annotated[str, Field(max_length=1024)] = ""


class Routing(enum.StrEnum):
    """Where the ModelService's Service sends requests."""

    REPLICAS = "Replicas"  # its selector: the serving pods
    ACTIVATOR = "Activator"  # no ready replica: the activator holds requests and wakes the model


class ModelServiceStatus(_Model):
    observed_generation: int | None = None
    url: Annotated[
        str | None,
        Field(
            default=None,
            max_length=1024,
            description="http://<name>.<namespace>.svc.<cluster domain>:8501, TF Serving's REST API.",
        ),
    ] = None
    address: Addressable | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    desired_replicas: int | None = None
    gpus: Annotated[int | None, Field(default=None, description="GPUs held by ready replicas.")] = None
    power_watts: Annotated[float | None, Field(default=None, description="GPU power of the replicas.")] = None
    energy_joules: Annotated[float | None, Field(default=None, description="Cumulative GPU energy.")] = None
    requests_per_second: float | None = None
    inflight_requests: Annotated[
        float | None,
        Field(default=None, description="Requests in flight through the agents (in service and queued)."),
    ] = None
    joules_per_request: float | None = None
    grams_co2e: Annotated[
        float | None, Field(default=None, alias="gramsCO2e", description="Cumulative, from energyJoules.")
    ] = None
    energy_counters: Annotated[
        dict[str, float] | None,
        Field(default=None, description="Last energy counter per replica, to accumulate energyJoules."),
    ] = None
    metrics_simulated: Annotated[
        bool | None, Field(default=None, description="True when the power figures come from a simulated GPU.")
    ] = None
    last_scale_time: str | None = None
    last_failure_info: FailureInfo | None = None
    move: Annotated[
        MoveStatus | None,
        Field(
            default=None, description="Consolidation move in flight: its replacement is running as a surge."
        ),
    ] = None
    placement: Annotated[
        PlacementStatus | None,
        Field(default=None, description="Shared pool or own replicas, and why (gpu.sharing)."),
    ] = None
    routing: Annotated[
        Routing | None,
        Field(
            default=None,
            description="Where the Service sends requests: Replicas, or Activator while a minReplicas 0 "
            "service has no ready replica (requests wait there for one).",
        ),
    ] = None
    scaler: Annotated[
        dict[str, Any] | None,
        Field(default=None, description="Autoscaler stabilisation state (opaque, owned by the operator)."),
    ] = None
    conditions: list[Condition] = Field(default_factory=list)


def status_patch(update: ModelServiceStatus, old: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that writes the fields set on `update` (by the CRD's names, so they cannot
    drift from the schema). A field set to None is removed; a map or object field replaces the stored
    one, so keys it no longer has are nulled out (a merge patch would otherwise keep them)."""
    patch: dict[str, Any] = update.model_dump(mode="json", by_alias=True, exclude_unset=True)
    for key, value in patch.items():
        previous = old.get(key)
        if isinstance(value, dict) and isinstance(previous, Mapping):
            patch[key] = {**dict.fromkeys(set(previous) - set(value)), **value}
    return patch


def merge_status(*parts: ModelServiceStatus) -> ModelServiceStatus:
    """One status update from several partial ones; a later part wins for a field set in both."""
    fields: dict[str, Any] = {}
    for part in parts:
        fields.update({name: getattr(part, name) for name in part.model_fields_set})
    return ModelServiceStatus(**fields)


def effective_sharing(spec: ModelServiceSpec) -> GpuSharing:
    """spec.gpu.sharing, or its default: Exclusive under the Performance energy policy, else Auto."""
    if spec.gpu.sharing is not None:
        return spec.gpu.sharing
    if spec.energy.policy == ConsolidationPolicy.PERFORMANCE:
        return GpuSharing.EXCLUSIVE
    return GpuSharing.AUTO


def parse_spec(raw: dict[str, Any]) -> ModelServiceSpec:
    """Parse and default a spec as stored by the API server; raises pydantic.ValidationError."""
    return ModelServiceSpec.model_validate(raw)
