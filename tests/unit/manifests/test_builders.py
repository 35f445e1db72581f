from __future__ import annotations

from typing import Any

import pytest

from greenserve.api import constants as c
from greenserve.api.v1alpha1 import parse_spec
from greenserve.manifests import builders
from greenserve.manifests.storage import UnsupportedStorageError, resolve

OWNER = builders.Owner(name="resnet", namespace="ml", uid="1234")


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
    assert {p["containerPort"] for p in container["ports"]} == {8500, 8501}
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
