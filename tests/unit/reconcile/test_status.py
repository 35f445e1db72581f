"""Ready means "able to serve the current spec"; faults carry the pod's own reason; Scaling follows the
Deployment until it reaches the decided count."""

from __future__ import annotations

import datetime as dt
from typing import Any

from greenserve.api import conditions as cond
from greenserve.api.constants import ANN_SPEC_HASH
from greenserve.reconcile.status import (
    Observed,
    ScaleIntent,
    assess,
    deployment_failure,
    pod_failure,
    scaling_condition,
    status_fields,
)

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def dep(ready: int, updated: int, generation: int = 2, observed: int = 2, replicas: int | None = None,
        conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "metadata": {"generation": generation},
        "spec": {"template": {"metadata": {"annotations": {ANN_SPEC_HASH: "new"}}}},
        "status": {
            "observedGeneration": observed,
            "replicas": updated if replicas is None else replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "conditions": conditions or [],
        },
    }


def pod(name: str, ready: bool, spec_hash: str = "new", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "annotations": {ANN_SPEC_HASH: spec_hash}},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}], **status},
    }


def test_ready_when_replicas_of_the_current_spec_are_ready() -> None:
    a = assess(Observed(desired=2, deployment=dep(2, 2), pods=[pod("a", True), pod("b", True)]))
    assert a.ready.status is True and a.ready.reason == cond.REASON_AVAILABLE
    assert a.progressing.status is False and a.degraded.status is False and a.fault is None


def test_scale_up_waiting_for_a_node_keeps_ready_true() -> None:
    pending = pod("c", False)
    pending["status"]["conditions"].append(
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/4 nodes"}
    )
    obs = Observed(desired=3, deployment=dep(1, 3), pods=[pod("a", True), pod("b", False), pending])
    a = assess(obs)
    assert a.ready.status is True and a.ready.reason == cond.REASON_AVAILABLE
    assert "1/3" in a.ready.message
    assert a.progressing.status is True and a.progressing.reason == cond.REASON_STARTING
    assert a.degraded.status is False, "a node being provisioned is not a fault"


def test_rollout_of_a_new_spec_is_unknown_while_the_old_one_serves() -> None:
    obs = Observed(
        desired=2, deployment=dep(2, 1, replicas=3), pods=[pod("o1", True, "old"), pod("o2", True, "old")]
    )
    a = assess(obs)
    assert a.ready.status == "Unknown" and a.ready.reason == cond.REASON_ROLLING_OUT
    assert a.progressing.status is True and a.progressing.reason == cond.REASON_ROLLING_OUT


def test_nothing_ready_and_unschedulable_is_a_fault() -> None:
    blocked = pod("p-1", False)
    blocked["status"]["conditions"].append(
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
        }
    )
    a = assess(Observed(desired=2, deployment=dep(0, 2), pods=[blocked]))
    assert a.ready.status is False and a.ready.reason == cond.REASON_UNSCHEDULABLE
    assert "Insufficient nvidia.com/gpu" in a.ready.message
    assert a.degraded.status is True and a.degraded.reason == cond.REASON_UNSCHEDULABLE


def test_scaled_to_zero_is_ready() -> None:
    a = assess(Observed(desired=0, deployment=dep(0, 0)))
    assert (a.ready.status, a.ready.reason) == (True, cond.REASON_SCALED_TO_ZERO)


def crashing(last: dict[str, Any], waiting: str = "CrashLoopBackOff") -> dict[str, Any]:
    return pod(
        "m-1",
        False,
        containerStatuses=[
            {
                "name": "tfserving",
                "ready": False,
                "restartCount": 3,
                "state": {"waiting": {"reason": waiting, "message": "back-off 40s restarting"}},
                "lastState": {"terminated": last},
            }
        ],
    )


def test_crash_loop_with_a_bad_model_path_says_model_load_failed() -> None:
    bad = crashing({"exitCode": 1, "reason": "Error", "message": "Could not find base path /models/nope"})
    a = assess(Observed(desired=1, deployment=dep(0, 1), pods=[bad]))
    assert a.ready.status is False and a.ready.reason == cond.REASON_MODEL_LOAD_FAILED
    assert "Could not find base path /models/nope" in a.ready.message
    assert a.fault is not None and a.fault.exit_code == 1 and a.fault.container == "tfserving"


def test_oom_killed_is_named() -> None:
    found = pod_failure(crashing({"exitCode": 137, "reason": "OOMKilled"}))
    assert found is not None and found.reason == cond.REASON_OOM_KILLED and "memory" in found.message


def test_image_pull_and_config_errors() -> None:
    def waiting(reason: str) -> dict[str, Any]:
        return pod(
            "m",
            False,
            containerStatuses=[
                {"name": "tfserving", "state": {"waiting": {"reason": reason, "message": "x"}}}
            ],
        )

    pulled = pod_failure(waiting("ImagePullBackOff"))
    assert pulled is not None and pulled.reason == cond.REASON_IMAGE_PULL_FAILED
    errimg = pod_failure(waiting("ErrImagePull"))
    assert errimg is not None and errimg.reason == cond.REASON_IMAGE_PULL_FAILED
    config = pod_failure(waiting("CreateContainerConfigError"))
    assert config is not None and config.reason == cond.REASON_CONTAINER_CONFIG
    assert pod_failure(waiting("ContainerCreating")) is None


def test_evicted_pod_counts_only_while_recent() -> None:
    evicted = pod(
        "e",
        False,
        phase="Failed",
        reason="Evicted",
        message="low on memory",
        startTime="2026-01-01T11:55:00Z",
    )
    found = pod_failure(evicted, NOW)
    assert found is not None and found.reason == cond.REASON_POD_EVICTED and "low on memory" in found.message
    assert pod_failure(evicted, NOW + dt.timedelta(hours=1)) is None


def test_pod_security_rejection_from_the_replicaset_failure() -> None:
    rejected = dep(
        0,
        0,
        conditions=[
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": 'pods "m-1" is forbidden: violates PodSecurity "restricted:latest": '
                "runAsNonRoot != true",
            }
        ],
    )
    a = assess(Observed(desired=1, deployment=rejected))
    assert a.ready.status is False and a.ready.reason == cond.REASON_POD_SECURITY
    assert "restricted" in a.ready.message
    quota = deployment_failure(
        dep(0, 0, conditions=[{"type": "ReplicaFailure", "status": "True", "message": "exceeded quota: q"}])
    )
    assert quota is not None and quota.reason == cond.REASON_QUOTA


def test_a_failing_replica_beside_ready_ones_is_degraded_not_unready() -> None:
    bad = crashing({"exitCode": 1, "reason": "Error"})
    a = assess(Observed(desired=2, deployment=dep(1, 2), pods=[pod("a", True), bad]))
    assert a.ready.status is True
    assert a.degraded.status is True and a.degraded.reason == cond.REASON_MODEL_LOAD_FAILED


def test_status_fields_count_gpus_of_ready_replicas() -> None:
    fields = status_fields(Observed(desired=3, deployment=dep(2, 3), gpus_per_replica=2))
    assert (fields.replicas, fields.ready_replicas, fields.desired_replicas, fields.gpus) == (3, 2, 3, 4)


def test_scaling_stays_true_until_the_deployment_reaches_the_count() -> None:
    up = ScaleIntent(previous=1, desired=3, reason="ScaleUp", message="ScaleUp, demand 3")
    obs = Observed(desired=3, deployment=dep(1, 3), pods=[pod("a", True)])
    first = scaling_condition(up, None, obs, current_ready=1)
    assert (first.status, first.reason) == (True, cond.REASON_SCALE_UP) and "1 -> 3" in first.message
    stored = {"type": cond.SCALING, "status": "True", "reason": first.reason, "message": first.message}
    steady = ScaleIntent(previous=3, desired=3, reason="Steady", message="Steady, demand 3")
    still = scaling_condition(steady, stored, obs, current_ready=1)
    assert (still.status, still.reason) == (True, cond.REASON_SCALE_UP), "a later pass still scales"
    done = Observed(desired=3, deployment=dep(3, 3), pods=[pod(n, True) for n in "abc"])
    reached = scaling_condition(steady, stored, done, current_ready=3)
    assert (reached.status, reached.reason) == (False, "Steady")
    hold = ScaleIntent(previous=3, desired=3, reason="HoldMetricsMissing", message="no metrics")
    assert scaling_condition(hold, None, done, 3).reason == "HoldMetricsMissing"
    capped = ScaleIntent(previous=3, desired=3, reason="ScaleUp", message="", capped_from=6)
    assert scaling_condition(capped, None, done, 3).reason == cond.REASON_GPU_CAP


def test_a_model_server_running_past_its_startup_budget_without_the_model_is_named() -> None:
    def running(started: str) -> dict[str, Any]:
        return pod(
            "m",
            False,
            containerStatuses=[
                {"name": "tfserving", "ready": False, "state": {"running": {"startedAt": started}}}
            ],
        )

    stuck = pod_failure(running("2026-01-01T11:45:00Z"), NOW)
    assert (
        stuck is not None and stuck.reason == cond.REASON_MODEL_LOAD_TIMEOUT and "storageUri" in stuck.message
    )
    assert pod_failure(running("2026-01-01T11:58:00Z"), NOW) is None, "still within the startup budget"
