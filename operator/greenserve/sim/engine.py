"""Discrete-time cluster simulator: scheduler, node autoscaler, serving queue and energy (SIMULATED).

One step is `dt_s` seconds. Per step, in order:

1. nodes whose provisioning finished become Ready and take pending replicas; replicas whose cold start
   finished become Ready (a move's replacement becoming Ready deletes the replica it replaces);
2. on each policy's control interval: the policy's desired replica counts are applied (scale-in picks the
   victim by the policy's order) and, for policies that consolidate, a consolidation plan is executed
   (start-before-stop moves);
3. serving (see `serve_step`), energy accounting, then the node autoscaler.

Scheduler: `placement="most"` is kube-scheduler NodeResourcesFit MostAllocated (bin packing, greenserve's
recommended profile), `"least"` is the default LeastAllocated spreading. A replica that fits nowhere is
Pending; the node autoscaler then adds ceil(pending GPUs / GPUs per node) nodes, Ready after
`provision_s`. It removes a node once it has been empty for `unneeded_s` (cluster-autoscaler's
--scale-down-unneeded-time, default 10 min). A policy may keep `spare_gpus` free slots, as the
cluster-proportional overprovisioner's low-priority balloon pods do: they count as pending demand for
scale-up, keep a node from being empty, and are preempted at once by real replicas (drawing P_bare only).
CA's drain of *under-utilised* (non-empty) nodes is not modelled, for any policy.

Serving, per model and step with c Ready replicas of mu requests/s (pooled behind one Service, M/M/c —
the same model as the policy's SLO guard, policy/queueing.py) and a fluid backlog b:

* requests arriving while no replica is Ready queue for the cold start (they miss the SLO);
* without a backlog: P(response <= SLO) = 1 - ErlangC(c, lambda/mu) * exp(-(c*mu - lambda)(SLO - 1/mu));
* an overloaded step (arrivals >= c*mu*dt) misses: M/M/c has no bound on waiting at rho >= 1;
* while a backlog drains, it shrinks linearly over the step and an arrival meets the SLO when the
  backlog ahead of it drains within SLO - 1/mu (and its own wait then does, as above); what would wait
  longer than the client timeout (10 s) is shed (a miss, never served).

Energy (SIMULATED, power model of shared/research/energy_anchors.md section 7, `policy.energy`): every
existing node (provisioning included) draws its base power; each GPU draws P_bare with no replica, P_ctx
with a replica resident (loading included), plus (P_peak - P_ctx) * utilization while serving. "Busy GPU"
energy is the utilization part, "idle GPU" the P_bare/P_ctx floor; busy + idle + node base = total.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from greenserve.policy.consolidation import ClusterSnapshot, Move, NodeView, ReplicaView
from greenserve.policy.energy import GPU_MODELS, GpuPowerModel, NodePowerModel
from greenserve.policy.queueing import erlang_c
from greenserve.sim.traces import FloatArray, Trace


@dataclass(frozen=True)
class ModelSpec:
    name: str
    capacity_rps: float  # requests/s one replica serves at 100% utilization
    cold_start_s: float  # pod start + model load until Ready
    slo_ms: float  # latency objective (the share of requests within it is the attainment)
    gpus: int = 1
    min_replicas: int = 1  # the ModelService's minReplicas (0: may scale to zero; HPA cannot)

    @property
    def service_s(self) -> float:
        return 1.0 / self.capacity_rps


@dataclass(frozen=True)
class ClusterConfig:
    gpus_per_node: int = 8
    gpu: GpuPowerModel = GPU_MODELS["L4"]
    node: NodePowerModel = field(default_factory=NodePowerModel)
    provision_s: float = 180.0  # GPU node boot + driver + device plugin
    unneeded_s: float = 600.0  # cluster-autoscaler --scale-down-unneeded-time default
    max_nodes: int = 500


@dataclass(frozen=True)
class SimConfig:
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    seed: int = 0
    sample_every_s: float = 60.0  # time series resolution for plots


@dataclass
class Node:
    name: str
    ready_at: float
    alloc: int = 0
    empty_since: float | None = None


@dataclass
class Replica:
    pod: str
    model: int
    created: float
    node: str | None = None  # None: Pending
    ready_at: float | None = None
    ready: bool = False
    replaces: str | None = None  # a move's replacement: deletes `replaces` when Ready
    replaced_by: str | None = None


class View:
    """What a policy may observe: windowed metrics (past data only, with a lag) and replica counts."""

    def __init__(self, sim: Simulation) -> None:
        self._sim = sim

    @property
    def dt_s(self) -> float:
        return self._sim.dt

    @property
    def models(self) -> Sequence[ModelSpec]:
        return self._sim.models

    def rate(self, model: int, window_s: float, lag_s: float = 0.0) -> float:
        """Mean arrivals/s over [now - lag - window, now - lag)."""
        s = self._sim
        win = max(1, round(window_s / s.dt))
        end = s.k - round(lag_s / s.dt)
        if end < win:
            # Before the trace starts the cluster ran at its initial load: read the first window.
            end = min(win, s.cum_arrivals.shape[1] - 1)
        start = max(0, end - win)
        return float(s.cum_arrivals[model, end] - s.cum_arrivals[model, start]) / ((end - start) * s.dt)

    def utilization(self, model: int, window_s: float, lag_s: float = 0.0) -> float | None:
        """Mean utilization of Ready replicas over the window (None when none was Ready)."""
        s = self._sim
        end = max(0, s.k - round(lag_s / s.dt))
        start = max(0, end - max(1, round(window_s / s.dt)))
        ready = float(s.ready_steps[model, start:end].sum())
        if ready <= 0:
            return None
        return float(s.busy_steps[model, start:end].sum()) / ready

    def current(self, model: int) -> int:
        """Replicas the Deployment asks for (move replacements excluded)."""
        return self._sim.current[model]

    def ready(self, model: int) -> int:
        return self._sim.ready_count[model]

    def snapshot(self) -> ClusterSnapshot:
        return self._sim.snapshot()


class Policy(Protocol):
    name: str
    placement: str  # "most" (bin packing) or "least" (spreading)
    interval_s: float

    def desired(self, now: float, view: View) -> list[int]: ...

    def consolidate(self, now: float, view: View) -> tuple[Move, ...]: ...

    def spare_gpus(self, now: float, view: View) -> int:
        """Free GPU slots to keep on Ready or provisioning nodes (an overprovisioner's balloon pods)."""
        ...

    def scale_in_rank(self, view: View, replica: Replica, node_alloc: int, same_model_on_node: int) -> float:
        """Lower = removed first (after Pending and not-Ready replicas, which always go first)."""
        ...


@dataclass
class Result:
    policy: str
    trace: str
    duration_s: float
    busy_gpu_j: float = 0.0
    idle_gpu_j: float = 0.0
    node_base_j: float = 0.0
    gpu_seconds: float = 0.0
    node_seconds: float = 0.0
    requests: float = 0.0
    within_slo: float = 0.0
    cold_starts: int = 0  # scale-from-zero events (requests wait for a model load)
    replica_starts: int = 0
    moves: int = 0
    pending_replica_s: float = 0.0  # replicas waiting for a node (node provisioning)
    series_t: list[float] = field(default_factory=list)
    series_replicas: list[int] = field(default_factory=list)
    series_nodes: list[int] = field(default_factory=list)
    series_power_w: list[float] = field(default_factory=list)

    @property
    def total_j(self) -> float:
        return self.busy_gpu_j + self.idle_gpu_j + self.node_base_j

    @property
    def attainment(self) -> float:
        return self.within_slo / self.requests if self.requests > 0 else 1.0


def _split(b0: float, b1: float, threshold: float) -> float:
    """Share of a step during which a linearly changing backlog b0 -> b1 is at most `threshold`."""
    lo, hi = min(b0, b1), max(b0, b1)
    if hi <= threshold:
        return 1.0
    if lo >= threshold:
        return 0.0
    return (threshold - lo) / (hi - lo)


def serve_step(
    arrivals: float, backlog: float, ready: int, spec: ModelSpec, dt: float, timeout_s: float = 10.0
) -> tuple[float, float, float]:
    """One step of one model: (requests within the SLO, served requests, new backlog); see the docstring."""
    if ready <= 0:
        return 0.0, 0.0, backlog + arrivals
    mu = spec.capacity_rps
    cap = ready * mu * dt
    budget = spec.slo_ms / 1000.0 - spec.service_s
    if budget <= 0:
        return 0.0, min(cap, arrivals + backlog), max(0.0, arrivals + backlog - cap)
    if backlog <= 0 and arrivals < cap:
        lam = arrivals / dt
        late = erlang_c(ready, lam / mu) * math.exp(-(ready * mu - lam) * budget)
        return arrivals * (1.0 - late), arrivals, 0.0
    if arrivals >= cap:
        # Overloaded step: an M/M/c queue at rho >= 1 has no bound on waiting; count the step as missed.
        return 0.0, cap, min(backlog + arrivals - cap, ready * mu * timeout_s)
    # Draining a backlog: an arrival meets the SLO once the backlog ahead of it is short enough, and then
    # waits as in M/M/c.
    b1 = max(0.0, backlog + arrivals - cap)
    lam = arrivals / dt
    late = erlang_c(ready, lam / mu) * math.exp(-(ready * mu - lam) * budget)
    within = arrivals * _split(backlog, b1, budget * ready * mu) * (1.0 - late)
    # Requests that would wait longer than the client timeout are shed (they already missed the SLO).
    return within, min(cap, arrivals + backlog), min(b1, ready * mu * timeout_s)


def replicas_for_attainment(arrivals: float, spec: ModelSpec, dt: float, target: float) -> int:
    """Fewest Ready replicas that serve a step's `arrivals` (no backlog) with >= `target` within the SLO."""
    if arrivals <= 0:
        return 0
    c = max(1, math.floor(arrivals / (spec.capacity_rps * dt)) + 1)
    while c < 10_000:
        within, _, _ = serve_step(arrivals, 0.0, c, spec, dt)
        if within >= target * arrivals:
            return c
        c += 1
    return c


def sample_arrivals(trace: Trace, seed: int) -> FloatArray:
    """Poisson arrivals per model and step, drawn once per (trace, seed) so every policy sees the same."""
    rng = np.random.default_rng(seed)
    return rng.poisson(trace.intensity).astype(np.float64)


class Simulation:
    def __init__(
        self,
        trace: Trace,
        models: Sequence[ModelSpec],
        policy: Policy,
        config: SimConfig,
        arrivals: FloatArray | None = None,
    ) -> None:
        if len(models) != trace.n_models:
            raise ValueError(f"trace has {trace.n_models} models, {len(models)} specs given")
        self.trace, self.models, self.policy, self.cfg = trace, list(models), policy, config
        self.cl = config.cluster
        self.dt = trace.dt_s
        self.arrivals = sample_arrivals(trace, config.seed) if arrivals is None else arrivals
        n, steps = self.arrivals.shape
        self.cum_arrivals = np.zeros((n, steps + 1))
        np.cumsum(self.arrivals, axis=1, out=self.cum_arrivals[:, 1:])
        self.ready_steps = np.zeros((n, steps))
        self.busy_steps = np.zeros((n, steps))
        self.k = 0
        self.nodes: dict[str, Node] = {}
        self.replicas: dict[str, Replica] = {}
        self.current = [0] * n
        self.ready_count = [0] * n
        self.backlog = [0.0] * n
        self.pending = 0
        self.starting: set[str] = set()  # placed, not Ready yet
        self._seq = 0
        self.result = Result(policy.name, trace.name, trace.n_steps * self.dt)
        self.view = View(self)

    # --- cluster mechanics -------------------------------------------------------------------------

    def _name(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-{self._seq:06d}"

    def _add_node(self, now: float, ready_at: float) -> Node:
        node = Node(self._name("node"), ready_at, empty_since=now)
        self.nodes[node.name] = node
        return node

    def _ready_nodes(self, now: float) -> list[Node]:
        return [n for n in self.nodes.values() if n.ready_at <= now]

    def _place(self, rep: Replica, now: float, node: Node | None = None) -> bool:
        gpus = self.models[rep.model].gpus
        if node is None:
            fits = [n for n in self._ready_nodes(now) if self.cl.gpus_per_node - n.alloc >= gpus]
            if not fits:
                return False
            if self.policy.placement == "most":
                node = min(fits, key=lambda n: (self.cl.gpus_per_node - n.alloc, n.name))
            else:
                node = max(fits, key=lambda n: (self.cl.gpus_per_node - n.alloc, n.name))
        node.alloc += gpus
        node.empty_since = None
        rep.node = node.name
        self.starting.add(rep.pod)
        rep.ready_at = now + self.models[rep.model].cold_start_s
        self.result.replica_starts += 1
        return True

    def _remove(self, rep: Replica, now: float) -> None:
        del self.replicas[rep.pod]
        self.starting.discard(rep.pod)
        if rep.node is None:
            self.pending -= 1
        if rep.ready:
            self.ready_count[rep.model] -= 1
        if rep.node is not None:
            node = self.nodes[rep.node]
            node.alloc -= self.models[rep.model].gpus
            if node.alloc <= 0:
                node.alloc, node.empty_since = 0, now
        if rep.replaced_by is not None and rep.replaced_by in self.replicas:
            # The move's source went away (scale-in): its replacement becomes an ordinary replica.
            self.replicas[rep.replaced_by].replaces = None
        if rep.replaces is not None and rep.replaces in self.replicas:
            self.replicas[rep.replaces].replaced_by = None

    def start_replica(self, model: int, now: float) -> Replica:
        rep = Replica(self._name(self.models[model].name), model, now)
        self.replicas[rep.pod] = rep
        self.current[model] += 1
        if not self._place(rep, now):
            self.pending += 1
        return rep

    def _scale_in(self, model: int, count: int, now: float) -> None:
        alloc = {n.name: n.alloc for n in self.nodes.values()}
        same: dict[str, int] = {}
        cands = [r for r in self.replicas.values() if r.model == model and r.replaces is None]
        for r in cands:
            if r.node is not None:
                same[r.node] = same.get(r.node, 0) + 1

        def key(r: Replica) -> tuple[int, int, float, float]:
            # ReplicaSet order: Pending, then not Ready, then the policy's rank; newest first on ties.
            if r.node is None:
                return (0, 0, 0.0, -r.created)
            if not r.ready:
                return (1, 0, 0.0, -r.created)
            busy_move = 1 if r.replaced_by is not None else 0  # keep a move's source until it completes
            rank = self.policy.scale_in_rank(self.view, r, alloc[r.node], same[r.node])
            return (2, busy_move, rank, -r.created)

        for r in sorted(cands, key=key)[:count]:
            self._remove(r, now)
            self.current[model] -= 1

    def _apply_moves(self, moves: Sequence[Move], now: float) -> None:
        by_name = {m.name: i for i, m in enumerate(self.models)}
        for mv in moves:
            old = self.replicas.get(mv.pod)
            target = self.nodes.get(mv.to_node)
            if old is None or target is None or old.replaced_by is not None or not old.ready:
                continue
            model = by_name[mv.service]
            if self.cl.gpus_per_node - target.alloc < self.models[model].gpus or target.ready_at > now:
                continue
            rep = Replica(self._name(self.models[model].name), model, now, replaces=old.pod)
            self.replicas[rep.pod] = rep
            old.replaced_by = rep.pod
            self._place(rep, now, target)
            self.result.moves += 1

    def snapshot(self) -> ClusterSnapshot:
        now = self.k * self.dt
        nodes = tuple(
            NodeView(n.name, self.cl.gpus_per_node, n.alloc) for n in self.nodes.values() if n.ready_at <= now
        )
        names = {n.name for n in nodes}
        reps = tuple(
            ReplicaView(
                r.pod,
                self.models[r.model].name,
                r.node,
                self.models[r.model].gpus,
                ready=r.ready,
                protected=not r.ready or r.replaced_by is not None or r.replaces is not None,
            )
            for r in self.replicas.values()
            if r.node in names and r.node is not None
        )
        return ClusterSnapshot(nodes, reps)

    def _node_autoscaler(self, now: float, spare: int) -> None:
        pending = (
            sum(self.models[r.model].gpus for r in self.replicas.values() if r.node is None)
            if self.pending
            else 0
        )
        g = self.cl.gpus_per_node
        provisioning = sum(g for n in self.nodes.values() if n.ready_at > now)
        free_ready = sum(g - n.alloc for n in self.nodes.values() if n.ready_at <= now)
        # Balloon pods (spare) are pending too when the Ready nodes cannot hold them.
        want = pending + max(0, spare - free_ready)
        if want > provisioning:
            need = math.ceil((want - provisioning) / g)
            for _ in range(min(need, self.cl.max_nodes - len(self.nodes))):
                self._add_node(now, now + self.cl.provision_s)
        free = free_ready + provisioning
        for n in sorted(self.nodes.values(), key=lambda n: n.name):
            if (
                n.alloc == 0
                and n.ready_at <= now
                and n.empty_since is not None
                and now - n.empty_since >= self.cl.unneeded_s
                and free - g >= spare  # a node holding balloon pods is not empty
            ):
                del self.nodes[n.name]
                free -= g

    # --- initial state and main loop ----------------------------------------------------------------

    def bootstrap(self, initial: Sequence[int]) -> None:
        """Start with `initial` Ready replicas per model on just enough Ready nodes (as for every policy)."""
        total = sum(c * self.models[m].gpus for m, c in enumerate(initial))
        for _ in range(math.ceil(total / self.cl.gpus_per_node)):
            self._add_node(0.0, 0.0)
        for m, c in enumerate(initial):
            for _ in range(c):
                rep = self.start_replica(m, 0.0)
                rep.ready_at = 0.0
        self.result.replica_starts = 0

    def run(self) -> Result:
        res, dt, cl = self.result, self.dt, self.cl
        gpu, base_w = cl.gpu, cl.node.base_w
        n_models, steps = self.arrivals.shape
        interval = max(1, round(self.policy.interval_s / dt))
        sample = max(1, round(self.cfg.sample_every_s / dt))
        spare = 0
        for k in range(steps):
            self.k = k
            now = k * dt
            # 1. Nodes and replicas becoming Ready.
            if self.pending:
                for r in sorted(
                    (r for r in self.replicas.values() if r.node is None), key=lambda r: r.created
                ):
                    if not self._place(r, now):
                        break
                    self.pending -= 1
            for pod in sorted(self.starting):
                if pod not in self.starting:
                    continue  # removed by an earlier replacement in this loop
                r = self.replicas[pod]
                if r.ready_at is not None and r.ready_at <= now:
                    self.starting.discard(pod)
                    r.ready = True
                    self.ready_count[r.model] += 1
                    if r.replaces is not None and r.replaces in self.replicas:
                        old = self.replicas[r.replaces]
                        old.replaced_by = None
                        r.replaces = None
                        self._remove(old, now)
            # 2. Control.
            if k % interval == 0:
                desired = self.policy.desired(now, self.view)
                for m in range(n_models):
                    diff = desired[m] - self.current[m]
                    if diff > 0:
                        if self.current[m] == 0:
                            res.cold_starts += 1
                        for _ in range(diff):
                            self.start_replica(m, now)
                    elif diff < 0:
                        self._scale_in(m, -diff, now)
                moves = self.policy.consolidate(now, self.view)
                if moves:
                    self._apply_moves(moves, now)
            # 3. Serving and energy.
            busy_gpu_s = 0.0
            for m in range(n_models):
                spec = self.models[m]
                a = float(self.arrivals[m, k])
                c = self.ready_count[m]
                within, served, self.backlog[m] = serve_step(a, self.backlog[m], c, spec, dt)
                res.requests += a
                res.within_slo += within
                if c > 0:
                    util = served / (c * spec.capacity_rps * dt)
                    self.ready_steps[m, k] = c
                    self.busy_steps[m, k] = util * c
                busy_gpu_s += served / spec.capacity_rps * spec.gpus
            loaded = sum(n.alloc for n in self.nodes.values())
            n_nodes = len(self.nodes)
            idle_w = gpu.loaded_idle_w * loaded + gpu.bare_w * (n_nodes * cl.gpus_per_node - loaded)
            busy_j = (gpu.busy_w - gpu.loaded_idle_w) * busy_gpu_s
            res.busy_gpu_j += busy_j
            res.idle_gpu_j += idle_w * dt
            res.node_base_j += base_w * n_nodes * dt
            res.gpu_seconds += loaded * dt
            res.node_seconds += n_nodes * dt
            res.pending_replica_s += self.pending * dt
            if k % sample == 0:
                res.series_t.append(now)
                res.series_replicas.append(sum(self.current))
                res.series_nodes.append(n_nodes)
                res.series_power_w.append(idle_w + base_w * n_nodes + busy_j / dt)
            # 4. Node autoscaler.
            if k % interval == 0:
                spare = self.policy.spare_gpus(now, self.view)
            self._node_autoscaler(now, spare)
        return res


def simulate(
    trace: Trace,
    models: Sequence[ModelSpec],
    policy: Policy,
    config: SimConfig,
    initial: Sequence[int],
    arrivals: FloatArray | None = None,
) -> Result:
    sim = Simulation(trace, models, policy, config, arrivals)
    sim.bootstrap(initial)
    return sim.run()
