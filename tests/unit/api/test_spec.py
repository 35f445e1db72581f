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
    assert s.gpu.tolerations[0].key == constants.GPU_RESOURCE
    assert (s.scaling.min_replicas, s.scaling.max_replicas) == (1, 4)
    assert s.scaling.metric is ScalingMetric.REQUESTS_PER_SECOND
    assert s.energy.consolidation and s.energy.policy is ConsolidationPolicy.BALANCED
    assert s.slo.latency_p95_ms is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (spec(scaling={"minReplicas": 5, "maxReplicas": 2}), "minReplicas must be less than or equal"),
        (spec(scaling={"metric": "gpuUtilization", "target": 150}), "percentage"),
        (spec(gpu={"count": 1}, runtime={"image": "tensorflow/serving:2.18.0"}), "GPU build"),
        (spec(model={"name": "m", "storageUri": "pvc://c/m", "credentialsSecret": "s"}), "credentialsSecret"),
        (spec(model={"name": "Bad_Name", "storageUri": "/models/m"}), "pattern"),
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
