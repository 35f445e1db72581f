"""GPU consolidation: which replicas to move so that whole GPU nodes empty out. Pure.

Modelled on Karpenter's disruption package: candidates are ordered cheapest-to-disrupt first (the least
allocated GPU nodes), each candidate is simulated as a whole (every replica on it must fit elsewhere, or
the node is left alone), and a pass starts the moves off one node together (`batch`), as Karpenter
replaces a node's pods together.

Rules the plan never breaks (property-tested):

* replicas only move, never disappear: a Move starts the replacement on `to_node` before the old replica
  is removed, so capacity never drops below what is running;
* a move never lands on a protected node, a draining node or a node that is itself being emptied, and
  never exceeds a node's free GPUs;
* protected replicas (warming up, do-not-disrupt) are never moved, and a node hosting one is not emptied;
* a target always has more GPUs allocated than the source, so two plans can never ping-pong;
* `plan` is deterministic, and planning again after its moves are applied proposes nothing new for the
  nodes it emptied.

It also ranks replicas for scale-in: `deletion_costs` (controller.kubernetes.io/pod-deletion-cost) is
lowest on replicas of the least-allocated nodes, so the ReplicaSet removes those first and nodes empty by
themselves as load falls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

# Karpenter derives an eviction cost from pod-deletion-cost / 2^27 clamped to [-10, 10]; keeping our
# values far below that scale leaves its view of "empty" nodes unchanged.
MAX_DELETION_COST = 1_000_000
DRAIN_DELETION_COST = -MAX_DELETION_COST


@dataclass(frozen=True)
class NodeView:
    name: str
    gpu_capacity: int
    gpu_allocated: int = 0  # all pods' GPU requests, greenserve's and others'
    protected: bool = False  # do-not-disrupt / scale-down-disabled
    draining: bool = False  # cordoned, or tainted by an autoscaler for deletion
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplicaView:
    pod: str
    service: str  # "namespace/name"
    node: str
    gpus: int
    ready: bool = True
    protected: bool = False  # warming up or do-not-disrupt
    node_selector: Mapping[str, str] = field(default_factory=dict)  # e.g. the GPU product

    def fits_labels(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.node_selector.items())


@dataclass(frozen=True)
class ClusterSnapshot:
    nodes: tuple[NodeView, ...]
    replicas: tuple[ReplicaView, ...]


@dataclass(frozen=True)
class ConsolidationLimits:
    max_moves: int = 1
    min_interval_s: float = 60.0
    last_move_at: float | None = None
    # Free GPUs to keep outside the nodes being emptied, so a burst can still scale up without a new node.
    headroom_gpus: int = 0


# A plan lists every move it found (up to this many); a pass starts only `batch(plan.moves)`, and the
# operator plans none while a move is in flight (reconcile/consolidator.py).
MAX_PLANNED_MOVES = 256


def limits(
    min_interval_s: float, last_move_at: float | None = None, headroom_gpus: int = 0
) -> ConsolidationLimits:
    """The limits a plan runs under, in the operator and the simulator alike."""
    return ConsolidationLimits(MAX_PLANNED_MOVES, min_interval_s, last_move_at, headroom_gpus)


@dataclass(frozen=True)
class Move:
    service: str
    pod: str
    from_node: str
    to_node: str
    gpus: int


@dataclass(frozen=True)
class ConsolidationPlan:
    moves: tuple[Move, ...] = ()
    emptied_nodes: tuple[str, ...] = ()
    deletion_costs: Mapping[str, int] = field(default_factory=dict)
    reason: str = ""


def _allocation(snapshot: ClusterSnapshot) -> dict[str, int]:
    alloc = {n.name: n.gpu_allocated for n in snapshot.nodes}
    # A snapshot may under-report allocation; never less than the replicas we know of.
    known: dict[str, int] = {}
    for r in snapshot.replicas:
        known[r.node] = known.get(r.node, 0) + r.gpus
    return {name: max(a, known.get(name, 0)) for name, a in alloc.items()}


def deletion_costs(snapshot: ClusterSnapshot, emptied: tuple[str, ...] = ()) -> dict[str, int]:
    """Lower cost = removed first on scale-in: replicas on nodes being emptied, then least-allocated nodes."""
    alloc = _allocation(snapshot)
    costs: dict[str, int] = {}
    for r in snapshot.replicas:
        if r.node in emptied:
            costs[r.pod] = DRAIN_DELETION_COST
        else:
            costs[r.pod] = min(MAX_DELETION_COST, alloc.get(r.node, 0) * 1000)
    return costs


def plan(snapshot: ClusterSnapshot, now: float, limits: ConsolidationLimits) -> ConsolidationPlan:
    nodes = {n.name: n for n in snapshot.nodes}
    alloc = _allocation(snapshot)
    free = {n.name: max(0, n.gpu_capacity - alloc[n.name]) for n in snapshot.nodes}
    on_node: dict[str, list[ReplicaView]] = {}
    for r in snapshot.replicas:
        if r.node in nodes:
            on_node.setdefault(r.node, []).append(r)

    def eligible_source(name: str) -> bool:
        n = nodes[name]
        reps = on_node.get(name, [])
        return (
            bool(reps)
            and not n.protected
            and not n.draining
            and all(r.ready and not r.protected for r in reps)
            # Other pods' GPUs would keep the node anyway: moving ours away would not empty it.
            and sum(r.gpus for r in reps) >= alloc[name]
        )

    # Cheapest to disrupt first: fewest allocated GPUs, then fewest replicas, then name (determinism).
    sources = sorted((n for n in nodes if eligible_source(n)), key=lambda n: (alloc[n], len(on_node[n]), n))
    emptied: list[str] = []
    received: set[str] = set()  # a node that takes replicas in this plan is not emptied by it
    moves: list[Move] = []
    # Passes until nothing more empties: a node that could not go anywhere early in a pass may fit onto
    # one that this plan filled later, and leaving that for the next plan would break idempotence.
    progressed = True
    while progressed:
        progressed = False
        for src in sources:
            if src in received or src in emptied:
                continue
            trial_free = dict(free)
            trial: list[Move] = []
            ok = True
            for r in sorted(on_node[src], key=lambda r: (-r.gpus, r.pod)):
                targets = [
                    t
                    for t in nodes
                    if t != src
                    and t not in emptied
                    and not nodes[t].protected
                    and not nodes[t].draining
                    and trial_free[t] >= r.gpus
                    and r.fits_labels(nodes[t].labels)
                    # Only towards fuller nodes (as filled by this plan so far): no ping-pong.
                    and (nodes[t].gpu_capacity - free[t], t) > (alloc[src], src)
                ]
                if not targets:
                    ok = False
                    break
                # The node with the most GPUs in use, then the most room left: the target least likely to
                # be emptied itself and most able to take the next sources (a tight fit onto a small node
                # leaves two half-full nodes that the next plan would merge: not idempotent).
                target = min(
                    targets, key=lambda t: (trial_free[t] - nodes[t].gpu_capacity, -trial_free[t], t)
                )
                trial_free[target] -= r.gpus
                trial.append(Move(r.service, r.pod, src, target, r.gpus))
            if not ok:
                continue
            # Headroom counts only where a burst could land: not the nodes being emptied or drained.
            remaining_free = sum(
                v for k, v in trial_free.items() if k != src and k not in emptied and not nodes[k].draining
            )
            if remaining_free < limits.headroom_gpus:
                continue
            free = trial_free
            free[src] = nodes[src].gpu_capacity
            emptied.append(src)
            received.update(m.to_node for m in trial)
            moves.extend(trial)
            progressed = True

    costs = deletion_costs(snapshot, tuple(emptied))
    if not moves:
        return ConsolidationPlan((), (), costs, "nothing to consolidate")
    if limits.last_move_at is not None and now - limits.last_move_at < limits.min_interval_s:
        return ConsolidationPlan((), tuple(emptied), costs, "rate limited")
    return ConsolidationPlan(
        tuple(moves[: max(0, limits.max_moves)]),
        tuple(emptied),
        costs,
        f"{len(emptied)} node(s) can be emptied with {len(moves)} move(s)",
    )


def batch(moves: Sequence[Move]) -> tuple[Move, ...]:
    """The moves one pass starts together: those off the plan's first node (its cheapest to empty), at
    most one per service, since a ModelService records one move at a time (`status.move`). As Karpenter
    replaces a node's pods together rather than one pod at a time: each move is still surge-then-retire,
    so capacity never drops, and the node empties in one cold start instead of one per replica (while it
    waits, it draws its base power and holds a bare GPU per free slot). A service's second replica on the
    node, and the other nodes, wait for the next plan, made once these have finished."""
    if not moves:
        return ()
    source, seen, out = moves[0].from_node, set[str](), []
    for m in moves:
        if m.from_node == source and m.service not in seen:
            seen.add(m.service)
            out.append(m)
    return tuple(out)


def apply_moves(snapshot: ClusterSnapshot, moves: tuple[Move, ...]) -> ClusterSnapshot:
    """The snapshot after `moves` completed (used by the simulator and the idempotency property)."""
    by_pod = {m.pod: m for m in moves}
    replicas = tuple(
        replace(r, node=by_pod[r.pod].to_node) if r.pod in by_pod else r for r in snapshot.replicas
    )
    delta: dict[str, int] = {}
    for m in moves:
        delta[m.from_node] = delta.get(m.from_node, 0) - m.gpus
        delta[m.to_node] = delta.get(m.to_node, 0) + m.gpus
    nodes = tuple(
        replace(n, gpu_allocated=max(0, n.gpu_allocated + delta.get(n.name, 0))) for n in snapshot.nodes
    )
    return ClusterSnapshot(nodes, replicas)
