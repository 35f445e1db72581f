"""The simulated cluster: GPU nodes, replicas, the kube-scheduler's placement and a node autoscaler.

* A node has `gpus_per_node` GPUs and draws `base_w` (host) from creation until removal; it is usable
  `provision_s` after the autoscaler creates it.
* A replica takes whole GPUs on one node. It is pending until scheduled, then loads for its cold start
  (its GPU draws loaded-idle power meanwhile: E_load = P_ctx * T_load) and then serves.
* Placement scores nodes like the scheduler's NodeResourcesFit: LeastAllocated (the default: spread) or
  MostAllocated (bin-packing). Ties go to the lowest node id, so runs are deterministic.
* The node autoscaler works like cluster-autoscaler: pending replicas that fit on no node trigger new
  nodes (counting nodes still provisioning), and a node left empty for `unneeded_s` is removed
  (CA's --scale-down-unneeded-time, 600 s by default; Karpenter's consolidateAfter is often 30 s).
  Optionally, like CA's --scale-down-utilization-threshold, a node below a utilization threshold whose
  replicas all fit elsewhere is drained (its replicas rescheduled: a cold start each); 0 disables it.
* A policy may keep `spare_gpus` free slots (balloon pods of the cluster-proportional overprovisioner,
  preempted at once by real replicas): the autoscaler adds nodes to keep them and does not remove an
  empty node that holds them. Their GPUs stay bare (P_bare); the node's base power is what they cost.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field


class Placement(enum.StrEnum):
    LEAST_ALLOCATED = "LeastAllocated"
    MOST_ALLOCATED = "MostAllocated"


@dataclass(frozen=True)
class ClusterConfig:
    gpus_per_node: int = 8
    gpu_product: str = "L4"
    base_w: float = 300.0
    provision_s: float = 120.0
    unneeded_s: float = 600.0
    max_nodes: int = 200
    # cluster-autoscaler --scale-down-utilization-threshold for draining under-used nodes; 0 = empty only.
    drain_below_utilization: float = 0.0
    # Memory of one GPU (L4: 24 GB); a shared GPU's models may use it less the server's own context.
    gpu_memory_gib: float = 24.0


@dataclass
class Replica:
    rid: int
    model: int
    gpus: int
    created_at: float
    cold_start_s: float
    node: int | None = None
    ready_at: float | None = None
    replaces: int | None = None  # a consolidation move: the replica this one replaces once ready

    def is_ready(self, now: float) -> bool:
        return self.ready_at is not None and now >= self.ready_at


@dataclass
class Node:
    nid: int
    gpus: int
    created_at: float
    ready_at: float
    used: int = 0
    empty_since: float | None = None
    low_since: float | None = None  # under the drain threshold since
    residents: set[int] = field(default_factory=set)

    @property
    def free(self) -> int:
        return self.gpus - self.used


class Cluster:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.nodes: dict[int, Node] = {}
        self.replicas: dict[int, Replica] = {}
        # The same replicas by model: policies ask per model every tick (O(replicas of m), not O(all)).
        self.by_model: dict[int, dict[int, Replica]] = {}
        self._next_rid = 0
        self._next_nid = 0
        self.cold_starts = 0
        self.nodes_added = 0
        self.nodes_removed = 0
        # Free GPU slots a policy keeps for bursts (balloon pods of the cluster-proportional
        # overprovisioner: preempted at once by real replicas, so they only keep nodes); 0 = none.
        self.spare_gpus = 0

    # --- nodes -----------------------------------------------------------------------------------
    def add_node(self, now: float, ready: bool = False) -> Node:
        node = Node(
            self._next_nid, self.config.gpus_per_node, now, now if ready else now + self.config.provision_s
        )
        self._next_nid += 1
        self.nodes[node.nid] = node
        self.nodes_added += 1
        return node

    def ready_nodes(self, now: float) -> list[Node]:
        return [n for n in self.nodes.values() if n.ready_at <= now]

    # --- replicas --------------------------------------------------------------------------------
    def add_replica(
        self, model: int, gpus: int, cold_start_s: float, now: float, *, warm: bool = False
    ) -> Replica:
        """A new replica, pending until `schedule` places it (or `bind` pins it)."""
        r = Replica(self._next_rid, model, gpus, now, 0.0 if warm else cold_start_s)
        self._next_rid += 1
        self.replicas[r.rid] = r
        self.by_model.setdefault(model, {})[r.rid] = r
        if not warm:
            self.cold_starts += 1
        return r

    def bind(self, r: Replica, node: Node, now: float) -> None:
        r.node = node.nid
        r.ready_at = now + r.cold_start_s
        node.used += r.gpus
        node.residents.add(r.rid)
        node.empty_since = None

    def remove_replica(self, rid: int, now: float) -> None:
        r = self.replicas.pop(rid)
        del self.by_model[r.model][rid]
        if r.node is not None:
            node = self.nodes[r.node]
            node.used -= r.gpus
            node.residents.discard(rid)
            if node.used == 0:
                node.empty_since = now

    def pending(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.node is None]

    def of_model(self, model: int) -> list[Replica]:
        return list(self.by_model.get(model, {}).values())

    def pick_node(
        self, gpus: int, placement: Placement, now: float, exclude: set[int] | None = None
    ) -> Node | None:
        fits = [
            n
            for n in self.nodes.values()
            if n.ready_at <= now and n.free >= gpus and n.nid not in (exclude or ())
        ]
        if not fits:
            return None
        if placement is Placement.MOST_ALLOCATED:
            return min(fits, key=lambda n: (n.free, n.nid))
        return max(fits, key=lambda n: (n.free, -n.nid))

    def schedule(self, placement: Placement, now: float) -> None:
        for r in sorted(self.pending(), key=lambda r: r.rid):
            node = self.pick_node(r.gpus, placement, now)
            if node is not None:
                self.bind(r, node, now)

    # --- node autoscaler -------------------------------------------------------------------------
    def autoscale_nodes(self, placement: Placement, now: float) -> None:
        cfg = self.config
        pending = self.pending()
        pending_gpus = sum(r.gpus for r in pending)
        upcoming = sum(n.gpus for n in self.nodes.values() if n.ready_at > now)
        # Pending replicas that nodes already on their way will not absorb.
        need_gpus = pending_gpus - upcoming
        if self.spare_gpus > 0:
            # Balloons are pending pods too: keep `spare_gpus` free once the pending replicas are placed.
            free_ready = sum(n.free for n in self.nodes.values() if n.ready_at <= now)
            need_gpus = max(need_gpus, pending_gpus + self.spare_gpus - upcoming - free_ready)
        if need_gpus > 0:
            new = min(math.ceil(need_gpus / cfg.gpus_per_node), cfg.max_nodes - len(self.nodes))
            for _ in range(max(0, new)):
                self.add_node(now)
        if cfg.drain_below_utilization > 0:
            self._drain_underutilized(placement, now)
        for node in list(self.nodes.values()):
            if node.ready_at > now or node.used > 0:
                continue
            if node.empty_since is None:
                node.empty_since = now
            if now - node.empty_since >= cfg.unneeded_s:
                if self.spare_gpus > 0:
                    # A node that holds balloons is not empty: keep it while the rest lack the spare slots.
                    others_free = sum(n.free for n in self.nodes.values() if n.nid != node.nid)
                    if others_free - pending_gpus < self.spare_gpus:
                        node.empty_since = now  # not empty: its unneeded time starts once they leave
                        continue
                del self.nodes[node.nid]
                self.nodes_removed += 1

    def _drain_underutilized(self, placement: Placement, now: float) -> None:
        """CA's utilization-based scale-down: at most one under-used node per pass whose replicas fit on
        the other nodes; its replicas are deleted and recreated (ReplicaSet) and so cold-start again."""
        cfg = self.config
        candidates = []
        for node in self.ready_nodes(now):
            if node.used == 0 or node.used / node.gpus >= cfg.drain_below_utilization:
                node.low_since = None
                continue
            if node.low_since is None:
                node.low_since = now
            if now - node.low_since >= cfg.unneeded_s:
                candidates.append(node)
        for node in sorted(candidates, key=lambda n: (n.used, n.nid)):
            others = sum(n.free for n in self.ready_nodes(now) if n.nid != node.nid)
            if others < node.used:
                continue
            for rid in sorted(node.residents):
                r = self.replicas[rid]
                if not r.is_ready(now):
                    return  # CA skips nodes with pods still starting
            for rid in sorted(node.residents):
                r = self.replicas[rid]
                self.remove_replica(rid, now)
                nr = self.add_replica(r.model, r.gpus, r.cold_start_s, now)
                target = self.pick_node(nr.gpus, placement, now, exclude={node.nid})
                if target is not None:
                    self.bind(nr, target, now)
            node.empty_since = now - cfg.unneeded_s  # drained: removed in this pass
            return
