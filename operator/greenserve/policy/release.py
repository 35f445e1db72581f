"""Held replicas give way to a scale-up that would otherwise open a node: pure.

The scale-down stabilisation window (policy/autoscaling.py) keeps a model's replicas for
`scale_down_delay_s` after its load fell, so that a dip followed by a return costs no cold start. A held
replica costs its GPU's loaded-idle power. But when another model scales up and its new replicas find no
free GPU on the nodes they may run on, holding costs a node: the node autoscaler adds one, which draws its
base power from then on (its provisioning, the new replica's load, then at least the autoscaler's
empty-node wait, and as long as any replica lands on it), and the new replicas serve only once it is
provisioned. Released instead, the held replicas' GPUs take the new replicas as soon as they have drained.

`release(short, held, now, within_s)` chooses which: only replicas the window alone keeps (a model's
count above what its load asks for now, `Held.wanted`), and of those only the holds that end within
`within_s` (the node provisioning time, profile.NODE_PROVISION_S), soonest first, until the freed GPUs
take the short replicas. Counted per node (`place`): a replica's GPUs are all on one node, so a
replica of two GPUs is short where two nodes have one free each, and a released replica of one GPU does
not make room for it. Such a hold ends before a node added now would be ready: without a release the
scale-up's pod takes its GPU when it ends anyway, and the new node stays empty until the autoscaler
removes it (its provisioning plus its empty-node wait, at base power). Released, the scale-up serves
sooner, no node is added, and the held model forgoes at most the provisioning time of its window. A
longer hold is kept: a node added for the scale-up then serves it, and releasing the hold would forgo
more of the window, whose purpose is the cold start it spares when a load returns (released regardless
of its end, a large fleet at a node's edge releases on nearly every scale-up, and every load that
returns pays a cold start: in the matrix this lost up to 1.5 points of attainment at the least headroom).
A model never goes below what its load asks for, and so never below its minimum nor, with traffic, one
replica; it scales up again like any other when its load returns. Without a shortfall nothing is
released. No parameter of its own.

Replicas held as rise headroom give way to load that is here (`release_headroom`, through `give_way`).
The rise headroom (policy/estimate.py) keeps replicas above what a model's load seen asks for (`bare`)
for rises that may come within a new replica's lead time. When another model's load seen asks for
replicas that no node holds (`Unplaced`: pending, or new) and the GPUs free and freed by the window do
not take them, those headroom replicas give way, one at a time from the model with the most headroom
left, never below `bare` and never a replica that only the window holds. Load that is here is served
after a drain and a model load instead of a node's provisioning as well; the model that gave asks for
its headroom again at its next decision, and that pod waits for the node instead. Only load seen takes
headroom: a scale-up for headroom alone takes none, so releases do not cascade. Seen in the matrix on
traffic outside the repo (seed 1, bursty/100ms/200): the largest model's overlapping bursts (x6 within
three minutes) waited for ten new nodes while 200 other models held headroom replicas; with this rule
the fleet answered 99.96% instead of 99.10% at the same setting and energy (README.md). A model whose
own rise may be under way (a sustained trend, or in-flight requests above what its rate keeps busy)
gives none: its `bare` is its whole count (policy/autoscaling.py `decide`), as that may be the rise its
headroom was held for.

`plan_scale_ups` orders the other half in a cluster where a replica takes seconds to drain: a scale-up
waiting for GPUs that a draining replica is about to free is held back until they are free (else the
node autoscaler sees a pending pod and adds the very node the release avoids), while any part that no
freed GPU will take is created at once, and a model with no ready replica is never held back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Held:
    """A model whose stabilisation window keeps more replicas than its load asks for now."""

    key: str
    current: int  # replicas applied
    wanted: int  # replicas its load asks for now (within its bounds and floors)
    held_until: float  # when the window would stop holding its current count
    gpus: int = 1  # per replica


@dataclass(frozen=True)
class Headroom:
    """A model with replicas above what the load seen asks for (`bare`): held for rises not yet come."""

    key: str
    current: int  # replicas applied
    bare: int  # replicas the load seen asks for without the rise headroom (within bounds and floors)
    gpus: int = 1
    # The count with the headroom, without the window (None: `current`): replicas above it are the
    # window's, which gives them way only by its own rule (`release`), never as headroom.
    wanted: int | None = None

    @property
    def spare(self) -> int:
        top = self.current if self.wanted is None else min(self.current, self.wanted)
        return max(0, top - max(0, self.bare))


@dataclass(frozen=True)
class ScaleUp:
    """A model whose decision adds replicas."""

    key: str
    current: int
    desired: int
    ready: int  # replicas serving now: one with none is never held back
    gpus: int = 1


@dataclass(frozen=True)
class Unplaced:
    """A model whose load seen (without the rise headroom) asks for replicas that no node holds yet."""

    key: str
    replicas: int  # what the load seen asks for, less its replicas bound to a node (ready or starting)
    gpus: int = 1


@dataclass(frozen=True)
class Tick:
    """One model's decision this tick, as the give-way step reads it: the one input shape of the
    operator's metrics tick (reconcile/give_way.py) and the simulator's (simulator/policies.py), so that
    both build the same scale-ups, holds, headroom and unplaced load from it (`tick_give_way`)."""

    key: str
    current: int  # replicas applied
    desired: int  # this tick's decision
    ready: int  # replicas serving now
    bound: int  # its replicas bound to a node (ready or starting), not leaving
    wanted: int | None = None  # ScaleDecision.wanted: the count without the window
    bare: int | None = None  # ScaleDecision.bare: the count without the rise headroom
    held_until: float = 0.0  # when the window stops holding `current` (autoscaling.held_until)
    gpus: int = 1  # per replica

    @property
    def scale_up(self) -> ScaleUp | None:
        if self.desired <= self.current:
            return None
        return ScaleUp(self.key, self.current, self.desired, self.ready, self.gpus)

    @property
    def unplaced(self) -> Unplaced | None:
        """What its load seen asks for beyond its replicas bound to a node."""
        if self.bare is None or min(self.desired, self.bare) <= self.bound:
            return None
        return Unplaced(self.key, min(self.desired, self.bare) - self.bound, self.gpus)


def asks(ticks: Iterable[Tick]) -> bool:
    """Whether any model asks for GPUs this tick (a scale-up, or load seen that no node holds): without
    one nothing gives way, and the caller need not read the free GPUs."""
    return any(t.scale_up is not None or t.unplaced is not None for t in ticks)


def tick_give_way(
    ticks: Sequence[Tick], free: Sequence[int], pending: Iterable[int], now: float, within_s: float
) -> dict[str, int]:
    """`give_way` over one tick's decisions: the models that give way and their new counts."""
    ups = [u for t in ticks if (u := t.scale_up) is not None]
    unplaced = [p for t in ticks if (p := t.unplaced) is not None]
    if not ups and not unplaced:
        return {}
    held = [
        Held(t.key, t.current, t.wanted, t.held_until, t.gpus)
        for t in ticks
        if t.wanted is not None and t.desired == t.current > t.wanted
    ]
    headroom = [
        Headroom(t.key, t.desired, t.bare, t.gpus, t.wanted)
        for t in ticks
        if t.bare is not None and t.current >= t.desired > t.bare
    ]
    return give_way(ups, held, headroom, unplaced, free, pending, now, within_s)


def freed(ticks: Iterable[Tick], counts: Mapping[str, int]) -> list[int]:
    """The GPUs of each replica that `counts` (from `tick_give_way`) takes away, one entry per replica:
    on whichever node its ReplicaSet removes it from, so each counts alone."""
    return [t.gpus for t in ticks if t.key in counts for _ in range(t.current - counts[t.key])]


def place(first: Iterable[int], then: Iterable[int], free: Sequence[int]) -> tuple[list[int], list[int]]:
    """The replicas (their GPUs each) that find no node with that many GPUs free: `first` (pods already
    pending) take their GPUs before `then` (the scale-ups), each group best-fit, largest first. A replica's
    GPUs must all be on one node, so free GPUs split over nodes take fewer multi-GPU replicas than their
    sum; replicas of one GPU each fit as long as any GPU is free, whichever node it is on."""
    left = [max(0, f) for f in free]
    out: tuple[list[int], list[int]] = ([], [])
    for group, unplaced in zip((first, then), out, strict=True):
        for g in sorted((g for g in group if g > 0), reverse=True):
            fits = [i for i, f in enumerate(left) if f >= g]
            if not fits:
                unplaced.append(g)
                continue
            left[min(fits, key=lambda i: (left[i], i))] -= g
    return out


def shortfall(ups: Iterable[ScaleUp], free: Sequence[int], pending: Iterable[int] = ()) -> list[int]:
    """The scale-ups' new replicas (their GPUs each) that the GPUs free on the nodes they may run on
    (`free`, per node) do not take, once the pods already `pending` for those nodes have taken theirs."""
    new = [u.gpus for u in ups for _ in range(max(0, u.desired - u.current))]
    return place(pending, new, free)[1]


def release(short: Sequence[int], held: Iterable[Held], now: float, within_s: float) -> dict[str, int]:
    """New counts for the held models whose replicas take the replicas `short` (their GPUs each; as many
    as they can), of the holds that end within `within_s` of `now`. Which replica of a model the
    ReplicaSet removes, and so on which node its GPUs free, is not known here: a released replica is
    counted only for its own GPUs, so it takes a short replica of as many GPUs or fewer."""
    out: dict[str, int] = {}
    left = sorted((g for g in short if g > 0), reverse=True)
    for h in sorted(held, key=lambda h: (h.held_until, h.key)):
        if not left or h.held_until - now > within_s:
            break
        for _ in range(max(0, h.current - max(0, h.wanted))):
            taken = _take(left, h.gpus)
            if not taken:
                break  # its replicas are too small for every short one: the next hold may not be
            left = [g for i, g in enumerate(left) if i not in taken]
            out[h.key] = out.get(h.key, h.current) - 1
            if not left:
                break
    return out


def release_headroom(short: Sequence[int], headroom: Iterable[Headroom]) -> dict[str, int]:
    """New counts for the models whose rise headroom takes the replicas `short` (their GPUs each; as many
    as it can): one replica at a time from the model with the most headroom left, so that every model
    keeps as much of its own as the others (ties by key). None gives more than its `spare`, so none goes
    below `bare` nor gives a replica that only its stabilisation window holds."""
    out: dict[str, int] = {}
    left = sorted((g for g in short if g > 0), reverse=True)
    spare = {h.key: h.spare for h in headroom if h.spare > 0}
    by_key = {h.key: h for h in headroom}
    while left and spare:
        key = max(spare, key=lambda k: (spare[k], k))
        taken = _take(left, by_key[key].gpus)
        if not taken:
            del spare[key]  # its replicas are too small for every short one
            continue
        left = [g for i, g in enumerate(left) if i not in taken]
        out[key] = out.get(key, by_key[key].current) - 1
        spare[key] -= 1
        if spare[key] <= 0:
            del spare[key]
    return out


def give_way(
    ups: Sequence[ScaleUp],
    held: Sequence[Held],
    headroom: Sequence[Headroom],
    unplaced: Sequence[Unplaced],
    free: Sequence[int],
    pending: Iterable[int],
    now: float,
    within_s: float,
) -> dict[str, int]:
    """New counts for the models whose replicas give way, where the GPUs `free` (per node) do not take
    what is asked for: first the replicas the window alone holds, for the scale-ups `ups` (`release`);
    then replicas held as rise headroom (`release_headroom`) by models that are not scaling up, for the
    replicas that the load seen asks for and no node holds (`unplaced`) as far as the GPUs free and
    freed do not take them. Load that is here is served before rises that may come: a new node takes
    the provisioning time and the cold start, a released headroom replica only its drain, and the model
    that lost it asks for it again at its next decision (its pod then waits for the node instead). A
    scale-up for headroom alone takes no one's headroom, so nothing cascades."""
    pending = list(pending)
    short = shortfall(ups, free, pending)
    out = release(short, held, now, within_s) if short else {}
    by_key = {h.key: h for h in held}
    # A released replica's GPUs, on whichever node its ReplicaSet removes it from: counted alone.
    freed = [by_key[k].gpus for k, n in out.items() for _ in range(by_key[k].current - n)]
    wanted = [u.gpus for u in unplaced for _ in range(max(0, u.replicas))]
    still = place((), wanted, [*free, *freed])[1]
    if still:
        scaling = {u.key for u in ups} | {u.key for u in unplaced}
        spare = [replace(h, current=out.get(h.key, h.current)) for h in headroom if h.key not in scaling]
        out.update(release_headroom(still, spare))
    return out


def _take(short: Sequence[int], gpus: int) -> set[int]:
    """Indices of the short replicas (largest first) that one released replica of `gpus` GPUs takes."""
    room, taken = gpus, set()
    for i, g in enumerate(short):
        if g <= room:
            taken.add(i)
            room -= g
    return taken


def plan_scale_ups(
    ups: Sequence[ScaleUp], free_now: Sequence[int], later: Sequence[int], pending: Iterable[int] = ()
) -> dict[str, int]:
    """The count each scale-up applies now: all of it where the GPUs free now (`free_now`, per node)
    take it or none is being freed; the part that only the GPUs free once draining replicas have gone
    (`later`, the same nodes then) take waits otherwise, the models with ready replicas waiting first,
    most replicas first (they lose the least by a few seconds). What even `later` will not take is
    applied at once: it needs a new node either way."""
    pending = list(pending)
    new = [u.gpus for u in ups for _ in range(max(0, u.desired - u.current))]
    wait = sum(place(pending, new, free_now)[1]) - sum(place(pending, new, later)[1])
    out = {u.key: u.desired for u in ups}
    for u in sorted(ups, key=lambda u: (u.ready == 0, -u.ready, u.key)):
        if wait <= 0 or u.ready == 0 or u.gpus <= 0:
            continue
        k = min(u.desired - u.current, wait // u.gpus)
        out[u.key] = u.desired - k
        wait -= k * u.gpus
    return out
