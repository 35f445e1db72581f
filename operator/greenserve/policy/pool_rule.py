"""Which models share a GPU pool and which get their own replicas: the `Placer` interface, pure.

Two placers: `sharing_placer`, the sharing policy (policy/sharing.py: an SLO-derived saturation cap,
hysteresis, best-fit packing) over a pool of up to `PoolLimits.max_gpus` GPUs, which the operator uses
(reconcile/pools.py); and
`place`, the simple stand-in rule it replaced, kept as the fallback for a candidate without a
`ModelDemand`. Both take the same `Candidate`s and `PoolLimits`.

The simple rule (`place`):

The rule, for the models that may share (sharing Auto, one GPU, a GPU memory need, no per-model pod
settings; `Candidate.blocked` says why not otherwise):

* a model's load is its busy fraction of one dedicated replica (`load_fraction`); unknown when no fresh
  metric says it;
* a model not in the pool joins when its load is at most `share_below` (a quarter of a GPU by default),
  or when it is new (never placed) and its load is not known yet: starting shared costs no GPU;
* a model in the pool leaves only when its load is known and above `leave_above` (half a GPU): the gap
  keeps a model near the threshold from moving back and forth, and a missing metric never moves one;
* members are packed into the pool's GPU in a fixed order (those already in it first, by name, then the
  joiners by GPU memory need, largest first): a model is admitted while the members' GPU memory needs
  sum to at most the GPU's memory and their loads to at most `pool_load_cap`, and no member serves the
  same model name (one model server answers one /v1/models/<name>). One not admitted gets its own
  replicas, and says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from greenserve.policy import sharing

# Reasons of a placement (the Placement condition's reason in status).
SHARED = "Shared"
JOINS = "LowTraffic"
STARTS_SHARED = "NewModel"
EXCLUSIVE = "Exclusive"
NOT_SHAREABLE = "NotShareable"
BUSY = "HighTraffic"
POOL_FULL = "PoolFull"
NAME_TAKEN = "ModelNameInPool"

POOL_GPU = "0"  # the pool's first GPU (shard 0); further ones are "1", "2", ...


@dataclass(frozen=True)
class Candidate:
    service: str  # the ModelService's name (unique in the pool's namespace)
    model_name: str  # its TF Serving model name
    memory_bytes: int  # GPU memory need (0 when unknown: then it is blocked)
    load: float | None  # busy fraction of one dedicated replica; None: no fresh metric
    shared: bool  # in the pool now
    new: bool  # never placed before
    blocked: str | None = None  # why it may not share at all (Exclusive, not shareable); None: it may
    demand: sharing.ModelDemand | None = None  # the sharing policy's view of it (profile.sharing_demand)
    gpu: str | None = None  # the pool GPU it is on now, when shared (None: POOL_GPU)


@dataclass(frozen=True)
class Placement:
    shared: bool
    reason: str
    message: str
    gpu: str | None = None  # the pool GPU it is placed on, when shared


@dataclass(frozen=True)
class PoolLimits:
    gpu_memory_bytes: int  # of one pool GPU
    share_below: float = 0.25
    leave_above: float = 0.5
    pool_load_cap: float = 0.8
    max_gpus: int = 1  # GPUs (shards) the pool may hold


class Placer(Protocol):
    def __call__(
        self, candidates: Sequence[Candidate], limits: PoolLimits, leaving: Mapping[str, int] | None = None
    ) -> Mapping[str, Placement]:
        """`leaving`: GPU memory (bytes) per pool GPU still held by models moving away from it."""
        ...


def load_fraction(
    requests_per_second: float | None,
    inflight: float | None,
    service_rate_rps: float | None,
    target_concurrency: float | None,
    utilisation_at_target: float,
) -> float | None:
    """Busy fraction of one replica: the request rate over a replica's service rate (requestsPerSecond),
    or the requests in flight over those a replica carries at its target, scaled to the target's
    utilisation (concurrency). None when the metric is missing or the scaling metric gives no rate."""
    if service_rate_rps and requests_per_second is not None:
        return max(0.0, requests_per_second / service_rate_rps)
    if target_concurrency and inflight is not None:
        return max(0.0, inflight / target_concurrency * utilisation_at_target)
    return None


def _wants_pool(c: Candidate, limits: PoolLimits, gpu: str = POOL_GPU) -> Placement:
    if c.blocked is not None:
        return Placement(False, EXCLUSIVE if c.blocked == EXCLUSIVE else NOT_SHAREABLE, c.blocked)
    if c.shared:
        if c.load is not None and c.load > limits.leave_above:
            return Placement(False, BUSY, f"load {c.load:.2f} of a GPU is above {limits.leave_above}")
        return Placement(True, SHARED, "in the shared pool", gpu)
    if c.load is None:
        if c.new:
            return Placement(True, STARTS_SHARED, "a new model starts in the shared pool", gpu)
        return Placement(False, BUSY, "no fresh load metric: stays on its own replicas")
    if c.load <= limits.share_below:
        return Placement(True, JOINS, f"load {c.load:.2f} of a GPU is at most {limits.share_below}", gpu)
    return Placement(False, BUSY, f"load {c.load:.2f} of a GPU is above {limits.share_below}")


def place(
    candidates: Sequence[Candidate], limits: PoolLimits, leaving: Mapping[str, int] | None = None
) -> dict[str, Placement]:
    """The placement of every candidate of one pool (see the module docstring), on its first GPU."""
    out = {c.service: _wants_pool(c, limits, c.gpu or POOL_GPU) for c in candidates}
    return _pack(candidates, out, limits, True, leaving)


def _gpu_order(gpu: str) -> tuple[int, str]:
    return (int(gpu), gpu) if gpu.isdigit() else (1 << 30, gpu)


def sharing_placer(
    candidates: Sequence[Candidate], limits: PoolLimits, leaving: Mapping[str, int] | None = None
) -> dict[str, Placement]:
    """The sharing policy's placement over the pool's GPUs: a model it puts on a pool GPU shares there
    (a new GPU of the plan takes the lowest free index, while the pool holds at most `max_gpus`); one it
    would put on a GPU past that does not fit this pool (PoolFull); one it sends to dedicated replicas
    goes there. A model it would unload (scale to zero) or hold without a reading stays where it is, and a
    new one starts shared. Candidates without a demand follow `place`'s rule. Then each GPU's members are
    packed as `place` packs them (GPU memory, one model per name)."""
    leaving = dict(leaving or {})
    with_demand = [c for c in candidates if c.blocked is None and c.demand is not None]
    gib = limits.gpu_memory_bytes / 2**30
    on: dict[str, list[str]] = {}
    for c in with_demand:
        if c.shared:
            on.setdefault(c.gpu or POOL_GPU, []).append(c.service)
    used = sorted(set(on) | {g for g, b in leaving.items() if b > 0}, key=_gpu_order)
    gpus = [sharing.PoolGpu(g, gib, tuple(sorted(on.get(g, ()))), leaving.get(g, 0) / 2**30) for g in used]
    policy_limits = sharing.SharingLimits(gpu_memory_gib=gib)
    planned = sharing.plan([c.demand for c in with_demand if c.demand is not None], gpus, policy_limits)
    # New GPUs take the lowest free indices, in the plan's order (the first takes the largest models).
    free = (str(i) for i in range(limits.max_gpus) if str(i) not in used)
    room = max(0, limits.max_gpus - len(used))
    named: dict[str, str] = {}
    for g in planned.gpus:
        if g.gpu.startswith(sharing.NEW_GPU_PREFIX) and len(named) < room:
            named[g.gpu] = next(free)
    out: dict[str, Placement] = {}
    for c in candidates:
        home = planned.home.get(c.service)
        gpu = named.get(home, home) if home is not None else None
        if c.blocked is not None or c.demand is None:
            out[c.service] = _wants_pool(c, limits, c.gpu or POOL_GPU)
        elif gpu is not None and not gpu.startswith(sharing.NEW_GPU_PREFIX):
            why = SHARED if c.shared else JOINS
            out[c.service] = Placement(True, why, "the sharing policy shares it", gpu)
        elif gpu is not None:
            out[c.service] = Placement(False, POOL_FULL, f"the pool holds its most GPUs ({limits.max_gpus})")
        elif c.service in planned.dedicated:
            out[c.service] = Placement(False, BUSY, "the sharing policy gives it its own replicas")
        else:  # unloaded or held: where it is (scale to zero is not this placement's to do)
            stays = c.shared or c.new
            why = STARTS_SHARED if c.new and not c.shared else (SHARED if stays else BUSY)
            where = (c.gpu or POOL_GPU) if stays else None
            out[c.service] = Placement(stays, why, "no reading moves it: it stays where it is", where)
    # The policy already capped the load; the packing below checks memory and model names only.
    out = _pack([replace(c, load=None) for c in candidates], out, limits, False, leaving)
    _rehome_name_clashes(candidates, out, limits, leaving, policy_limits)
    return out


def _rehome_name_clashes(
    candidates: Sequence[Candidate],
    out: dict[str, Placement],
    limits: PoolLimits,
    leaving: Mapping[str, int],
    policy_limits: sharing.SharingLimits,
) -> None:
    """A joiner whose model name another member of its planned GPU serves shares another pool GPU where
    the name is free and it fits (memory, and every member's target at `place_margin`), else keeps
    ModelNameInPool."""
    for c in candidates:
        if c.shared or c.demand is None or out[c.service].reason != NAME_TAKEN:
            continue
        members: dict[str, list[Candidate]] = {}
        for other in candidates:
            p = out[other.service]
            if p.shared and p.gpu is not None:
                members.setdefault(p.gpu, []).append(other)
        for gpu in sorted({*members, *(str(i) for i in range(limits.max_gpus))}, key=_gpu_order):
            on = members.get(gpu, [])
            memory = leaving.get(gpu, 0) + sum(m.memory_bytes for m in on) + c.memory_bytes
            demands = [m.demand for m in on if m.demand is not None]
            if (
                all(m.model_name != c.model_name for m in on)
                and memory <= limits.gpu_memory_bytes
                and sharing.fits([*demands, c.demand], policy_limits, policy_limits.place_margin)
            ):
                out[c.service] = Placement(True, JOINS, "the sharing policy shares it", gpu)
                break


def _pack(
    candidates: Sequence[Candidate],
    out: dict[str, Placement],
    limits: PoolLimits,
    check_load: bool,
    leaving: Mapping[str, int] | None = None,
) -> dict[str, Placement]:
    """Admit each GPU's members in a fixed order (those there already first), by GPU memory (less what
    models moving away still hold), load (when `check_load`) and one model per name."""
    wanting = [c for c in candidates if out[c.service].shared]
    order = sorted(wanting, key=lambda c: (not c.shared, -c.memory_bytes if not c.shared else 0, c.service))
    memory: dict[str, int] = dict(leaving or {})
    load: dict[str, float] = {}
    names: dict[str, set[str]] = {}

    def admits(c: Candidate, gpu: str) -> bool:
        over_load = check_load and load.get(gpu, 0.0) + (c.load or 0.0) > limits.pool_load_cap
        return memory.get(gpu, 0) + c.memory_bytes <= limits.gpu_memory_bytes and not over_load

    for c in order:
        gpu = out[c.service].gpu or POOL_GPU
        if not c.shared and out[c.service].reason == STARTS_SHARED and not admits(c, gpu):
            # A new model without a reading: the first pool GPU with room for it.
            gpu = next((str(i) for i in range(limits.max_gpus) if admits(c, str(i))), gpu)
        if c.model_name in names.setdefault(gpu, set()):
            out[c.service] = Placement(
                False, NAME_TAKEN, f"another shared model already serves /v1/models/{c.model_name}"
            )
            continue
        if not admits(c, gpu):
            out[c.service] = Placement(False, POOL_FULL, "the pool's GPU has no room for it")
            continue
        memory[gpu] = memory.get(gpu, 0) + c.memory_bytes
        load[gpu] = load.get(gpu, 0.0) + (c.load or 0.0)
        names[gpu].add(c.model_name)
        out[c.service] = replace(out[c.service], gpu=gpu)
    return out
