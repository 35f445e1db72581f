from __future__ import annotations

from typing import Any

from greenserve.api import conditions as cond
from greenserve.reconcile.status import Observed, ready_condition, status_fields


def dep(ready: int, updated: int, generation: int = 2, observed: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {
            "observedGeneration": observed,
            "replicas": updated,
            "readyReplicas": ready,
            "updatedReplicas": updated,
        },
    }


def test_ready_when_all_desired_replicas_are_ready_and_updated() -> None:
    ready, reason, _ = ready_condition(Observed(desired=2, deployment=dep(2, 2), gpus_per_replica=1))
    assert ready and reason == cond.REASON_AVAILABLE


def test_not_ready_during_rollout_of_a_new_generation() -> None:
    ready, reason, _ = ready_condition(Observed(desired=2, deployment=dep(2, 2, generation=3, observed=2)))
    assert not ready and reason == cond.REASON_PROGRESSING


def test_unschedulable_pods_are_reported() -> None:
    pod = {
        "metadata": {"name": "p-1"},
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
                }
            ]
        },
    }
    ready, reason, message = ready_condition(Observed(desired=2, deployment=dep(1, 2), pods=[pod]))
    assert not ready and reason == cond.REASON_UNSCHEDULABLE
    assert "Insufficient nvidia.com/gpu" in message


def test_scaled_to_zero_is_ready() -> None:
    assert ready_condition(Observed(desired=0, deployment=dep(0, 0)))[:2] == (
        True,
        cond.REASON_SCALED_TO_ZERO,
    )


def test_status_fields_count_gpus_of_ready_replicas() -> None:
    fields = status_fields(Observed(desired=3, deployment=dep(2, 3), gpus_per_replica=2))
    assert fields == {"replicas": 3, "readyReplicas": 2, "desiredReplicas": 3, "gpus": 4}
