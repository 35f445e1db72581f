"""Placement of models on shared GPUs (pure: no I/O; the clock comes in as each model's idle time).

Given each model's load estimate (the busy fraction of one GPU it needs: sized rate x service time), its
GPU memory and its sharing mode, `plan` decides which models share pool GPUs, which get dedicated
replicas (sized by policy/autoscaling.py as before) and which are unloaded (scale to zero).

* Saturation cap. A shared GPU is one server whose utilisation is the sum of its models' loads; a
  model's requests wait as in M/M/1 (policy/queueing.py `shared_attainment`). A GPU may take a model
  only if every model on it keeps its own attainment target within its SLO at the summed load: the cap
  comes from the SLO and the queueing model, not from traces. A model without an SLO counts against a
  fixed utilisation cap (`SharingLimits.utilisation_cap`).
* Room for a rise. Each model also brings its `rise`, the load its rise headroom adds (the autoscaler's
  factor, which sizes its dedicated replicas for the rises it has shown within a scale-up's lead time).
  A GPU is judged at its members' summed load plus the largest member's rise: a member in a burst
  stays within every member's target until it can move to dedicated replicas. Not the rises' sum:
  rises of different models rarely coincide within one lead time.
* Packing. Models keep their GPU while it still meets every member's target; a GPU that no longer does
  gives up its largest members. Models to place go largest first to the fullest GPU that takes them by
  memory and by the cap (best fit), else to a new GPU. Then at most one GPU per plan is emptied into the
  others: the least-loaded one whose models all fit there with `consolidate_margin` x their loads (in
  a memory-bound pool the lightest GPU may hold the most memory; the next is tried); a model joins a GPU
  that has models only with `place_margin` x (so a GPU filled or freed now is not undone at the next
  small rise).
* Hysteresis. A model joins a pool while its load and rise are at most `enter_fraction` of the load a
  GPU carries for it alone at its target (`queueing.shared_load_cap`) and leaves for dedicated replicas
  only past `leave_fraction`: a model near the threshold does not flap.
* Scale to zero. A model with `min_replicas` 0, no request in its sized windows (load 0) and idle for
  `unload_after_s` is unloaded; `unload_after_s` is the break-even of its reload energy against what it
  costs to keep it loaded (policy/profile.py `sharing_demand`). A model with traffic is never unloaded.
* A model without a reading (load None) stays where it is: a missing metric moves nothing and unloads
  nothing. Exclusive models never share.

Interface for the operator (the CRD's `spec.gpu.sharing` and `spec.gpu.memory`): build one
`ModelDemand` per ModelService with `profile.sharing_demand`, one `PoolGpu` per pool GPU with the models
loaded or loading there, and call `plan`. New GPUs in the plan are named `NEW_GPU_PREFIX` + index; a
current GPU missing from the plan has no model left and can be retired once its models are ready
elsewhere (surge-then-retire: the caller unloads a model from its old home only when the new one is ready).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from greenserve.policy.queueing import shared_attainment, shared_load_cap

NEW_GPU_PREFIX = "new-"


class Sharing(enum.StrEnum):
    AUTO = "Auto"
    EXCLUSIVE = "Exclusive"


@dataclass(frozen=True)
class ModelDemand:
    """One model as the placement sees it."""

    name: str
    # Sized busy fraction of one GPU (requests/s x service time, the rate's upper estimate); None when
    # no reading is available (the model is held where it is).
    load: float | None
    memory_gib: float
    service_time_s: float
    slo_s: float | None  # latency objective; None: counted against the utilisation cap
    attainment: float  # share of requests within slo_s a shared GPU must keep for this model
    sharing: Sharing = Sharing.AUTO
    min_replicas: int = 1
    idle_s: float = 0.0  # seconds since the model's last request (math.inf: none seen)
    unload_after_s: float = math.inf  # idle time after which a model at min_replicas 0 is unloaded
    has_dedicated: bool = False  # it has dedicated replicas now (else: shared, or unloaded)
    # The load its rises add within a dedicated scale-up's lead time (load x (rise factor - 1)): a
    # shared GPU keeps room for its largest member's rise, not their sum (rises of different models
    # rarely coincide within one lead time).
    rise: float = 0.0


@dataclass(frozen=True)
class PoolGpu:
    gpu: str
    memory_gib: float  # GPU memory the models may use (the server's own context excluded)
    models: tuple[str, ...]  # models placed there (loaded or loading), each on one GPU only
    # Memory still held by models moving away from this GPU (unloaded once their new home is ready).
    leaving_gib: float = 0.0


@dataclass(frozen=True)
class SharingLimits:
    gpu_memory_gib: float  # usable memory of a new pool GPU
    enter_fraction: float = 0.5
    leave_fraction: float = 0.8
    # A model placed on a GPU that already has models must fit at place_margin x the loads, and a GPU is
    # emptied only into GPUs where its models fit at consolidate_margin x: a GPU kept at 1.0 x but
    # filled to 1.0 x would give up a model at the next small rise.
    place_margin: float = 1.1
    consolidate_margin: float = 1.25
    utilisation_cap: float = 0.7  # for models without an SLO

    def __post_init__(self) -> None:
        if not 0 < self.enter_fraction <= self.leave_fraction <= 1:
            raise ValueError("need 0 < enter_fraction <= leave_fraction <= 1")
        if not 1 <= self.place_margin <= self.consolidate_margin or self.gpu_memory_gib <= 0:
            raise ValueError("need 1 <= place_margin <= consolidate_margin and gpu_memory_gib > 0")


@dataclass(frozen=True)
class SharingPlan:
    gpus: tuple[PoolGpu, ...]  # pool GPUs after the plan (none empty); new ones NEW_GPU_PREFIX + i
    dedicated: frozenset[str]
    unloaded: frozenset[str]
    home: Mapping[str, str] = field(default_factory=dict)  # shared model -> its GPU in the plan

    @property
    def shared(self) -> frozenset[str]:
        return frozenset(self.home)


def solo_cap(d: ModelDemand, limits: SharingLimits) -> float:
    """The load a GPU carries for this model alone at its attainment target."""
    if d.slo_s is None:
        return limits.utilisation_cap
    return shared_load_cap(d.service_time_s, d.slo_s, d.attainment)


def fits(members: Sequence[ModelDemand], limits: SharingLimits, scale: float = 1.0) -> bool:
    """Every member keeps its target on one GPU at the summed load plus the largest member's rise (all x
    `scale`). A member without a reading counts as load 0: it is held where it is, not judged."""
    loads = [scale * (m.load or 0.0) for m in members]
    base = sum(loads)
    if base <= 0:
        return True
    # The served requests' mean service time, from load shares (x / base) so that a tiny load's
    # rate does not underflow to 0 and read as "no service at all".
    rate = sum(x / base / m.service_time_s for x, m in zip(loads, members, strict=True) if m.service_time_s)
    mean_s = 1.0 / rate if rate > 0 else 0.0
    total = base + scale * max((m.rise for m in members if m.load is not None), default=0.0)
    for m in members:
        if m.slo_s is None:
            if total > limits.utilisation_cap:
                return False
        elif shared_attainment(total, mean_s, m.service_time_s, m.slo_s) < m.attainment:
            return False
    return True


def wants_shared(d: ModelDemand, now_shared: bool, limits: SharingLimits) -> bool | None:
    """The hysteresis alone: whether a model with a reading belongs on a shared GPU (its load and rise at
    most `enter_fraction` of its solo cap to join, past `leave_fraction` to leave); None without a reading.
    Packing (memory, the cap of the GPU's other models) may still keep it out."""
    if d.load is None:
        return None
    if d.sharing is Sharing.EXCLUSIVE or d.memory_gib > limits.gpu_memory_gib:
        return False
    threshold = (limits.leave_fraction if now_shared else limits.enter_fraction) * solo_cap(d, limits)
    return d.load + d.rise <= threshold


def _wants_home(d: ModelDemand) -> bool:
    return d.load is None or d.load > 0 or d.min_replicas > 0 or d.idle_s < d.unload_after_s


def plan(demands: Iterable[ModelDemand], gpus: Sequence[PoolGpu], limits: SharingLimits) -> SharingPlan:
    """Where every model goes (see the module docstring). Deterministic for the same inputs."""
    by_name = {d.name: d for d in demands}
    current: dict[str, str] = {}
    for g in gpus:
        for m in g.models:
            if m in by_name:
                current.setdefault(m, g.gpu)  # a model listed twice stays on the first
    dedicated: set[str] = set()
    unloaded: set[str] = set()
    shared: set[str] = set()
    for d in by_name.values():
        now_shared = d.name in current
        if d.load is None:  # no reading: hold
            if now_shared:
                shared.add(d.name)
            elif d.has_dedicated:
                dedicated.add(d.name)
            else:
                unloaded.add(d.name)
            continue
        if not _wants_home(d):
            unloaded.add(d.name)
            continue
        (shared if wants_shared(d, now_shared, limits) else dedicated).add(d.name)

    # Keep members on their GPU while it meets every member's target; evict the largest otherwise.
    members: dict[str, list[ModelDemand]] = {}
    memory: dict[str, float] = {}
    order: list[str] = []
    to_place: list[ModelDemand] = []
    for g in gpus:
        if g.gpu in memory:
            raise ValueError(f"pool GPU {g.gpu!r} listed twice")
        order.append(g.gpu)
        memory[g.gpu] = g.memory_gib - g.leaving_gib
        keep = sorted((by_name[m] for m in g.models if m in shared and current.get(m) == g.gpu), key=_size)
        while keep and (not fits(keep, limits) or sum(m.memory_gib for m in keep) > memory[g.gpu] + 1e-9):
            evict = next((m for m in reversed(keep) if m.load is not None), None)
            if evict is None:
                break  # only held models left: they stay
            keep.remove(evict)
            to_place.append(evict)
        members[g.gpu] = keep
    to_place += [by_name[m] for m in shared if m not in current]
    new = 0
    for d in sorted(to_place, key=_size, reverse=True):
        target = _best_fit(d, members, memory, limits, limits.place_margin)
        if target is None:
            target = f"{NEW_GPU_PREFIX}{new}"
            new += 1
            order.append(target)
            members[target], memory[target] = [], limits.gpu_memory_gib
        members[target].append(d)

    _consolidate_one(members, memory, order, limits)
    leaving = {g.gpu: g.leaving_gib for g in gpus}
    out = tuple(
        PoolGpu(
            g, memory[g] + leaving.get(g, 0.0), tuple(sorted(m.name for m in members[g])), leaving.get(g, 0.0)
        )
        for g in order
        if members[g]
    )
    home = {m: g.gpu for g in out for m in g.models}
    return SharingPlan(out, frozenset(dedicated), frozenset(unloaded), home)


def _size(d: ModelDemand) -> tuple[float, float, str]:
    return (d.load or 0.0, d.memory_gib, d.name)


def _load(ms: Sequence[ModelDemand]) -> float:
    return sum(m.load or 0.0 for m in ms)


def _room(ms: Sequence[ModelDemand], memory_gib: float, d: ModelDemand) -> bool:
    return sum(m.memory_gib for m in ms) + d.memory_gib <= memory_gib + 1e-9


def _best_fit(
    d: ModelDemand,
    members: Mapping[str, list[ModelDemand]],
    memory: Mapping[str, float],
    limits: SharingLimits,
    scale: float = 1.0,
    exclude: str | None = None,
) -> str | None:
    ok = [
        g
        for g, ms in members.items()
        if g != exclude and _room(ms, memory[g], d) and fits([*ms, d], limits, scale)
    ]
    return max(ok, key=lambda g: (_load(members[g]), g)) if ok else None


def _consolidate_one(
    members: dict[str, list[ModelDemand]],
    memory: Mapping[str, float],
    order: Sequence[str],
    limits: SharingLimits,
) -> None:
    """Empty the least-loaded GPU whose models all fit into the others at the margin, if any."""
    live = [g for g in order if members[g]]
    if len(live) < 2:
        return
    for source in sorted(live, key=lambda g: (_load(members[g]), g)):
        trial = _emptied(source, members, memory, limits)
        if trial is not None:
            members.update(trial)
            members[source] = []
            return


def _emptied(
    source: str,
    members: Mapping[str, list[ModelDemand]],
    memory: Mapping[str, float],
    limits: SharingLimits,
) -> dict[str, list[ModelDemand]] | None:
    """The other GPUs' members with `source`'s models moved in at the margin (None: they do not fit)."""
    trial = {g: list(ms) for g, ms in members.items() if g != source and ms}
    for d in sorted(members[source], key=_size, reverse=True):
        if d.load is None:
            return None  # a held model stays
        target = _best_fit(d, trial, memory, limits, limits.consolidate_margin)
        if target is None:
            return None
        trial[target].append(d)
    return trial
