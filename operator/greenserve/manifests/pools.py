"""Pure builders of the shared GPU pools: several models served by one model server per GPU.

A pool holds the shared models of one namespace, GPU product and serving image (`PoolKey`) on one or more
GPUs. Each pool GPU is a shard: one Deployment of one pod with one GPU and one model server, which loads
the shard's member models from TF Serving's model config file (`--model_config_file`, polled every
`--model_config_file_poll_wait_seconds`). A shard's member list lives in its ConfigMap, which the operator
rewrites; adding or removing a model changes no pod template, so no pod restarts. Shard 0 is named after
the pool (`PoolKey.name`), shard i after it with `-i`; every shard's objects carry the pool's name as
their instance label, and their own name as the pool label that their Deployment selects. The shard
objects have one non-controller owner reference per member ModelService: the garbage collector deletes
them once every member is gone.

Each member keeps its own Service (manifests/builders.py); while the model is shared the Service selects
`route_label(<ModelService>) = available`, which the operator sets on a pool pod once the pod reports the
model AVAILABLE and removes before the model is unloaded (reconcile/pools.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from greenserve import contract
from greenserve.api import constants as c
from greenserve.api.v1alpha1 import ModelServiceSpec
from greenserve.manifests.builders import (
    CONFIG_DIR,
    MONITORING_FILE,
    BuildOptions,
    Owner,
    container_security_context,
    pod_security_context,
    probes,
    warmup_annotations,
)

MODEL_CONFIG_KEY = "models.config"
MODEL_CONFIG_FILE = f"{CONFIG_DIR}/{MODEL_CONFIG_KEY}"
# Claims of pvc:// members are mounted side by side under here, one folder per claim.
POOL_PVC_ROOT = "/mnt/pool"
POOL_COMPONENT = "pool"


@dataclass(frozen=True, order=True)
class PoolKey:
    """What pool members must have in common: the namespace, the GPU product (None: any) and the image."""

    namespace: str
    product: str | None
    image: str

    @property
    def name(self) -> str:
        digest = hashlib.sha256(f"{self.product or ''}\n{self.image}".encode()).hexdigest()[:10]
        return f"gs-pool-{digest}"


@dataclass(frozen=True, order=True)
class PoolMember:
    """One model of a pool: its ModelService (name and uid, for the owner reference) and its model."""

    service: str
    uid: str
    model_name: str
    storage_uri: str


def shard_name(key: PoolKey, shard: int = 0) -> str:
    """The objects' name of one pool GPU (shard 0 keeps the pool's own name)."""
    return key.name if shard == 0 else f"{key.name}-{shard}"


def shard_of(key: PoolKey, name: str) -> int | None:
    """The shard index of a pool object's name (None: not a shard of this pool)."""
    if name == key.name:
        return 0
    rest = name.removeprefix(f"{key.name}-")
    if rest == name or not rest.isdigit() or rest.startswith("0"):
        return None
    return int(rest)


def pool_selector(key: PoolKey) -> str:
    """Label selector of every shard's objects and pods of a pool."""
    return f"{c.LABEL_INSTANCE}={key.name},{c.LABEL_COMPONENT}={POOL_COMPONENT}"


def pool_key(namespace: str, spec: ModelServiceSpec) -> PoolKey:
    return PoolKey(namespace, spec.gpu.product, spec.runtime.image)


def incompatible(spec: ModelServiceSpec) -> str | None:
    """Why a spec cannot be served from a shared pod (None: it can). A pool pod is one container for many
    models, so nothing per model may shape it: no own flags, environment, mounts, batching or gRPC, no pod
    options and no credentials Secret; one GPU and a known GPU memory need to pack it."""
    runtime = spec.runtime
    if spec.gpu.count != 1:
        return "gpu.count is not 1"
    if spec.gpu.memory is None:
        return "gpu.memory is not set (it is needed to pack a shared GPU)"
    per_model = {
        "runtime.args": runtime.args,
        "runtime.env": runtime.env,
        "runtime.volumeMounts": runtime.volume_mounts,
        "runtime.securityContext": runtime.security_context,
        "runtime.batching": runtime.batching.enabled,
        "runtime.grpc": runtime.grpc,
        "pod": spec.pod,
        "gpu.tolerations": spec.gpu.tolerations,
        "model.credentialsSecret": spec.model.credentials_secret,
    }
    used = [name for name, value in per_model.items() if value]
    if used:
        return f"{', '.join(used)} set: a shared model server takes no per-model pod settings"
    return None


@dataclass(frozen=True)
class PoolStorage:
    base_paths: dict[str, str]  # ModelService -> model base path inside the pool pod
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]


def pool_storage(members: Sequence[PoolMember]) -> PoolStorage:
    """Base paths and volumes: each distinct PVC once (read-only, under POOL_PVC_ROOT/<claim>); gs:// and
    paths in the image pass through."""
    paths: dict[str, str] = {}
    claims: set[str] = set()
    for m in members:
        if m.storage_uri.startswith("pvc://"):
            claim, _, sub = m.storage_uri.removeprefix("pvc://").partition("/")
            claims.add(claim)
            paths[m.service] = f"{POOL_PVC_ROOT}/{claim}/{sub}".rstrip("/")
        else:
            paths[m.service] = m.storage_uri.rstrip("/") if m.storage_uri != "/" else "/"
    volumes, mounts = [], []
    for claim in sorted(claims):
        vol = f"pvc-{hashlib.sha256(claim.encode()).hexdigest()[:12]}"
        volumes.append({"name": vol, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": vol, "mountPath": f"{POOL_PVC_ROOT}/{claim}", "readOnly": True})
    return PoolStorage(paths, volumes, mounts)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def model_config(members: Sequence[PoolMember]) -> str:
    """TF Serving's ModelServerConfig (text format) listing every member; a model left out of a new
    version of the file is unloaded by the server, one added is loaded."""
    paths = pool_storage(members).base_paths
    entries = [
        "  config {\n"
        f"    name: {_quote(m.model_name)}\n"
        f"    base_path: {_quote(paths[m.service])}\n"
        '    model_platform: "tensorflow"\n'
        "  }\n"
        for m in sorted(members)
    ]
    return "model_config_list {\n" + "".join(entries) + "}\n"


def pool_labels(key: PoolKey, shard: int = 0) -> dict[str, str]:
    return {
        c.LABEL_POOL: shard_name(key, shard),
        c.LABEL_NAME: "tensorflow-serving",
        c.LABEL_INSTANCE: key.name,
        c.LABEL_COMPONENT: POOL_COMPONENT,
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
    }


def _owner_refs(members: Sequence[PoolMember]) -> list[dict[str, Any]]:
    # Not controllers: the pool belongs to all of them, and goes with the last one.
    return [
        {**Owner(m.service, "", m.uid).reference(), "controller": False, "blockOwnerDeletion": False}
        for m in sorted(members)
    ]


def config_map_name(key: PoolKey, shard: int = 0) -> str:
    return f"{shard_name(key, shard)}-models"


def pool_config_map(key: PoolKey, members: Sequence[PoolMember], shard: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(key, shard),
            "namespace": key.namespace,
            "labels": pool_labels(key, shard),
            "ownerReferences": _owner_refs(members),
        },
        "data": {
            MODEL_CONFIG_KEY: model_config(members),
            "monitoring.config": contract.TFS_MONITORING_CONFIG,
        },
    }


@dataclass(frozen=True)
class PoolOptions:
    """The pool pods' container resources and how often the model server re-reads the model list."""

    requests: tuple[tuple[str, str], ...] = (("cpu", "1"), ("memory", "2Gi"))
    limits: tuple[tuple[str, str], ...] = (("memory", "16Gi"),)
    poll_seconds: int = 2


def pool_deployment(
    key: PoolKey,
    members: Sequence[PoolMember],
    replicas: int,
    options: BuildOptions,
    pool: PoolOptions = PoolOptions(),
    shard: int = 0,
) -> dict[str, Any]:
    storage = pool_storage(members)
    args = [
        f"--port={c.TFS_GRPC_PORT}",
        f"--rest_api_port={c.TFS_REST_PORT}",
        f"--model_config_file={MODEL_CONFIG_FILE}",
        f"--model_config_file_poll_wait_seconds={pool.poll_seconds}",
        f"--monitoring_config_file={MONITORING_FILE}",
    ]
    if not options.agent_front:
        args.append("--agent-front=off")
    container: dict[str, Any] = {
        "name": "tfserving",
        "image": key.image,
        "args": args,
        "ports": [
            {"name": "http", "containerPort": c.TFS_REST_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": c.AGENT_METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": {
            "requests": dict(pool.requests),
            "limits": {**dict(pool.limits), c.GPU_RESOURCE: "1"},
        },
        "securityContext": container_security_context(),
        # Ready once the model server answers; whether a given model is loaded is its routing label. A
        # restart reloads every model of the pod: a slow answer on a starved CPU is not a dead server.
        **probes({"path": contract.AGENT_READY_PATH, "port": "metrics"}, liveness_timeout_s=5),
        "lifecycle": {"preStop": {"sleep": {"seconds": options.pre_stop_sleep_seconds}}},
        "volumeMounts": [
            *storage.mounts,
            {"name": "greenserve-config", "mountPath": CONFIG_DIR, "readOnly": True},
        ],
    }
    pod_spec: dict[str, Any] = {
        "securityContext": pod_security_context(),
        "automountServiceAccountToken": False,
        "containers": [container],
        "tolerations": [{"key": c.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        "terminationGracePeriodSeconds": options.termination_grace_seconds,
        "volumes": [
            *storage.volumes,
            {"name": "greenserve-config", "configMap": {"name": config_map_name(key, shard)}},
        ],
        "enableServiceLinks": False,
    }
    if key.product:
        pod_spec["nodeSelector"] = {c.GPU_PRODUCT_LABEL: key.product}
    if options.scheduler_name:
        pod_spec["schedulerName"] = options.scheduler_name
    labels = pool_labels(key, shard)
    name = shard_name(key, shard)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": key.namespace,
            "labels": labels,
            "ownerReferences": _owner_refs(members),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {c.LABEL_POOL: name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(c.AGENT_METRICS_PORT),
                        **warmup_annotations(options),
                    },
                },
                "spec": pod_spec,
            },
        },
    }
