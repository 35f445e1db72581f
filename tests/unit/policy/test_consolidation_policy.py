from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from greenserve.policy.consolidation import (
    DRAIN_DELETION_COST,
    MAX_DELETION_COST,
    ClusterSnapshot,
    ConsolidationLimits,
    NodeView,
    ReplicaView,
    apply_moves,
    plan,
)

UNLIMITED = ConsolidationLimits(max_moves=1000, min_interval_s=0)


def snapshot(
    layout: dict[str, list[int]], capacity: int = 8, protected_nodes: tuple[str, ...] = ()
) -> ClusterSnapshot:
    nodes, replicas = [], []
    for node, gpus in layout.items():
        nodes.append(NodeView(node, capacity, sum(gpus), protected=node in protected_nodes))
        for i, g in enumerate(gpus):
            replicas.append(ReplicaView(f"{node}-p{i}", f"ns/svc{i % 2}", node, g))
    return ClusterSnapshot(tuple(nodes), tuple(replicas))


def test_empties_the_least_used_node_into_the_fullest() -> None:
    snap = snapshot({"a": [1], "b": [2, 2, 2], "c": [2, 2]})
    p = plan(snap, 0, UNLIMITED)
    assert p.emptied_nodes[0] == "a"
    assert p.moves[0].from_node == "a" and p.moves[0].to_node == "b"  # best fit: the fullest that fits
    assert p.deletion_costs["a-p0"] == DRAIN_DELETION_COST


def test_a_node_is_left_alone_when_its_replicas_do_not_all_fit() -> None:
    snap = snapshot({"a": [4, 4], "b": [4, 2]})
    assert plan(snap, 0, UNLIMITED).moves == ()


def test_protected_nodes_and_replicas_are_never_touched() -> None:
    snap = snapshot({"a": [1], "b": [2], "c": [2, 2]}, protected_nodes=("c",))
    p = plan(snap, 0, UNLIMITED)
    assert all(m.to_node != "c" and m.from_node != "c" for m in p.moves)
    warm = ClusterSnapshot(
        snap.nodes,
        tuple(ReplicaView(r.pod, r.service, r.node, r.gpus, ready=r.node != "a") for r in snap.replicas),
    )
    assert all(m.from_node != "a" for m in plan(warm, 0, UNLIMITED).moves)


def test_rate_limit_and_move_budget() -> None:
    snap = snapshot({"a": [1, 1], "b": [2, 2, 2]})
    limited = plan(snap, 100, ConsolidationLimits(max_moves=5, min_interval_s=60, last_move_at=70))
    assert limited.moves == () and limited.emptied_nodes == ("a",)
    one = plan(snap, 100, ConsolidationLimits(max_moves=1, min_interval_s=60, last_move_at=10))
    assert len(one.moves) == 1


def test_deletion_costs_prefer_least_allocated_nodes() -> None:
    snap = snapshot({"a": [4, 4], "b": [2]})  # nothing movable: b's replica cannot go to full a
    p = plan(snap, 0, UNLIMITED)
    assert p.deletion_costs["b-p0"] < p.deletion_costs["a-p0"]
    assert all(abs(v) <= MAX_DELETION_COST for v in p.deletion_costs.values())


layouts = st.dictionaries(
    st.sampled_from(["n0", "n1", "n2", "n3", "n4", "n5"]),
    st.lists(st.sampled_from([1, 1, 2, 4]), max_size=4).filter(lambda g: sum(g) <= 8),
    min_size=1,
)


@settings(max_examples=300, deadline=None)
@given(layout=layouts, protected=st.sets(st.sampled_from(["n0", "n1", "n2"])), budget=st.integers(1, 10))
def test_plan_properties(layout: dict[str, list[int]], protected: set[str], budget: int) -> None:
    snap = snapshot(layout, protected_nodes=tuple(protected))
    p = plan(snap, 0, ConsolidationLimits(max_moves=budget, min_interval_s=0))
    assert len(p.moves) <= budget
    assert p == plan(snap, 0, ConsolidationLimits(max_moves=budget, min_interval_s=0))  # deterministic
    after = apply_moves(snap, p.moves)
    # Capacity kept: the same replicas with the same GPUs exist after the moves, and no node is overfull.
    assert sorted((r.pod, r.gpus) for r in after.replicas) == sorted((r.pod, r.gpus) for r in snap.replicas)
    used: dict[str, int] = {}
    for r in after.replicas:
        used[r.node] = used.get(r.node, 0) + r.gpus
    assert all(used.get(n.name, 0) <= n.gpu_capacity for n in after.nodes)
    for m in p.moves:
        assert m.from_node not in protected and m.to_node not in protected
        assert m.to_node not in p.emptied_nodes
    # Idempotent: once the whole plan is applied there is nothing left to move.
    full = plan(snap, 0, UNLIMITED)
    assert plan(apply_moves(snap, full.moves), 0, UNLIMITED).moves == ()
    # Emptied nodes really end up empty.
    assert not {r.node for r in apply_moves(snap, full.moves).replicas} & set(full.emptied_nodes)


def test_moves_respect_the_replicas_node_selector() -> None:
    nodes = (
        NodeView("l4-a", 8, 2, labels={"nvidia.com/gpu.product": "L4"}),
        NodeView("h100", 8, 6, labels={"nvidia.com/gpu.product": "H100"}),
        NodeView("l4-b", 8, 4, labels={"nvidia.com/gpu.product": "L4"}),
    )
    replicas = (
        ReplicaView("p", "ns/s", "l4-a", 2, node_selector={"nvidia.com/gpu.product": "L4"}),
        ReplicaView("q", "ns/t", "h100", 6),
        ReplicaView("r", "ns/s", "l4-b", 4, node_selector={"nvidia.com/gpu.product": "L4"}),
    )
    p = plan(ClusterSnapshot(nodes, replicas), 0, UNLIMITED)
    assert [(m.pod, m.to_node) for m in p.moves] == [("p", "l4-b")]  # not onto the fuller H100 node
