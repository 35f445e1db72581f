"""A pool pod's consolidation move (reconcile/pool_moves.py): which pool pods the plan may move, and when
the source may go. The cluster test is tests/integration/test_pools.py; the real-node one
tests/realnode/test_pools_real.py."""

from __future__ import annotations

from typing import Any

import pytest

from greenserve.api import constants as c
from greenserve.manifests import pools as pm
from greenserve.manifests.builders import BuildOptions
from greenserve.policy import consolidation as pc
from greenserve.reconcile.consolidator import build_snapshot
from greenserve.reconcile.moves import MOVE_TIMEOUT_S, MoveStep
from greenserve.reconcile.pool_moves import (
    KEY_PREFIX,
    PoolMoveRecord,
    next_step,
    pool_gpu,
    pool_key_of,
    replica_views,
)

T0 = 1_000_000.0
GPU = "gs-pool-abc"
RECORD = PoolMoveRecord("a", "b", T0)


def pool_pod(
    name: str,
    node: str | None = "a",
    models: tuple[str, ...] = ("m1", "m2"),
    ready: bool = True,
    terminating: bool = False,
    moving: bool = False,
    **ann: str,
) -> dict[str, Any]:
    labels = {c.LABEL_POOL: GPU, **{f"{c.ROUTE_LABEL_PREFIX}{m}": c.ROUTE_AVAILABLE for m in models}}
    if moving:
        ann[c.ANN_POOL_MOVE] = RECORD.annotation()
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "labels": labels, "annotations": ann}
    if terminating:
        meta["deletionTimestamp"] = "2026-12-05T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"resources": {"limits": {c.GPU_RESOURCE: "1"}}}]},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


SERVING = {"m1": {"src", "new"}, "m2": {"src", "new"}}


def test_the_source_goes_only_once_a_replacement_serves_every_model_it_serves() -> None:
    src = pool_pod("src", moving=True)
    assert next_step(RECORD, src, [src, pool_pod("new", "b")], SERVING, T0 + 1) is MoveStep.RETIRE
    # Not yet: not Ready, a model not loaded there (no label), not an endpoint of a model's Service yet.
    for pods, endpoints in (
        ([src, pool_pod("new", "b", ready=False)], SERVING),
        ([src, pool_pod("new", "b", models=("m1",))], SERVING),
        ([src, pool_pod("new", "b")], {"m1": {"src", "new"}, "m2": {"src"}}),
        ([src], SERVING),
        ([src, pool_pod("new", "b", terminating=True)], SERVING),
    ):
        assert next_step(RECORD, src, pods, endpoints, T0 + 1) is MoveStep.WAIT
    # A model that the replacement serves but the source no longer does is not waited for.
    lean = pool_pod("src", models=("m1",), moving=True)
    assert next_step(RECORD, lean, [lean, pool_pod("new", "b", models=("m1",))], SERVING, T0 + 1) is (
        MoveStep.RETIRE
    )


def test_a_move_ends_with_its_source_or_after_the_timeout() -> None:
    src = pool_pod("src", moving=True)
    slow = [src, pool_pod("new", "b", ready=False)]
    assert next_step(RECORD, src, slow, SERVING, T0 + MOVE_TIMEOUT_S - 1) is MoveStep.WAIT
    assert next_step(RECORD, src, slow, SERVING, T0 + MOVE_TIMEOUT_S + 1) is MoveStep.TIMED_OUT
    assert next_step(RECORD, None, slow, SERVING, T0 + 1) is MoveStep.SOURCE_GONE
    gone = pool_pod("src", moving=True, terminating=True)
    assert next_step(RECORD, gone, slow, SERVING, T0 + 1) is MoveStep.SOURCE_GONE
    # Closed already (the retire patch landed before a restart): nothing left to do.
    assert next_step(RECORD, pool_pod("src"), slow, SERVING, T0 + 1) is MoveStep.SOURCE_GONE


def test_the_record_round_trips_and_an_unreadable_one_times_out_at_once() -> None:
    assert PoolMoveRecord.of(pool_pod("src", moving=True)) == RECORD
    assert PoolMoveRecord.of(pool_pod("src")) is None
    broken = PoolMoveRecord.of(pool_pod("src", **{c.ANN_POOL_MOVE: '{"startedAt": "soon"}'}))
    assert broken is not None and broken.started_at == 0.0
    assert PoolMoveRecord.of(pool_pod("src", **{c.ANN_POOL_MOVE: "not json"})) is None


def test_a_pool_pod_is_movable_only_when_every_model_it_serves_allows_it() -> None:
    movable = {"ns/m1", "ns/m2"}
    (view,) = replica_views([pool_pod("p")], movable, T0)
    assert view.service == f"{KEY_PREFIX}ns/{GPU}" and view.node == "a" and view.gpus == 1
    assert not view.protected
    # A model that does not allow consolidation (Performance, or consolidation off) pins it.
    assert replica_views([pool_pod("p")], {"ns/m1"}, T0)[0].protected
    # So does serving nothing yet, a warm-up's do-not-disrupt, or a second pod of its GPU (a move or a
    # rollout under way).
    assert replica_views([pool_pod("p", models=())], movable, T0)[0].protected
    warming = pool_pod("p", **{c.ANN_KARPENTER_DO_NOT_DISRUPT: "true"})
    assert replica_views([warming], movable, T0)[0].protected
    assert all(v.protected for v in replica_views([pool_pod("p"), pool_pod("q", "b")], movable, T0))
    # Not a pool pod, not scheduled, or going: not a candidate at all.
    replica = pool_pod("r")
    replica["metadata"]["labels"][c.LABEL_MODELSERVICE] = "m1"
    assert (
        replica_views([replica, pool_pod("u", node=None), pool_pod("t", terminating=True)], movable, T0) == []
    )


def test_the_plan_moves_a_lone_pool_pod_onto_the_fuller_node() -> None:
    def node(name: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "spec": {}, "status": {"allocatable": {c.GPU_RESOURCE: "8"}}}

    tenant = pool_pod("tenant", node="b", models=())
    tenant["metadata"]["labels"] = {}
    tenant["spec"]["containers"][0]["resources"]["limits"][c.GPU_RESOURCE] = "4"
    snap = build_snapshot([node("a"), node("b")], [pool_pod("p"), tenant], {"ns/m1", "ns/m2"}, T0)
    plan = pc.plan(snap, T0, pc.limits(0.0))
    assert [(m.pod, m.service, m.from_node, m.to_node) for m in plan.moves] == [
        ("p", f"{KEY_PREFIX}ns/{GPU}", "a", "b")
    ]
    assert set(plan.emptied_nodes) == {"a"}


@pytest.mark.parametrize("product", ["NVIDIA-L4", None])
def test_a_pool_pod_names_its_own_pool(product: str | None) -> None:
    # The move syncs the pool from the pod alone (its namespace, GPU product selector and image).
    key = pm.PoolKey("ns", product, "registry.example/serving:1")
    members = [pm.PoolMember("m1", "uid-1", "m1", "/models/m1")]
    for shard in (0, 2):
        template = pm.pool_deployment(key, members, 1, BuildOptions(), shard=shard)["spec"]["template"]
        pod = {"metadata": {"namespace": "ns", **template["metadata"]}, "spec": template["spec"]}
        assert pool_key_of(pod) == key and pm.shard_of(key, str(pool_gpu(pod))) == shard
