"""ModelService v1alpha1: the spec and status types.

These pydantic models are the single source of truth for the CRD: `greenserve.api.crdgen` renders
`crds/modelservices.greenserve.io.yaml` from them, and a unit test fails when the two drift apart.
The API server enforces the schema and the CEL rules; the operator parses the same models again, so
anything that slips past the API server (or an object stored before a schema change) still gets a clear
`Ready=False` instead of a crash.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from greenserve.api import constants

# Quantities as the API server accepts them ("500m", "2Gi", "1"); kept as strings like core/v1 does.
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

CEL = "x-kubernetes-validations"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, use_enum_values=False
    )


SUPPORTED_SCHEMES = ("pvc://", "gs://", "s3://", "/")


class ModelSpec(_Model):
    """The model to serve."""

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=63,
            pattern=DNS_LABEL_PATTERN,
            description="Model name in TF Serving's API (/v1/models/<name>).",
        ),
    ]
    storage_uri: Annotated[
        str,
        Field(
            min_length=2,
            max_length=2048,
            # Loose on purpose: the scheme check lives in the operator, so an unsupported but well-formed
            # URI (hdfs://, http://) is accepted and reported as Ready=False/UnsupportedStorageUri.
            pattern=r"^([a-z][a-z0-9+.-]*://.+|/.+)$",
            description="pvc://<claim>/<path>, gs://<bucket>/<path>, s3://<bucket>/<path>, or an absolute "
            "path inside the serving image. The path holds numbered version directories of a SavedModel.",
        ),
    ]
    credentials_secret: Annotated[
        str | None,
        Field(
            default=None,
            max_length=253,
            description="Secret whose keys are exported as environment variables to the model server "
            "(for example AWS_ACCESS_KEY_ID, or GOOGLE_APPLICATION_CREDENTIALS with a mounted key).",
        ),
    ] = None


class ResourceList(_Model):
    cpu: Annotated[str | None, Field(default=None, pattern=QUANTITY_PATTERN)] = None
    memory: Annotated[str | None, Field(default=None, pattern=QUANTITY_PATTERN)] = None


class Resources(_Model):
    """CPU and memory of the model-server container. GPUs are set by spec.gpu, not here."""

    requests: ResourceList = Field(default_factory=lambda: ResourceList(cpu="1", memory="2Gi"))
    limits: ResourceList = Field(default_factory=lambda: ResourceList(memory="8Gi"))


class Batching(_Model):
    """TF Serving server-side batching (--enable_batching with a batching parameters file)."""

    enabled: bool = False
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    batch_timeout_micros: Annotated[int, Field(ge=0, le=10_000_000)] = 1000
    num_batch_threads: Annotated[int, Field(ge=1, le=256)] = 4
    max_enqueued_batches: Annotated[int, Field(ge=1, le=100_000)] = 100


class RuntimeSpec(_Model):
    """The model-server container."""

    image: Annotated[
        str,
        Field(
            min_length=1,
            max_length=512,
            description="Model-server image: greenserve's serving image (TF Serving with the greenserve "
            "agent) or one built FROM it; a GPU build when spec.gpu.count > 0.",
        ),
    ] = constants.DEFAULT_SERVING_IMAGE
    resources: Resources = Field(default_factory=Resources)
    batching: Batching = Field(default_factory=Batching)


class Toleration(_Model):
    key: Annotated[str | None, Field(default=None, max_length=316)] = None
    operator: Annotated[str, Field(pattern=r"^(Exists|Equal)$")] = "Equal"
    value: Annotated[str | None, Field(default=None, max_length=63)] = None
    effect: Annotated[
        str | None, Field(default=None, pattern=r"^(NoSchedule|PreferNoSchedule|NoExecute)$")
    ] = None


def _default_tolerations() -> list[Toleration]:
    return [Toleration(key=constants.GPU_RESOURCE, operator="Exists", effect="NoSchedule")]


class GpuSpec(_Model):
    """GPUs per replica and where they may come from."""

    count: Annotated[int, Field(ge=0, le=16, description="nvidia.com/gpu per replica; 0 serves on CPU.")] = 1
    product: Annotated[
        str | None,
        Field(
            default=None,
            max_length=63,
            description="Required value of the nvidia.com/gpu.product node label (GPU feature discovery).",
        ),
    ] = None
    tolerations: list[Toleration] = Field(default_factory=_default_tolerations, max_length=16)


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
                    "rule": "self.metric != 'gpuUtilization' || self.target <= 100",
                    "message": "target is a percentage (1-100) when metric is gpuUtilization",
                    "fieldPath": ".target",
                },
            ]
        }
    )

    min_replicas: Annotated[int, Field(ge=0, le=1000, description="0 allows scale to zero when idle.")] = 1
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = 4
    metric: ScalingMetric = ScalingMetric.REQUESTS_PER_SECOND
    target: Annotated[
        int,
        Field(
            ge=1,
            le=1_000_000,
            description="requestsPerSecond: requests/s one replica serves at its target load. "
            "gpuUtilization: target GPU utilization in percent. "
            "concurrency: requests in flight per replica.",
        ),
    ] = 50
    scale_down_delay_seconds: Annotated[
        int, Field(ge=0, le=86_400, description="Stabilisation window before replicas are removed.")
    ] = 300

    # The same rules as the CEL above, for objects that reach the operator without them (stored earlier).
    @model_validator(mode="after")
    def _bounds(self) -> ScalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must be less than or equal to maxReplicas")
        if self.metric == ScalingMetric.GPU_UTILIZATION and self.target > 100:
            raise ValueError("target is a percentage (1-100) when metric is gpuUtilization")
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


class ModelServiceSpec(_Model):
    model: ModelSpec
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    gpu: GpuSpec = Field(default_factory=GpuSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    energy: EnergySpec = Field(default_factory=EnergySpec)
    slo: SloSpec = Field(default_factory=SloSpec)

    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                {
                    "rule": "self.gpu.count == 0 || self.runtime.image.contains('gpu') "
                    "|| self.runtime.image.contains('greenserve')",
                    "message": "runtime.image must be a GPU build (tag containing 'gpu') when gpu.count > 0",
                    "fieldPath": ".runtime.image",
                },
                {
                    "rule": "!has(self.model.credentialsSecret) || "
                    "self.model.storageUri.startsWith('s3://') || self.model.storageUri.startsWith('gs://')",
                    "message": "model.credentialsSecret applies only to s3:// and gs:// storage",
                    "fieldPath": ".model.credentialsSecret",
                },
            ]
        }
    )

    @model_validator(mode="after")
    def _cross_field(self) -> ModelServiceSpec:
        image = self.runtime.image
        if self.gpu.count and "gpu" not in image and "greenserve" not in image:
            raise ValueError("runtime.image must be a GPU build (tag containing 'gpu') when gpu.count > 0")
        if self.model.credentials_secret and not self.model.storage_uri.startswith(("s3://", "gs://")):
            raise ValueError("model.credentialsSecret applies only to s3:// and gs:// storage")
        return self


class Condition(_Model):
    """metav1.Condition."""

    type: str
    status: Annotated[str, Field(pattern=r"^(True|False|Unknown)$")]
    reason: Annotated[str, Field(max_length=1024)]
    message: Annotated[str, Field(max_length=32768)] = ""
    observed_generation: int | None = None
    last_transition_time: str


class ModelServiceStatus(_Model):
    observed_generation: int | None = None
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
    grams_co2e: Annotated[float | None, Field(default=None, description="Cumulative, from energyJoules.")] = (
        None
    )
    energy_counters: Annotated[
        dict[str, float] | None,
        Field(default=None, description="Last energy counter per replica, to accumulate energyJoules."),
    ] = None
    metrics_simulated: Annotated[
        bool | None, Field(default=None, description="True when the power figures come from a simulated GPU.")
    ] = None
    last_scale_time: str | None = None
    move: Annotated[
        dict[str, Any] | None,
        Field(
            default=None, description="Consolidation move in flight: its replacement is running as a surge."
        ),
    ] = None
    scaler: Annotated[
        dict[str, Any] | None,
        Field(default=None, description="Autoscaler stabilisation state (opaque, owned by the operator)."),
    ] = None
    conditions: list[Condition] = Field(default_factory=list)


def parse_spec(raw: dict[str, Any]) -> ModelServiceSpec:
    """Parse and default a spec as stored by the API server; raises pydantic.ValidationError."""
    return ModelServiceSpec.model_validate(raw)
