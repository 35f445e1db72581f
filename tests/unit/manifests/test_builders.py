from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from greenserve import __version__, contract
from greenserve.api import constants as c
from greenserve.api.v1alpha1 import parse_spec
from greenserve.manifests import builders
from greenserve.manifests.storage import UnsupportedStorageError, resolve

OWNER = builders.Owner(name="resnet", namespace="ml", uid="1234")
REPO = Path(__file__).resolve().parents[3]


def spec(**overrides: Any) -> Any:
    raw: dict[str, Any] = {"model": {"name": "resnet", "storageUri": "pvc://models/resnet/v"}}
    raw.update(overrides)
    return parse_spec(raw)


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = dep["spec"]["template"]["spec"]["containers"]
    return containers[0]


def test_deployment_requests_gpus_and_tolerates_gpu_taint() -> None:
    dep = builders.deployment(
        OWNER, spec(gpu={"count": 2, "product": "NVIDIA-H100"}), 3, builders.BuildOptions()
    )
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 3
    assert _container(dep)["resources"]["limits"][c.GPU_RESOURCE] == "2"
    assert pod["nodeSelector"] == {c.GPU_PRODUCT_LABEL: "NVIDIA-H100"}
    assert {"key": c.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert "schedulerName" not in pod


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"gpu": {"count": 1, "product": "L4"}},
        {
            "gpu": {"count": 1, "product": "L4"},
            "pod": {"nodeSelector": {"zone": "a", c.GPU_PRODUCT_LABEL: "T4"}},
        },
        {"pod": {"nodeSelector": {"zone": "a"}}},
    ],
)
def test_node_selector_is_the_one_the_pods_carry(overrides: dict[str, Any]) -> None:
    # What the tick's give-way step groups GPUs by (reconcile/give_way.py) must be where the pods go.
    s = spec(**overrides)
    pod = builders.deployment(OWNER, s, 1, builders.BuildOptions())["spec"]["template"]["spec"]
    assert builders.node_selector(s) == pod.get("nodeSelector", {})


def test_deployment_serves_tf_serving_ports_and_probes_the_model() -> None:
    dep = builders.deployment(OWNER, spec(), 1, builders.BuildOptions(scheduler_name="greenserve-binpack"))
    container = _container(dep)
    # gRPC only with spec.runtime.grpc (test_grpc_is_exposed_only_on_request).
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": 8501,
        "metrics": c.AGENT_METRICS_PORT,
    }
    assert "--model_name=resnet" in container["args"]
    assert "--model_base_path=/mnt/models/resnet/v" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/resnet"
    assert dep["spec"]["template"]["spec"]["schedulerName"] == "greenserve-binpack"
    # A rollout never removes a replica before its replacement is ready.
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_every_object_is_owned_and_labelled() -> None:
    objs = builders.objects(OWNER, spec(runtime={"batching": {"enabled": True}}), 1, builders.BuildOptions())
    assert [o["kind"] for o in objs] == ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"]
    for obj in objs:
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref["uid"] == "1234" and ref["controller"] is True and ref["kind"] == "ModelService"
        assert obj["metadata"]["labels"][c.LABEL_MODELSERVICE] == "resnet"
        assert obj["metadata"]["namespace"] == "ml"


def test_batching_mounts_its_config_and_changes_the_pod_hash() -> None:
    plain = spec()
    batched = spec(runtime={"batching": {"enabled": True, "maxBatchSize": 64}})
    dep = builders.deployment(OWNER, batched, 1, builders.BuildOptions())
    assert "--enable_batching=true" in _container(dep)["args"]
    assert "max_batch_size { value: 64 }" in builders.batching_config(batched)
    assert builders.spec_hash(plain) != builders.spec_hash(batched)
    assert builders.spec_hash(plain) == builders.spec_hash(spec())
    # Scaling, energy and SLO settings do not restart serving replicas.
    tuned = spec(
        scaling={"minReplicas": 2, "maxReplicas": 9},
        energy={"policy": "PowerSaving"},
        slo={"latencyP95Ms": 50},
    )
    assert builders.spec_hash(tuned) == builders.spec_hash(plain)


def test_pdb_allows_one_voluntary_disruption() -> None:
    pdb = builders.pod_disruption_budget(OWNER)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == {c.LABEL_MODELSERVICE: "resnet"}


@pytest.mark.parametrize(
    ("uri", "base", "claim"),
    [
        ("pvc://models/a/b", "/mnt/models/a/b", "models"),
        ("pvc://models", "/mnt/models", "models"),
        ("gs://bucket/m", "gs://bucket/m", None),
        ("/models/m/", "/models/m", None),
    ],
)
def test_storage_resolution(uri: str, base: str, claim: str | None) -> None:
    storage = resolve(uri)
    assert storage.base_path == base
    claims = [v["persistentVolumeClaim"]["claimName"] for v in storage.volumes]
    assert claims == ([claim] if claim else [])


@pytest.mark.parametrize("uri", ["hdfs://nn/models", "http://host/m", "pvc:///path", "s3://bucket/m"])
def test_unsupported_storage(uri: str) -> None:
    with pytest.raises(UnsupportedStorageError):
        resolve(uri)


def test_initial_replicas_is_at_least_one() -> None:
    assert builders.initial_replicas(spec(scaling={"minReplicas": 0, "maxReplicas": 3})) == 1
    assert builders.initial_replicas(spec(scaling={"minReplicas": 2, "maxReplicas": 3})) == 2


def test_new_replicas_are_protected_from_node_autoscalers_until_ready() -> None:
    dep = builders.deployment(OWNER, spec(), 1, builders.BuildOptions(warmup_protection="10m"))
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann[c.ANN_KARPENTER_DO_NOT_DISRUPT] == "10m"
    assert ann[c.ANN_CA_SAFE_TO_EVICT] == "false"

    def live(ready: bool, **extra: str) -> dict[str, Any]:
        return {
            "metadata": {"annotations": {**ann, **extra}},
            "status": {"conditions": [{"type": "Ready", "status": str(ready)}]},
        }

    assert builders.lift_warmup_protection(live(False)) is None  # still warming: keep it
    assert builders.lift_warmup_protection(live(True)) == {
        "metadata": {"annotations": {c.ANN_KARPENTER_DO_NOT_DISRUPT: None, c.ANN_CA_SAFE_TO_EVICT: None}}
    }
    # A user's own do-not-disrupt "true" is not ours to lift; nothing left to lift is no patch.
    lifted = builders.lift_warmup_protection(live(True, **{c.ANN_KARPENTER_DO_NOT_DISRUPT: "true"}))
    assert lifted == {"metadata": {"annotations": {c.ANN_CA_SAFE_TO_EVICT: None}}}
    assert builders.lift_warmup_protection({"metadata": {}, "status": live(True)["status"]}) is None


def test_default_runtime_is_greenserves_serving_image_of_this_release() -> None:
    dep = builders.deployment(OWNER, spec(), 1, builders.BuildOptions())
    assert _container(dep)["image"] == f"ghcr.io/greenserve/greenserve-serving:{__version__}"


@pytest.mark.parametrize("batching", [False, True])
def test_tf_serving_monitoring_is_on_through_the_pods_config_map(batching: bool) -> None:
    s = spec(runtime={"batching": {"enabled": batching}})
    objs = builders.objects(OWNER, s, 1, builders.BuildOptions())
    cm = next(o for o in objs if o["kind"] == "ConfigMap")
    dep = next(o for o in objs if o["kind"] == "Deployment")
    container = _container(dep)
    flag = next(a for a in container["args"] if a.startswith("--monitoring_config_file="))
    path = flag.split("=", 1)[1]
    # The flag names a file of the mounted ConfigMap, and that file turns the Prometheus endpoint on.
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    config = cm["data"][path.rsplit("/", 1)[1]]
    assert "enable: true" in config and f'path: "{contract.TFS_MONITORING_PATH}"' in config
    assert ("batching.config" in cm["data"]) is batching


def test_serving_image_ships_the_same_monitoring_config() -> None:
    assert (REPO / "serving-image/monitoring.config").read_text() == contract.TFS_MONITORING_CONFIG


def test_probes_use_named_ports_of_the_container() -> None:
    container = _container(builders.deployment(OWNER, spec(), 1, builders.BuildOptions()))
    names = {p["name"] for p in container["ports"]}
    for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
        action = container[probe].get("httpGet") or container[probe].get("tcpSocket")
        assert action["port"] in names, probe


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standard "restricted" (v1.34) checks that apply to what the builder writes."""
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    allowed_volumes = {"configMap", "emptyDir", "persistentVolumeClaim", "secret", "projected",
                       "downwardAPI", "ephemeral", "csi"}  # fmt: skip
    for vol in pod.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if not kinds <= allowed_volumes:
            out.append(f"volume {vol['name']}: {kinds}")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(key)
    for ctr in [*pod.get("initContainers", []), *pod["containers"]]:
        sc = ctr.get("securityContext") or {}
        name = ctr["name"]
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            out.append(f"{name}: capabilities must drop ALL")
        if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities added")
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            out.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile")
        if any(p.get("hostPort") for p in ctr.get("ports", [])):
            out.append(f"{name}: hostPort")
    return out


@pytest.mark.parametrize(
    "overrides",
    [{}, {"runtime": {"batching": {"enabled": True}}}, {"model": {"name": "m", "storageUri": "/models/m"}}],
)
def test_serving_pods_meet_pod_security_restricted(overrides: dict[str, Any]) -> None:
    dep = builders.deployment(OWNER, spec(**overrides), 1, builders.BuildOptions())
    pod = dep["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    # Non-root as the images' user even when an image's own USER is root (tensorflow/serving's is).
    assert pod["securityContext"]["runAsUser"] == c.RUNTIME_UID != 0


def test_restricted_check_catches_a_root_pod() -> None:
    pod = builders.deployment(OWNER, spec(), 1, builders.BuildOptions())["spec"]["template"]["spec"]
    del pod["securityContext"]
    pod["containers"][0].pop("securityContext")
    assert len(restricted_violations(pod)) == 4


def test_without_the_agents_front_readiness_is_the_agents_ready_endpoint() -> None:
    on = _container(builders.deployment(OWNER, spec(), 1, builders.BuildOptions()))
    off = _container(builders.deployment(OWNER, spec(), 1, builders.BuildOptions(agent_front=False)))
    assert "--agent-front=off" in off["args"] and not any(a.startswith("--agent-front") for a in on["args"])
    # TF Serving's model status can answer before the model is loaded; the agent's /ready cannot.
    assert off["readinessProbe"]["httpGet"] == {"path": contract.AGENT_READY_PATH, "port": "metrics"}
    assert on["readinessProbe"]["httpGet"] == {"path": "/v1/models/resnet", "port": "http"}


def _pod(dep: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = dep["spec"]["template"]["spec"]
    return pod


def test_grpc_is_exposed_only_on_request() -> None:
    """gRPC carries TF Serving's model-management API: off the Service unless spec.runtime.grpc (issue 17)."""
    off, on = spec(), spec(runtime={"grpc": True})
    assert [p["name"] for p in builders.service(OWNER, off)["spec"]["ports"]] == ["http"]
    assert [p["name"] for p in builders.service(OWNER, on)["spec"]["ports"]] == ["grpc", "http"]
    closed = _container(builders.deployment(OWNER, off, 1, builders.BuildOptions()))
    opened = _container(builders.deployment(OWNER, on, 1, builders.BuildOptions()))
    assert [p["name"] for p in closed["ports"]] == ["http", "metrics"]
    assert [p["name"] for p in opened["ports"]] == ["grpc", "http", "metrics"]


def test_service_account_token_is_not_mounted_unless_asked() -> None:
    assert (
        _pod(builders.deployment(OWNER, spec(), 1, builders.BuildOptions()))["automountServiceAccountToken"]
        is False
    )
    asked = spec(pod={"serviceAccountName": "irsa", "automountServiceAccountToken": True})
    pod = _pod(builders.deployment(OWNER, asked, 1, builders.BuildOptions()))
    assert pod["automountServiceAccountToken"] is True and pod["serviceAccountName"] == "irsa"


def test_user_tolerations_are_added_to_the_gpu_toleration() -> None:
    gpu = {"key": c.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
    mine = {
        "key": "spot",
        "operator": "Equal",
        "value": "yes",
        "effect": "NoExecute",
        "tolerationSeconds": 30,
    }
    pod = _pod(builders.deployment(OWNER, spec(gpu={"tolerations": [mine]}), 1, builders.BuildOptions()))
    assert pod["tolerations"] == [gpu, mine]
    # Written out by the user too (as the old default did): once, not twice.
    pod = _pod(builders.deployment(OWNER, spec(gpu={"tolerations": [gpu, mine]}), 1, builders.BuildOptions()))
    assert pod["tolerations"] == [gpu, mine]
    # CPU serving needs no GPU toleration.
    pod = _pod(builders.deployment(OWNER, spec(gpu={"count": 0}), 1, builders.BuildOptions()))
    assert pod["tolerations"] == []


def test_resources_keep_every_resource_name_and_integer_quantities() -> None:
    s = spec(
        runtime={"resources": {"requests": {"cpu": 1, "ephemeral-storage": "20Gi"}, "limits": {"cpu": 2}}}
    )
    res = _container(builders.deployment(OWNER, s, 1, builders.BuildOptions()))["resources"]
    assert res == {
        "requests": {"cpu": "1", "ephemeral-storage": "20Gi"},
        "limits": {"cpu": "2", c.GPU_RESOURCE: "1"},
    }


def test_pod_options_merge_into_the_template_and_the_operator_wins() -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            }
        }
    }
    spread = [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}]
    s = spec(
        gpu={"count": 1, "product": "NVIDIA-L4"},
        runtime={
            "args": ["--tensorflow_intra_op_parallelism=4"],
            "env": [{"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"}],
            "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
            "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True},
        },
        pod={
            "labels": {"team": "ml", c.LABEL_MODELSERVICE: "hijack"},
            "annotations": {"example.com/owner": "ml", c.ANN_SPEC_HASH: "forged"},
            "serviceAccountName": "models",
            "imagePullSecrets": [{"name": "regcred"}],
            "nodeSelector": {"pool": "gpu", c.GPU_PRODUCT_LABEL: "NVIDIA-A100"},
            "affinity": affinity,
            "runtimeClassName": "nvidia",
            "priorityClassName": "serving",
            "securityContext": {"fsGroup": 1000},
            "topologySpreadConstraints": spread,
            "volumes": [{"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}}],
        },
    )
    dep = builders.deployment(OWNER, s, 2, builders.BuildOptions())
    meta = dep["spec"]["template"]["metadata"]
    pod = _pod(dep)
    container = _container(dep)
    # The selector's label and the spec hash stay the operator's; the user's others are added.
    assert meta["labels"][c.LABEL_MODELSERVICE] == "resnet" and meta["labels"]["team"] == "ml"
    assert dep["spec"]["selector"]["matchLabels"].items() <= meta["labels"].items()
    assert meta["annotations"][c.ANN_SPEC_HASH] == builders.spec_hash(s)
    assert meta["annotations"]["example.com/owner"] == "ml"
    # The GPU product selector is the operator's (spec.gpu.product); the user's other keys are added.
    assert pod["nodeSelector"] == {"pool": "gpu", c.GPU_PRODUCT_LABEL: "NVIDIA-L4"}
    assert pod["serviceAccountName"] == "models" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["affinity"] == affinity and pod["topologySpreadConstraints"] == spread
    assert (pod["runtimeClassName"], pod["priorityClassName"]) == ("nvidia", "serving")
    # Security contexts: the user's keys over the restricted defaults, which stay where not overridden.
    assert pod["securityContext"] == {**builders.pod_security_context(), "fsGroup": 1000}
    assert {"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}} in pod["volumes"]
    # The model container keeps its name, its flags first and its GPU limit; the user's come after.
    assert container["name"] == "tfserving"
    assert container["args"][:3] == ["--port=8500", "--rest_api_port=8501", "--model_name=resnet"]
    assert container["args"][-1] == "--tensorflow_intra_op_parallelism=4"
    assert container["resources"]["limits"][c.GPU_RESOURCE] == "1"
    assert container["env"] == [{"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"}]
    assert {"name": "cache", "mountPath": "/cache"} in container["volumeMounts"]
    assert container["securityContext"] == {
        **builders.container_security_context(),
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
    }
    # Pod options are part of what the pods run: changing them rolls the pods.
    assert builders.spec_hash(s) != builders.spec_hash(spec(gpu={"count": 1, "product": "NVIDIA-L4"}))


def test_gcs_credentials_are_mounted_as_a_key_file() -> None:
    s = spec(
        model={
            "name": "m",
            "storageUri": "gs://bucket/m",
            "credentialsSecret": "gcs-key",
            "credentialsKey": "sa.json",
        },
        runtime={"env": [{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/elsewhere"}]},
    )
    dep = builders.deployment(OWNER, s, 1, builders.BuildOptions())
    container = _container(dep)
    assert {"name": "gcs-credentials", "secret": {"secretName": "gcs-key"}} in _pod(dep)["volumes"]
    mount = {"name": "gcs-credentials", "mountPath": "/var/secrets/google", "readOnly": True}
    assert mount in container["volumeMounts"]
    # The operator's variable wins over a user's of the same name: it points at the mounted file.
    assert container["env"] == [
        {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/secrets/google/sa.json"}
    ]
    assert container["envFrom"] == [{"secretRef": {"name": "gcs-key"}}]
    default_key = spec(model={"name": "m", "storageUri": "gs://b/m", "credentialsSecret": "k"})
    env = _container(builders.deployment(OWNER, default_key, 1, builders.BuildOptions()))["env"]
    assert env == [{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/secrets/google/key.json"}]
