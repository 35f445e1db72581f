"""Events are posted for what changed, not for what persists; risky specs and the GPU cap are said once."""

from __future__ import annotations

from typing import Any

from greenserve.api import conditions as cond
from greenserve.api.v1alpha1 import parse_spec
from greenserve.config import OperatorConfig
from greenserve.reconcile import modelservice as rec
from greenserve.reconcile.bounds import bounded, replica_cap
from greenserve.reconcile.status import ScaleIntent

U = cond.ConditionUpdate


def conds(*updates: cond.ConditionUpdate) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for u in updates:
        out = cond.set_condition(out, u, 1)
    return out


def spec(**over: Any) -> Any:
    body: dict[str, Any] = {"model": {"name": "m", "storageUri": "/models/m"}}
    body.update(over)
    return parse_spec(body)


def test_one_warning_per_distinct_fault_not_per_pass() -> None:
    crash = conds(
        U(cond.READY, False, "ModelLoadFailed", "exit 1"), U(cond.DEGRADED, True, "ModelLoadFailed")
    )
    first = rec._events_for([], crash, [], None)
    assert [(e.type, e.reason) for e in first] == [("Warning", "ModelLoadFailed")]
    # The same fault on the next pass, even with another message (restart counts): nothing new.
    again = conds(
        U(cond.READY, False, "ModelLoadFailed", "exit 1, again"), U(cond.DEGRADED, True, "ModelLoadFailed")
    )
    assert rec._events_for(crash, again, [], None) == []
    # A different fault is news.
    oom = conds(U(cond.READY, False, "OOMKilled", ""), U(cond.DEGRADED, True, "OOMKilled"))
    assert [e.reason for e in rec._events_for(again, oom, [], None)] == ["OOMKilled"]


def test_scale_up_posts_only_normal_events() -> None:
    ready = conds(U(cond.READY, True, cond.REASON_AVAILABLE, "1/3"), U(cond.DEGRADED, False, "NoFailure"))
    intent = ScaleIntent(previous=1, desired=3, reason="ScaleUp", message="ScaleUp, demand 3")
    out = rec._events_for(ready, ready, [], intent)
    assert [(e.type, e.reason) for e in out] == [("Normal", cond.EVENT_RESCALE)]
    assert "from 1 to 3" in out[0].message
    unchanged = ScaleIntent(previous=3, desired=3, reason="Steady", message="")
    assert rec._events_for(ready, ready, [], unchanged) == []


def test_becoming_ready_is_normal_and_said_once() -> None:
    progressing = conds(U(cond.READY, False, cond.REASON_PROGRESSING, "0/1"))
    ready = conds(U(cond.READY, True, cond.REASON_AVAILABLE, "1/1"))
    assert [(e.type, e.reason) for e in rec._events_for(progressing, ready, [], None)] == [
        ("Normal", cond.REASON_AVAILABLE)
    ]
    assert rec._events_for(ready, ready, [], None) == []
    assert rec._events_for([], progressing, [], None) == [], "starting up is not a fault"


def test_risky_specs_are_named() -> None:
    wildcard = spec(gpu={"tolerations": [{"operator": "Exists"}]})
    assert [w.reason for w in rec.spec_warnings(wildcard, None, None)] == ["WildcardToleration"]
    keyed = spec(gpu={"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]})
    assert rec.spec_warnings(keyed, None, None) == []
    bucket = spec(model={"name": "m", "storageUri": "gs://bucket/m"})
    assert [w.reason for w in rec.spec_warnings(bucket, None, None)] == ["NoCredentials"]
    with_secret = spec(model={"name": "m", "storageUri": "gs://bucket/m", "credentialsSecret": "gcs"})
    assert rec.spec_warnings(with_secret, None, None) == []
    workload_identity = spec(
        model={"name": "m", "storageUri": "gs://bucket/m"}, pod={"serviceAccountName": "wi"}
    )
    assert rec.spec_warnings(workload_identity, None, None) == []


def test_a_gpu_product_without_power_figures_is_named_not_priced_silently_as_another() -> None:
    for product in ("NVIDIA-L40S", "NVIDIA-GH200-480GB", "TEST-PROVISIONING"):
        found = rec.spec_warnings(spec(gpu={"product": product}), None, None)
        assert [w.reason for w in found] == ["UnknownGpuProduct"], product
        assert product in found[0].message and "L4 (15 W bare" in found[0].message
    for product in ("NVIDIA-H200", "NVIDIA-H100-80GB-HBM3", "NVIDIA-L4", "Tesla-T4", None):
        assert rec.spec_warnings(spec(gpu={"product": product}), None, None) == [], product


def test_warnings_condition_round_trips_its_reasons() -> None:
    found = rec.spec_warnings(spec(gpu={"tolerations": [{"operator": "Exists"}]}), 8, 4)
    c = rec.warnings_condition(found)
    assert c.status is True and c.reason == cond.REASON_MULTIPLE_WARNINGS
    stored = conds(c)[0]
    assert rec._warning_reasons(stored) == {"WildcardToleration", cond.REASON_GPU_CAP}
    assert rec.warnings_condition([]).status is False


def test_gpu_cap_clamps_below_min_replicas() -> None:
    s = spec(gpu={"count": 2}, scaling={"minReplicas": 1000, "maxReplicas": 1000})
    config = OperatorConfig(max_gpus_per_modelservice=16)
    assert replica_cap(s, config) == 8
    assert bounded(s, config, 1000) == rec.bounded(s, config, 5)  # any request lands on the cap
    assert bounded(s, config, 1000).replicas == 8 and bounded(s, config, 1000).capped_from == 1000
    assert bounded(s, OperatorConfig(), 1000).capped_from is None, "0 means no cap"
    assert replica_cap(spec(gpu={"count": 0}, runtime={"image": "tensorflow/serving:2.18.0"}), config) is None


def test_status_url_follows_the_cluster_domain() -> None:
    assert rec.service_url("resnet", "ml", OperatorConfig()) == "http://resnet.ml.svc.cluster.local:8501"
    custom = OperatorConfig(cluster_domain="corp.internal")
    assert rec.service_url("resnet", "ml", custom) == "http://resnet.ml.svc.corp.internal:8501"
