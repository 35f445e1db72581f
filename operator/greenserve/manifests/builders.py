"""Pure builders: a parsed ModelService spec in, the Kubernetes objects the operator applies out.

Each object is a complete server-side-apply intent: the operator applies it with its own field manager,
so a field dropped here is removed from the live object, and fields other managers own are left alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from greenserve import contract
from greenserve.api import constants as c
from greenserve.api.objects import pod_ready
from greenserve.api.v1alpha1 import ModelServiceSpec
from greenserve.manifests.storage import ModelStorage, resolve

# The pod's ConfigMap is mounted here (it shadows the serving image's own copy of monitoring.config).
CONFIG_DIR = "/etc/greenserve"
BATCHING_FILE = f"{CONFIG_DIR}/batching.config"
MONITORING_FILE = f"{CONFIG_DIR}/monitoring.config"


@dataclass(frozen=True)
class Owner:
    """The ModelService the objects belong to (the garbage collector deletes them with it)."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": c.API_VERSION,
            "kind": c.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class BuildOptions:
    """Cluster-level choices made by the operator's configuration, not by the user."""

    scheduler_name: str | None = (
        None  # a bin-packing profile (MostAllocated on nvidia.com/gpu) when installed
    )
    termination_grace_seconds: int = 60
    # Time for endpoint removal to reach every proxy before the server sees SIGTERM.
    pre_stop_sleep_seconds: int = 5
    # A new replica is protected from node autoscalers until it is Ready (the operator lifts the
    # protection then); Karpenter's duration form ends it by itself if the operator is not there to.
    warmup_protection: str = "15m"
    # The serving agent's REST proxy (request counting, drain until quiet). It costs CPU per request
    # (tests/harness/bench_front.py); off, TF Serving answers REST itself and reports its own metrics.
    agent_front: bool = True


def selector_labels(owner: Owner) -> dict[str, str]:
    return {c.LABEL_MODELSERVICE: owner.name}


def common_labels(owner: Owner) -> dict[str, str]:
    return {
        **selector_labels(owner),
        c.LABEL_NAME: "tensorflow-serving",
        c.LABEL_INSTANCE: owner.name,
        c.LABEL_COMPONENT: "predictor",
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
    }


def _meta(owner: Owner, name: str | None = None) -> dict[str, Any]:
    return {
        "name": name or owner.name,
        "namespace": owner.namespace,
        "labels": common_labels(owner),
        "ownerReferences": [owner.reference()],
    }


def batching_config(spec: ModelServiceSpec) -> str:
    """TF Serving's batching parameters file (text-format protobuf)."""
    b = spec.runtime.batching
    return (
        f"max_batch_size {{ value: {b.max_batch_size} }}\n"
        f"batch_timeout_micros {{ value: {b.batch_timeout_micros} }}\n"
        f"num_batch_threads {{ value: {b.num_batch_threads} }}\n"
        f"max_enqueued_batches {{ value: {b.max_enqueued_batches} }}\n"
    )


def spec_hash(spec: ModelServiceSpec) -> str:
    """Digest of what the pods run, stamped on them so a config-only change (batching) still rolls them.

    Only model, runtime, GPU and pod fields count: a change of scaling bounds, energy policy or SLO must
    never restart serving replicas.
    """
    pod_relevant = spec.model_dump(
        mode="json", by_alias=True, include={"model", "runtime", "gpu", "pod"}, exclude_none=True
    )
    payload = json.dumps(pod_relevant, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _resources(spec: ModelServiceSpec) -> dict[str, Any]:
    # Quantities may be written as integers (cpu: 1); the API server takes either form.
    req = {k: str(v) for k, v in spec.runtime.resources.requests.items()}
    lim = {k: str(v) for k, v in spec.runtime.resources.limits.items()}
    if spec.gpu.count:
        # Extended resources must have requests == limits; setting the limit alone implies the request.
        lim[c.GPU_RESOURCE] = str(spec.gpu.count)
    out: dict[str, Any] = {}
    if req:
        out["requests"] = req
    if lim:
        out["limits"] = lim
    return out


def pod_security_context() -> dict[str, Any]:
    """Pod Security "restricted": non-root (as the images' uid, also for an image whose USER is root),
    the runtime's default seccomp profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": c.RUNTIME_UID,
        "runAsGroup": c.RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _by_name(owned: list[dict[str, Any]], extra: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The operator's entries, then the user's whose names it does not use: the operator's win."""
    taken = {e["name"] for e in owned}
    return owned + [e for e in extra or [] if e.get("name") not in taken]


def _container(spec: ModelServiceSpec, storage: ModelStorage, options: BuildOptions) -> dict[str, Any]:
    name = spec.model.name
    runtime = spec.runtime
    args = [
        f"--port={c.TFS_GRPC_PORT}",
        f"--rest_api_port={c.TFS_REST_PORT}",
        f"--model_name={name}",
        f"--model_base_path={storage.base_path}",
        # TF Serving's request metrics (Prometheus endpoint) are off without it.
        f"--monitoring_config_file={MONITORING_FILE}",
    ]
    mounts = [*storage.mounts, {"name": "greenserve-config", "mountPath": CONFIG_DIR, "readOnly": True}]
    if runtime.batching.enabled:
        args += ["--enable_batching=true", f"--batching_parameters_file={BATCHING_FILE}"]
    # The model status answers before the model is loaded once TF Serving serves REST itself; the agent's
    # /ready answers 200 only while the model is AVAILABLE (and not draining), with or without the front.
    readiness = {"path": f"/v1/models/{name}", "port": "http"}
    if not options.agent_front:
        args.append("--agent-front=off")
        readiness = {"path": contract.AGENT_READY_PATH, "port": "metrics"}
    args += runtime.args or []
    ports = [
        {"name": "http", "containerPort": c.TFS_REST_PORT, "protocol": "TCP"},
        # The agent's /metrics; PodMonitors and scrape configs select the port by this name.
        {"name": "metrics", "containerPort": c.AGENT_METRICS_PORT, "protocol": "TCP"},
    ]
    # TF Serving always listens on its gRPC port; it is declared (and put on the Service) only on request,
    # since its API includes model management.
    if runtime.grpc:
        ports.insert(0, {"name": "grpc", "containerPort": c.TFS_GRPC_PORT, "protocol": "TCP"})
    container: dict[str, Any] = {
        "name": "tfserving",
        "image": runtime.image,
        "args": args,
        "ports": ports,
        "resources": _resources(spec),
        "securityContext": container_security_context(),
        # The model status endpoint answers 200 only once the model is known to the server.
        **probes(readiness),
        "volumeMounts": mounts + list(runtime.volume_mounts or []),
    }
    env = _by_name(list(storage.env), runtime.env)
    if env:
        container["env"] = env
    if spec.model.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.model.credentials_secret}}]
    if runtime.security_context:
        # The user's settings over the restricted defaults (key by key, so a runAsUser alone keeps the rest).
        container["securityContext"] = {**container["securityContext"], **runtime.security_context}
    return container


def probes(readiness: dict[str, Any], liveness_timeout_s: int | None = None) -> dict[str, Any]:
    """The serving container's probes (a ModelService's own pods and the shared pools' pods, with their
    own readiness target). Liveness is the agent's: it answers while the model server process runs (the
    local backend of the CPU test image has no gRPC port to probe). Model loading shows in readiness
    only."""
    liveness: dict[str, Any] = {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 10}
    if liveness_timeout_s is not None:
        liveness["timeoutSeconds"] = liveness_timeout_s
    liveness["failureThreshold"] = 6
    return {
        "readinessProbe": {"httpGet": readiness, "periodSeconds": 5, "failureThreshold": 3},
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 5,
            "failureThreshold": 120,
        },
        "livenessProbe": liveness,
    }


def _tolerations(spec: ModelServiceSpec) -> list[dict[str, Any]]:
    """The user's tolerations, plus the GPU taint's when GPUs are requested (not replaced by the user's)."""
    user = [dict(t) for t in spec.gpu.tolerations or []]
    gpu = {"key": c.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
    return [gpu, *[t for t in user if t != gpu]] if spec.gpu.count else user


def node_selector(spec: ModelServiceSpec) -> dict[str, str]:
    """The serving pods' nodeSelector: the user's (spec.pod), with the GPU product's label over it."""
    out = dict((spec.pod.node_selector if spec.pod else None) or {})
    if spec.gpu.product:
        out[c.GPU_PRODUCT_LABEL] = spec.gpu.product
    return out


def _pod_options(spec: ModelServiceSpec, pod_spec: dict[str, Any], meta: dict[str, Any]) -> None:
    """Merge spec.pod into the pod template; the operator's labels, annotations, node selector and
    volumes win over the user's of the same name."""
    # Serving pods do not talk to the API server: no token unless the user asks for one.
    pod_spec["automountServiceAccountToken"] = False
    pod = spec.pod
    if pod is None:
        return
    if pod.automount_service_account_token:
        pod_spec["automountServiceAccountToken"] = True
    meta["labels"] = {**(pod.labels or {}), **meta["labels"]}
    meta["annotations"] = {**(pod.annotations or {}), **meta["annotations"]}
    if pod.node_selector:
        pod_spec["nodeSelector"] = {**pod.node_selector, **pod_spec.get("nodeSelector", {})}
    pod_spec["volumes"] = _by_name(pod_spec["volumes"], pod.volumes)
    passthrough = {
        "serviceAccountName": pod.service_account_name,
        "imagePullSecrets": pod.image_pull_secrets,
        "affinity": pod.affinity,
        "runtimeClassName": pod.runtime_class_name,
        "priorityClassName": pod.priority_class_name,
        "securityContext": {**pod_spec["securityContext"], **(pod.security_context or {})},
        "topologySpreadConstraints": pod.topology_spread_constraints,
    }
    pod_spec.update({k: v for k, v in passthrough.items() if v is not None})


def deployment(owner: Owner, spec: ModelServiceSpec, replicas: int, options: BuildOptions) -> dict[str, Any]:
    model = spec.model
    storage = resolve(model.storage_uri, model.credentials_secret, model.credentials_key)
    container = _container(spec, storage, options)
    container["lifecycle"] = {"preStop": {"sleep": {"seconds": options.pre_stop_sleep_seconds}}}
    volumes = [*storage.volumes, {"name": "greenserve-config", "configMap": {"name": config_map_name(owner)}}]
    pod_spec: dict[str, Any] = {
        "securityContext": pod_security_context(),
        "containers": [container],
        "tolerations": _tolerations(spec),
        "terminationGracePeriodSeconds": options.termination_grace_seconds,
        "volumes": volumes,
        "enableServiceLinks": False,
    }
    if spec.gpu.product:
        pod_spec["nodeSelector"] = {c.GPU_PRODUCT_LABEL: spec.gpu.product}
    if options.scheduler_name:
        pod_spec["schedulerName"] = options.scheduler_name
    template_meta: dict[str, Any] = {
        "labels": common_labels(owner),
        "annotations": {
            c.ANN_SPEC_HASH: spec_hash(spec),
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(c.AGENT_METRICS_PORT),
            **warmup_annotations(options),
        },
    }
    _pod_options(spec, pod_spec, template_meta)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(owner),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(owner)},
            # Surge, never unavailable: a rollout adds the new replica before an old one goes.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": {"metadata": template_meta, "spec": pod_spec},
        },
    }


def warmup_annotations(options: BuildOptions) -> dict[str, str]:
    """What keeps a warming replica (loading its model onto the GPU) from being disrupted: Karpenter's
    do-not-disrupt for a duration after pod start, cluster-autoscaler's safe-to-evict=false. Both are
    removed from the pod once it is Ready (`lift_warmup_protection`)."""
    return {
        c.ANN_KARPENTER_DO_NOT_DISRUPT: options.warmup_protection,
        c.ANN_CA_SAFE_TO_EVICT: "false",
    }


def lift_warmup_protection(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch that ends a Ready pod's warm-up protection, or None when there is nothing to lift.
    Only the warm-up values are removed: a user's own do-not-disrupt "true" stays."""
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    if not pod_ready(pod):
        return None
    lift: dict[str, None] = {}
    if c.ANN_KARPENTER_DO_NOT_DISRUPT in ann and ann[c.ANN_KARPENTER_DO_NOT_DISRUPT] != "true":
        lift[c.ANN_KARPENTER_DO_NOT_DISRUPT] = None
    if ann.get(c.ANN_CA_SAFE_TO_EVICT) == "false":
        lift[c.ANN_CA_SAFE_TO_EVICT] = None
    return {"metadata": {"annotations": lift}} if lift else None


def route_label(service: str) -> str:
    """The per-model routing label of a ModelService (its name is a DNS-1035 label: a valid label name)."""
    return f"{c.ROUTE_LABEL_PREFIX}{service}"


def service_selector(owner: Owner, routed: bool = False) -> dict[str, str]:
    """The Service's selector: its own replicas, or, while the model is (or is becoming, or has just
    stopped being) served from a shared pool, every pod labelled as serving it: pool pods where the model
    is AVAILABLE and its own Ready replicas (reconcile/pools.py sets the label on both)."""
    return {route_label(owner.name): c.ROUTE_AVAILABLE} if routed else selector_labels(owner)


def _service_ports(spec: ModelServiceSpec) -> list[dict[str, Any]]:
    ports = [{"name": "http", "port": c.TFS_REST_PORT, "targetPort": "http", "protocol": "TCP"}]
    if spec.runtime.grpc:
        ports.insert(0, {"name": "grpc", "port": c.TFS_GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"})
    return ports


def service(
    owner: Owner, spec: ModelServiceSpec, routed: bool = False, selector: bool = True
) -> dict[str, Any]:
    """The ModelService's Service (`routed`: see `service_selector`). Without `selector` it routes by the
    EndpointSlice the operator writes (`activator_slice`): the activator's pods, while a minReplicas 0
    service has no ready replica. Server-side apply removes a selector it no longer declares and puts it
    back when it does."""
    body: dict[str, Any] = {"type": "ClusterIP", "ports": _service_ports(spec)}
    if selector:
        body["selector"] = service_selector(owner, routed)
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(owner), "spec": body}


def private_service_name(owner_name: str) -> str:
    """`<name>-private`, shortened with a digest where that would pass the 63 characters of a Service name."""
    name = f"{owner_name}{c.PRIVATE_SERVICE_SUFFIX}"
    if len(name) <= 63:
        return name
    tag = hashlib.sha256(owner_name.encode()).hexdigest()[:8]
    head = owner_name[: 63 - len(c.PRIVATE_SERVICE_SUFFIX) - 9].rstrip("-")
    return f"{head}-{tag}{c.PRIVATE_SERVICE_SUFFIX}"


def private_service(owner: Owner, spec: ModelServiceSpec, routed: bool = False) -> dict[str, Any]:
    """Always selects the pods that serve the model (as the public Service's selector does), like
    Knative's private service: its EndpointSlices tell the activator when a replica is ready and where to
    forward the requests it holds. Headless: only its endpoints are used, no virtual IP is needed."""
    body = {"clusterIP": "None", "selector": service_selector(owner, routed), "ports": _service_ports(spec)}
    meta = _meta(owner, private_service_name(owner.name))
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": body}


def activator_slice_name(owner: Owner) -> str:
    return f"{owner.name}-activator"


def activator_slice(owner: Owner, addresses: list[str], port: int) -> dict[str, Any]:
    """The EndpointSlice that routes the selectorless Service to the activator's pods (`addresses`);
    with none it routes nowhere and the Service's own selector serves. Labelled with the Service's name,
    which is how kube-proxy joins it to the Service, and with greenserve as its manager, so the
    EndpointSlice controller leaves it alone."""
    ipv6 = any(":" in a for a in addresses)
    labels = {
        **common_labels(owner),
        c.LABEL_SERVICE_NAME: owner.name,
        c.LABEL_ENDPOINTSLICE_MANAGED_BY: c.ENDPOINTSLICE_MANAGER,
    }
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {**_meta(owner, activator_slice_name(owner)), "labels": labels},
        "addressType": "IPv6" if ipv6 else "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in sorted(addresses)],
    }


def pod_disruption_budget(owner: Owner) -> dict[str, Any]:
    # maxUnavailable 1: voluntary disruptions (node drains, our own moves) take one replica at a time, while
    # a single-replica service can still be moved. minAvailable would block every drain of such a service.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(owner),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(owner)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def config_map_name(owner: Owner) -> str:
    return f"{owner.name}-config"


def config_map(owner: Owner, spec: ModelServiceSpec) -> dict[str, Any]:
    """TF Serving's config files: monitoring always (so any TF Serving image exports its request
    metrics), batching when enabled."""
    data = {"monitoring.config": contract.TFS_MONITORING_CONFIG}
    if spec.runtime.batching.enabled:
        data["batching.config"] = batching_config(spec)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(owner, config_map_name(owner)),
        "data": data,
    }


def initial_replicas(spec: ModelServiceSpec) -> int:
    """Replicas before any metric is seen: at least one, so a new service answers its first request."""
    return max(1, min(spec.scaling.min_replicas, spec.scaling.max_replicas))


def objects(
    owner: Owner,
    spec: ModelServiceSpec,
    replicas: int,
    options: BuildOptions,
    routed: bool = False,
    zero_capable: bool = False,
) -> list[dict[str, Any]]:
    """Everything one ModelService owns, in apply order (config before the pods that mount it). With
    `zero_capable` (scale to zero through the activator) the public Service is left out: the routing step
    (reconcile/routing.py) applies it with or without its selector, and the private Service is added."""
    out = [config_map(owner, spec), deployment(owner, spec, replicas, options)]
    out.append(private_service(owner, spec, routed) if zero_capable else service(owner, spec, routed))
    out.append(pod_disruption_budget(owner))
    return out
