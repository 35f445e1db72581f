"""greenserve with shared GPUs: the operator's placement policy (policy/sharing.py) on top of its
autoscaling, in the simulator (SIMULATED energy).

Every control period the policy describes each model through the operator's adapter
(`profile.sharing_demand`: its sized rate x service time, its GPU memory, its idle time) and plans.
Models planned shared are loaded into pool GPUs (`Simulation.add_pool_gpu`, one model-server pod per
GPU); models planned dedicated are sized by `autoscaling.decide` exactly as `Greenserve` does; models
planned unloaded lose every replica and copy (the activator holds their requests until they are back).
Every change of home is surge-then-retire: a model's old home (dedicated replicas or a shared copy) goes
only once the new one is ready, so a model with traffic is never without a ready home because of a move.

The placement's load is the sized rate (the rate's upper estimate over the pooled windows); each model's
rise headroom (the autoscaler's factor, as for its dedicated replicas) is kept apart as its `rise`, and a
shared GPU keeps room for its largest member's rise (policy/sharing.py `fits`), not their sum: rises of
different models rarely coincide within one lead time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from greenserve.policy import autoscaling, profile
from greenserve.policy import sharing as placement
from greenserve.policy.queueing import GUARD_ATTAINMENT
from greenserve.simulator.engine import Simulation
from greenserve.simulator.policies import Greenserve


@dataclass
class GreenserveShared(Greenserve):
    """`Greenserve` with GPU sharing and (for models at minReplicas 0) unloading."""

    name: str = "greenserve-shared"
    sharing: placement.Sharing = placement.Sharing.AUTO
    enter_fraction: float = 0.5
    leave_fraction: float = 0.8
    _home: dict[int, int] = field(default_factory=dict)  # shared model -> its target pool replica
    _dedicated: set[int] = field(default_factory=set)
    _plan0: placement.SharingPlan | None = None  # the warm start's placement

    def limits(self, sim: Simulation) -> placement.SharingLimits:
        return placement.SharingLimits(
            sim.pool_memory_gib,
            enter_fraction=self.enter_fraction,
            leave_fraction=self.leave_fraction,
        )

    def demands(self, sim: Simulation) -> list[placement.ModelDemand]:
        usable = sim.pool_memory_gib
        out = []
        for m, spec in enumerate(sim.models):
            reading = self.reading(sim, m)
            rate = None if reading is None else profile.sizing_rate(self._profiles[m], reading)[0]
            last = float(sim.last_arrival[m])
            # A shared GPU keeps the attainment the rise headroom aims at (the attainment target unless
            # the bench sets the quantile apart), never less than the p95 guard (profile.sharing_demand).
            # The guard is applied here too: a quantile of 0 as the aim would read as "no SLO" (a
            # profile's attainment of 0 is not one), and cap the GPU by utilisation alone.
            aim = self._profiles[m]
            if self.rise_quantile is not None and aim.sized_by_slo:
                aim = replace(aim, slo_attainment=max(GUARD_ATTAINMENT, self.rise_quantile))
            out.append(
                profile.sharing_demand(
                    aim,
                    str(m),
                    rate,
                    memory_gib=spec.memory_gib,
                    gpu_memory_gib=usable,
                    sharing=self.sharing,
                    idle_s=sim.now - last if math.isfinite(last) else math.inf,
                    has_dedicated=bool(sim.logical(m)),
                    reload_s=spec.reload_s,
                    rise_factor=self._rise_factor(m),
                )
            )
        return out

    def pool_view(self, sim: Simulation) -> list[placement.PoolGpu]:
        usable = sim.pool_memory_gib
        out = []
        for rid, resident in sim.pool.items():
            models = tuple(str(m) for m in sorted(resident) if self._home.get(m) == rid)
            leaving = sum(sim.models[m].memory_gib for m in resident if self._home.get(m) != rid)
            out.append(placement.PoolGpu(str(rid), usable, models, leaving))
        return out

    def initial(self, sim: Simulation) -> list[int]:
        counts = super().initial(sim)
        self._home, self._dedicated = {}, set()
        self._plan0 = placement.plan(self.demands(sim), (), self.limits(sim))
        for name in self._plan0.home:
            counts[int(name)] = 0
        self._dedicated = {m for m, c in enumerate(counts) if c > 0}
        return counts

    def initial_pools(self, sim: Simulation) -> list[list[int]]:
        return [[int(m) for m in g.models] for g in self._plan0.gpus] if self._plan0 else []

    def control(self, sim: Simulation) -> None:
        if not self._home and sim.pool:  # after the warm start: each model is on one pool GPU
            self._home = {m: rid for rid, models in sim.pool.items() for m in models}
        if sim.pool_moved:  # pool pods moved by node consolidation: their models' home moved with them
            self._home = {m: sim.pool_moved.get(rid, rid) for m, rid in self._home.items()}
            sim.pool_moved.clear()
        self._observe(sim)
        the_plan = placement.plan(self.demands(sim), self.pool_view(sim), self.limits(sim))
        ids: dict[str, int] = {}
        for g in the_plan.gpus:
            ids[g.gpu] = sim.add_pool_gpu().rid if g.gpu.startswith(placement.NEW_GPU_PREFIX) else int(g.gpu)
        self._home = {int(m): ids[g] for m, g in the_plan.home.items()}
        for m, rid in self._home.items():
            sim.load_shared(m, rid)

        moves = self._plan_moves(sim)
        victim = self._victim_key(sim, moves)
        dedicated: list[int] = []
        for m in range(len(sim.models)):
            current, ready = len(sim.logical(m)), sim.ready_count(m)
            if m in self._home:
                if self._home[m] in sim.shared_homes(m):
                    if current:
                        sim.scale_to(m, 0, victim)
                    self._unload_except(sim, m, self._home[m])
                self._dedicated.discard(m)
            elif str(m) in the_plan.dedicated:
                if m not in self._dedicated:  # back from shared or zero: a fresh scaler
                    self._states[m] = autoscaling.ScalerState()
                    self._dedicated.add(m)
                dedicated.append(m)
                if ready:
                    self._unload_except(sim, m, None)
            else:  # unloaded: scale to zero
                if current:
                    sim.scale_to(m, 0, victim)
                self._unload_except(sim, m, None)
                self._dedicated.discard(m)
        # Scaled together, so that held replicas may give way to another model's scale-up.
        self._scale(sim, dedicated, victim)
        targets = set(self._home.values())
        for rid in [r for r, models in sim.pool.items() if not models and r not in targets]:
            sim.remove_pool_gpu(rid)
        self._start_moves(sim, moves)

    @staticmethod
    def _unload_except(sim: Simulation, m: int, keep: int | None) -> None:
        for rid in sim.shared_homes(m, ready=False):
            if rid != keep:
                sim.unload_shared(m, rid)
