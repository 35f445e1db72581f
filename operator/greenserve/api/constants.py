"""Names of the ModelService API and of the labels and annotations greenserve owns."""

from __future__ import annotations

from typing import Final

from greenserve import __version__

GROUP: Final = "greenserve.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "ModelService"
PLURAL: Final = "modelservices"
SINGULAR: Final = "modelservice"
SHORT_NAMES: Final = ("msvc",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

FIELD_MANAGER: Final = "greenserve"

# Labels on every object the operator creates (app.kubernetes.io/* are the recommended labels).
LABEL_MODELSERVICE: Final = f"{GROUP}/modelservice"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
MANAGED_BY: Final = "greenserve"
# Shared GPU pools (manifests/pools.py): the pool a pool object belongs to, and the per-model routing label
# `model.greenserve.io/<ModelService name>: available` a pod carries while that model is AVAILABLE on it.
LABEL_POOL: Final = f"{GROUP}/pool"
ROUTE_LABEL_PREFIX: Final = f"model.{GROUP}/"
ROUTE_AVAILABLE: Final = "available"

# Annotations written on pods and nodes to steer the node autoscalers (README, "How it scales and
# consolidates").
ANN_POD_DELETION_COST: Final = "controller.kubernetes.io/pod-deletion-cost"
ANN_KARPENTER_DO_NOT_DISRUPT: Final = "karpenter.sh/do-not-disrupt"
ANN_CA_SAFE_TO_EVICT: Final = "cluster-autoscaler.kubernetes.io/safe-to-evict"
ANN_CA_SCALE_DOWN_DISABLED: Final = "cluster-autoscaler.kubernetes.io/scale-down-disabled"
ANN_SPEC_HASH: Final = f"{GROUP}/spec-hash"

# Scale to zero and back (README, "Scale to zero and back"): the activator marks demand for a ModelService
# with no ready replica (Unix time, the operator's watch wakes it); the operator's EndpointSlices that
# route a Service to the activator carry the managed-by label with greenserve's own value.
ANN_ACTIVATION_DEMAND: Final = f"{GROUP}/activation-demand"
LABEL_SERVICE_NAME: Final = "kubernetes.io/service-name"
LABEL_ENDPOINTSLICE_MANAGED_BY: Final = "endpointslice.kubernetes.io/managed-by"
ENDPOINTSLICE_MANAGER: Final = f"endpointslice.{GROUP}"
# The Service that always selects the serving pods (the activator forwards to its endpoints).
PRIVATE_SERVICE_SUFFIX: Final = "-private"

GPU_RESOURCE: Final = "nvidia.com/gpu"
# Consolidation's own taint on a node it empties (NoSchedule).
TAINT_CONSOLIDATING: Final = f"{GROUP}/consolidating"
# A pool pod that consolidation moves off its node: JSON {fromNode, toNode, startedAt} on the source pod,
# the only state of the move (reconcile/pool_moves.py); its pool GPU runs a second pod while it is set.
ANN_POOL_MOVE: Final = f"{GROUP}/pool-move"
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"

TFS_GRPC_PORT: Final = 8500
TFS_REST_PORT: Final = 8501
AGENT_METRICS_PORT: Final = 9400

# The one registry of both images (.github/workflows/release.yaml, the chart, the Dockerfiles).
IMAGE_REGISTRY: Final = "ghcr.io/greenserve"
# The pinned default runtime: greenserve's serving image of this release (serving-image/Dockerfile: TF
# Serving's GPU build with the agent on :9400). Plain tensorflow/serving has no agent, so no request rate.
DEFAULT_SERVING_IMAGE: Final = f"{IMAGE_REGISTRY}/greenserve-serving:{__version__}"
# The non-root user of both images; serving pods run as it whatever the image's own USER is.
RUNTIME_UID: Final = 65532
