from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from greenserve.api import constants
from greenserve.api.v1alpha1 import ConsolidationPolicy, ScalingMetric, parse_spec


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": {"name": "resnet", "storageUri": "pvc://models/resnet"}}
    base.update(overrides)
    return base


def test_defaults() -> None:
    s = parse_spec(spec())
    assert s.runtime.image == constants.DEFAULT_SERVING_IMAGE
    assert s.gpu.count == 1
    assert s.gpu.tolerations is None  # the GPU toleration is added by the builder, next to the user's
    assert s.runtime.grpc is False and s.pod is None
    assert (s.scaling.min_replicas, s.scaling.max_replicas) == (1, 4)
    assert s.scaling.metric is ScalingMetric.REQUESTS_PER_SECOND
    assert s.energy.consolidation and s.energy.policy is ConsolidationPolicy.BALANCED
    assert s.slo.latency_p95_ms is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (spec(scaling={"minReplicas": 5, "maxReplicas": 2}), "minReplicas must be less than or equal"),
        (spec(scaling={"minReplicas": 1, "scaleToZeroAfterSeconds": 60}), "only with minReplicas 0"),
        (spec(scaling={"metric": "gpuUtilization", "target": 150}), "percentage"),
        (spec(model={"name": "m", "storageUri": "pvc://c/m", "credentialsSecret": "s"}), "credentialsSecret"),
        (spec(model={"name": "bad name", "storageUri": "/models/m"}), "pattern"),
        (spec(model={"name": "m", "storageUri": "s3://bucket/m"}), "no S3 filesystem"),
        (spec(model={"name": "m", "storageUri": "pvc://c/../../etc"}), r"'\.\.' path segments"),
        (spec(model={"name": "m", "storageUri": "/models/m;rm -rf /"}), "pattern"),
        (spec(model={"name": "m", "storageUri": "/models/$(id)"}), "pattern"),
        (spec(model={"name": "m", "storageUri": "/models/modèle"}), "pattern"),
        (spec(scaling={"target": 0}), "greater than 0"),
        (spec(gpu={"count": 0}, scaling={"metric": "gpuUtilization", "target": 50}), "needs GPUs"),
        (spec(runtime={"resources": {"requests": {"cpu": "1" * 200_000}}}), "not a Kubernetes quantity"),
        (spec(runtime={"resources": {"requests": {"cpu": "-1"}}}), "not a Kubernetes quantity"),
        (spec(runtime={"resources": {"limits": {"nvidia.com/gpu": 2}}}), "spec.gpu.count"),
        (spec(runtime={"image": " tensorflow/serving"}), "pattern"),
        (spec(runtime={"args": ["--port=9000"]}), "the operator does"),
        (spec(runtime={"volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}), "pod.volumes"),
        (spec(pod={"volumes": [{"name": "model-store", "emptyDir": {}}]}), "operator's volume names"),
        (spec(pod={"labels": {"bad key!": "x"}}), "pattern"),
        (spec(scaling={"minReplicas": -1}), "greater than or equal"),
        (spec(replicas=3), "Extra inputs"),
    ],
)
def test_invalid_specs_are_rejected(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_spec(raw)


def test_cpu_serving_accepts_a_non_gpu_image() -> None:
    s = parse_spec(spec(gpu={"count": 0}, runtime={"image": "tensorflow/serving:2.18.0"}))
    assert s.gpu.count == 0


def test_ordinary_input_is_accepted() -> None:
    """What issue 11 found rejected: digest or mirrored images, integer quantities, sub-1 targets, '_'."""
    digest = "registry.example.com/mirror/serving@sha256:" + "a" * 64
    s = parse_spec(
        spec(
            model={"name": "half_plus_two", "storageUri": "gs://bucket/models/half_plus_two"},
            runtime={
                "image": digest,
                "resources": {
                    "requests": {"cpu": 1, "ephemeral-storage": "10Gi"},
                    "limits": {"memory": "4Gi"},
                },
            },
            gpu={"count": 1, "tolerations": [{"key": "x", "operator": "Exists", "tolerationSeconds": 30}]},
            scaling={"target": 0.5},
        )
    )
    assert s.runtime.image == digest and s.model.name == "half_plus_two"
    assert s.runtime.resources.requests == {"cpu": 1, "ephemeral-storage": "10Gi"}
    assert s.scaling.target == 0.5
    assert s.gpu.tolerations == [{"key": "x", "operator": "Exists", "tolerationSeconds": 30}]
