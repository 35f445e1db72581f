"""Held replicas give way to a scale-up that would otherwise open a node: pure.

The scale-down stabilisation window (policy/autoscaling.py) keeps a model's replicas for
`scale_down_delay_s` after its load fell, so that a dip followed by a return costs no cold start. A held
replica costs its GPU's loaded-idle power. But when another model scales up and its new replicas find no
free GPU on the nodes they may run on, holding costs a node: the node autoscaler adds one, which draws its
base power from then on (its provisioning, the new replica's load, then at least the autoscaler's
empty-node wait, and as long as any replica lands on it), and the new replicas serve only once it is
provisioned. Released instead, the held replicas' GPUs take the new replicas as soon as they have drained.

`release(short_gpus, held, now, within_s)` chooses which: only replicas the window alone keeps (a model's
count above what its load asks for now, `Held.wanted`), and of those only the holds that end within
`within_s` (the node provisioning time, profile.NODE_PROVISION_S), soonest first, until the freed GPUs
cover the shortfall. Such a hold ends before a node added now would be ready: without a release the
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

`plan_scale_ups` orders the other half in a cluster where a replica takes seconds to drain: a scale-up
waiting for GPUs that a draining replica is about to free is held back until they are free (else the
node autoscaler sees a pending pod and adds the very node the release avoids), while any part that no
freed GPU will take is created at once, and a model with no ready replica is never held back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Held:
    """A model whose stabilisation window keeps more replicas than its load asks for now."""

    key: str
    current: int  # replicas applied
    wanted: int  # replicas its load asks for now (within its bounds and floors)
    held_until: float  # when the window would stop holding its current count
    gpus: int = 1  # per replica


@dataclass(frozen=True)
class ScaleUp:
    """A model whose decision adds replicas."""

    key: str
    current: int
    desired: int
    ready: int  # replicas serving now: one with none is never held back
    gpus: int = 1


def release(short_gpus: int, held: Iterable[Held], now: float, within_s: float) -> dict[str, int]:
    """New counts for the held models that free at least `short_gpus` GPUs (fewer if they cannot), of
    the holds that end within `within_s` of `now`."""
    out: dict[str, int] = {}
    left = short_gpus
    for h in sorted(held, key=lambda h: (h.held_until, h.key)):
        if left <= 0 or h.held_until - now > within_s:
            break
        spare = h.current - max(0, h.wanted)
        if spare <= 0 or h.gpus <= 0:
            continue
        k = min(spare, math.ceil(left / h.gpus))
        out[h.key] = h.current - k
        left -= k * h.gpus
    return out


def shortfall(ups: Iterable[ScaleUp], free_gpus: int) -> int:
    """GPUs the scale-ups ask for beyond those free (or being freed) on the nodes they may run on."""
    return max(0, sum((u.desired - u.current) * u.gpus for u in ups) - max(0, free_gpus))


def plan_scale_ups(ups: Sequence[ScaleUp], free_now: int, freeing: int) -> dict[str, int]:
    """The count each scale-up applies now: all of it while `free_now` GPUs take it or no GPU is being
    freed; the part that waits for `freeing` GPUs (draining replicas) otherwise, the models with ready
    replicas waiting first, most replicas first (they lose the least by a few seconds). What the freed
    GPUs will not take is applied at once: it needs a new node either way."""
    asked = sum((u.desired - u.current) * u.gpus for u in ups)
    wait = min(max(0, asked - max(0, free_now)), max(0, freeing))
    out = {u.key: u.desired for u in ups}
    for u in sorted(ups, key=lambda u: (u.ready == 0, -u.ready, u.key)):
        if wait <= 0 or u.ready == 0 or u.gpus <= 0:
            continue
        k = min(u.desired - u.current, wait // u.gpus)
        out[u.key] = u.desired - k
        wait -= k * u.gpus
    return out
