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


def test_deployment_serves_tf_serving_ports_and_probes_the_model() -> None:
    dep = builders.deployment(OWNER, spec(), 1, builders.BuildOptions(scheduler_name="greenserve-binpack"))
    container = _container(dep)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "grpc": 8500,
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
        ("s3://bucket/m", "s3://bucket/m", None),
        ("/models/m/", "/models/m", None),
    ],
)
def test_storage_resolution(uri: str, base: str, claim: str | None) -> None:
    storage = resolve(uri)
    assert storage.base_path == base
    claims = [v["persistentVolumeClaim"]["claimName"] for v in storage.volumes]
    assert claims == ([claim] if claim else [])


@pytest.mark.parametrize("uri", ["hdfs://nn/models", "http://host/m", "pvc:///path"])
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
