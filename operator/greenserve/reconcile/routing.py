"""Where a minReplicas 0 ModelService's Service sends requests: its replicas, or the activator.

A Service's selector only selects pods of its own namespace, and the activator runs in the operator's.
So while such a ModelService has no ready replica, its Service loses its selector and the operator
writes an EndpointSlice for it (`builders.activator_slice`, managed-by greenserve) listing the
activator's pods; the activator holds the requests, marks demand on the ModelService (which wakes it,
policy/autoscaling.py) and forwards them through the private Service once a replica is ready
(greenserve/activator/). Both switches are make-before-break:

* to the activator only once the EndpointSlice controller's slices of the Service list no ready
  endpoint (the controller stops updating them when the selector goes, so a ready address left there
  would stay routed after its pod is gone);
* back to the replicas by restoring the selector first and emptying the activator's slice only once
  the controller's slices list a ready endpoint. Meanwhile kube-proxy spreads requests over both, and
  the activator forwards what reaches it.

Level-based: every reconcile of a ModelService with `routed` set recomputes the route from the pods and
the slices; `status.routing` records the last one applied.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from greenserve.api import constants as c
from greenserve.api.objects import endpoints_ready, pod_ready, pod_terminating
from greenserve.api.v1alpha1 import ModelServiceSpec, Routing
from greenserve.cluster.cache import apply_if_changed, ensure_ours
from greenserve.cluster.client import ENDPOINTSLICES, KubeClient
from greenserve.config import OperatorConfig
from greenserve.manifests import builders

log = logging.getLogger(__name__)

CONTROLLER_MANAGER = "endpointslice-controller.k8s.io"
#: How long the activator's addresses are reused before they are read again (the metrics tick reads them
#: every tick while any Service routes to the activator, so a restarted activator is followed within one).
ACTIVATOR_TTL_S = 60.0


def routed(spec: ModelServiceSpec, status: Mapping[str, Any], config: OperatorConfig) -> bool:
    """Whether the routing step owns this ModelService's public Service: minReplicas 0 with an activator
    configured, or a Service still routed to the activator (minReplicas raised while at zero)."""
    if config.activator_service is None:
        return False
    return spec.scaling.min_replicas == 0 or status.get("routing") == Routing.ACTIVATOR.value


@dataclass(frozen=True)
class Target:
    addresses: tuple[str, ...]
    port: int


class ActivatorBook:
    """The activator's ready addresses and port, from its Service's EndpointSlices."""

    def __init__(self) -> None:
        self.target: Target | None = None
        self.read_at: float | None = None

    async def get(
        self, kube: KubeClient, config: OperatorConfig, max_age_s: float = ACTIVATOR_TTL_S
    ) -> Target | None:
        now = time.monotonic()
        if self.read_at is None or now - self.read_at > max_age_s:
            await self.refresh(kube, config)
        return self.target

    async def refresh(self, kube: KubeClient, config: OperatorConfig) -> bool:
        """Read the addresses now; True when they changed."""
        if config.activator_service is None:
            return False
        namespace, name = config.activator_service
        slices = await kube.list_objects(
            ENDPOINTSLICES, namespace, label_selector=f"{c.LABEL_SERVICE_NAME}={name}"
        )
        self.read_at = time.monotonic()
        found = activator_target(slices)
        changed = found != self.target
        if changed:
            log.info("activator endpoints: %s", found)
        self.target = found
        return changed


ACTIVATOR = ActivatorBook()


def activator_target(slices: Sequence[Mapping[str, Any]]) -> Target | None:
    """The ready addresses of the activator's slices and their `http` port; None with no ready one."""
    addresses = tuple(sorted(set(endpoints_ready(slices))))
    port = next(
        (p.get("port") for s in slices for p in s.get("ports") or [] if p.get("name") == "http"), None
    )
    if not addresses or not isinstance(port, int):
        return None
    return Target(addresses, port)


async def controller_ready(kube: KubeClient, namespace: str, service: str) -> bool:
    """The EndpointSlice controller's slices of `service` list a ready endpoint."""
    selector = f"{c.LABEL_SERVICE_NAME}={service},{c.LABEL_ENDPOINTSLICE_MANAGED_BY}={CONTROLLER_MANAGER}"
    slices = await kube.list_objects(ENDPOINTSLICES, namespace, label_selector=selector)
    return bool(endpoints_ready(slices))


@dataclass(frozen=True)
class Route:
    routing: Routing
    settled: bool  # False: a switch waits for the EndpointSlice controller; reconcile again shortly


async def apply_route(
    kube: KubeClient,
    owner: builders.Owner,
    spec: ModelServiceSpec,
    status: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    config: OperatorConfig,
    book: ActivatorBook = ACTIVATOR,
    pool_routed: bool = False,
    serving_elsewhere: bool = False,
) -> Route:
    """Apply the public Service (and the activator's EndpointSlice) for where requests should go now.
    `pods`: the ModelService's own replicas. `pool_routed`: the Service selects by the per-model pool
    label (builders.service_selector); `serving_elsewhere`: pool pods are labelled as serving the model
    (reconcile/pools.py), which counts as a ready replica."""
    serving = serving_elsewhere or any(pod_ready(p) and not pod_terminating(p) for p in pods)
    was_activator = status.get("routing") == Routing.ACTIVATOR.value
    if not serving:
        target = await book.get(kube, config)
        if target is None:
            # No activator to hold requests: the Service keeps its selector (requests fail as they would
            # without an activator); the metrics tick re-reads the activator and switches once it is back.
            log.warning("%s/%s: no ready replica and no ready activator", owner.namespace, owner.name)
            await _apply(kube, builders.service(owner, spec, pool_routed))
            return Route(Routing.ACTIVATOR if was_activator else Routing.REPLICAS, True)
        if was_activator or not await controller_ready(kube, owner.namespace, owner.name):
            await _apply(kube, builders.activator_slice(owner, list(target.addresses), target.port))
            await _apply(kube, builders.service(owner, spec, pool_routed, selector=False))
            return Route(Routing.ACTIVATOR, True)
        await _apply(kube, builders.service(owner, spec, pool_routed))
        return Route(Routing.REPLICAS, False)  # the controller has not caught up with the pods yet
    await _apply(kube, builders.service(owner, spec, pool_routed))
    if not was_activator:
        return Route(Routing.REPLICAS, True)
    if not await controller_ready(kube, owner.namespace, owner.name):
        return Route(Routing.ACTIVATOR, False)  # selector back; the activator serves until endpoints exist
    target = book.target
    port = target.port if target is not None else c.TFS_REST_PORT
    await _apply(kube, builders.activator_slice(owner, [], port))
    return Route(Routing.REPLICAS, True)


async def _apply(kube: KubeClient, obj: dict[str, Any]) -> None:
    await ensure_ours(kube, [obj])
    await apply_if_changed(kube, obj)
