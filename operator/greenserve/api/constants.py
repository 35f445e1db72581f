"""Names of the ModelService API and of the labels and annotations greenserve owns."""

from __future__ import annotations

from typing import Final

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

# Annotations written on pods and nodes to steer the node autoscalers (README, "How it scales and
# consolidates").
ANN_POD_DELETION_COST: Final = "controller.kubernetes.io/pod-deletion-cost"
ANN_KARPENTER_DO_NOT_DISRUPT: Final = "karpenter.sh/do-not-disrupt"
ANN_CA_SAFE_TO_EVICT: Final = "cluster-autoscaler.kubernetes.io/safe-to-evict"
ANN_CA_SCALE_DOWN_DISABLED: Final = "cluster-autoscaler.kubernetes.io/scale-down-disabled"
ANN_SPEC_HASH: Final = f"{GROUP}/spec-hash"

GPU_RESOURCE: Final = "nvidia.com/gpu"
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"

TFS_GRPC_PORT: Final = 8500
TFS_REST_PORT: Final = 8501
AGENT_METRICS_PORT: Final = 9400

# The pinned default runtime; the GPU build of the same TF Serving release as the serving image.
DEFAULT_TFS_IMAGE: Final = "tensorflow/serving:2.18.0-gpu"
