"""A reconcile run against the watch-fed cache alone: does the real one have anything to send?

The metrics tick's safety-net resync (reconcile/ticker.py) runs the whole level-based reconcile for every
ModelService every `full_resync_s`. Sent to the API server, that is a GET and a LIST per ModelService per
period even when nothing differs (about 2 requests/s at 1,000 ModelServices and 900 s). `CacheReads`
runs the same code with every read answered from the cache (cluster/cache.py) and every write, or a read
the cache cannot answer, refused with `NeedsApiError`. A run that finishes found nothing to apply and
nothing to write, and has sent nothing; one that is refused is re-run for real, from a fresh read.

This is the informer model's periodic resync (controller-runtime re-queues from its cache, not from the
API server): the cache is as current as kopf's list-and-watch of the same objects.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping
from typing import Any

from greenserve.api.constants import LABEL_MODELSERVICE
from greenserve.cluster.cache import ClusterCache
from greenserve.cluster.client import EVENTS, MODELSERVICES, PODS, ApiError, KubeClient, Resource
from greenserve.cluster.credentials import Credentials


class NeedsApiError(Exception):
    """The cache-only run reached a write, or a read only the API server can answer."""


class CacheReads(KubeClient):
    """A KubeClient that answers a reconcile's reads from `cache` and sends nothing.

    Answered: the ModelService itself (GET) and its serving pods (LIST by the `LABEL_MODELSERVICE=name`
    selector). A status patch that only touches `deferrable` fields (those the tick writes on its own
    schedule: the slow figures and the autoscaler's state) counts as nothing to write. Every other
    request raises `NeedsApiError`; applies only reach here when the cache says the object changed
    (cluster/cache.py `apply_if_changed`).
    """

    def __init__(self, cache: ClusterCache, deferrable: frozenset[str] = frozenset()) -> None:
        super().__init__(Credentials(server="cache:"))
        self.cache = cache
        self.deferrable = deferrable

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str | None = "application/json",
    ) -> dict[str, Any]:
        raise NeedsApiError(f"{method} {path}")

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        body = self.cache.msvcs.get((namespace or "", name)) if res == MODELSERVICES else None
        if body is None:
            raise NeedsApiError(f"GET {res.path(namespace, name)}: not in the cache")
        return copy.deepcopy(body)

    async def get_or_none(
        self, res: Resource, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        return await self.get(res, name, namespace)

    async def list_objects(
        self,
        res: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        key, _, name = (label_selector or "").partition("=")
        if res != PODS or namespace is None or key != LABEL_MODELSERVICE or not name or field_selector:
            raise NeedsApiError(f"LIST {res.path(namespace)} {label_selector or ''}: not in the cache")
        return copy.deepcopy(self.cache.pods_of(namespace, name))

    async def patch_status(
        self, res: Resource, name: str, namespace: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        if res != MODELSERVICES or not set(status) <= self.deferrable:
            raise NeedsApiError(f"status of {namespace}/{name}: {sorted(set(status) - self.deferrable)}")
        return await self.get(res, name, namespace)

    async def close(self) -> None:
        return None


class CachedWrites(CacheReads):
    """A reconcile of an owned object's event run from the cache, its writes kept for `replay`.

    Reads as `CacheReads`, except the serving pods: a reconcile lists them only when the cached ones
    disagree with the Deployment's status (cluster/cache.py `pods_agreeing`), and then the API server's
    list is needed. The status patch, the pod patches (warm-up protection lifted) and the Events are kept;
    anything else (an apply, a read the cache cannot answer) raises `NeedsApiError`.
    """

    def __init__(self, cache: ClusterCache) -> None:
        super().__init__(cache)
        self.status: dict[str, Any] | None = None
        self.pod_patches: list[tuple[str, str, dict[str, Any]]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def list_objects(
        self,
        res: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        raise NeedsApiError(f"LIST {res.path(namespace)} {label_selector or ''}: the cache disagrees")

    async def patch_status(
        self, res: Resource, name: str, namespace: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        if res != MODELSERVICES or self.status is not None:
            raise NeedsApiError(f"status of {namespace}/{name}")
        self.status = copy.deepcopy(dict(status))
        return await self.get(res, name, namespace)

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Mapping[str, Any],
        namespace: str | None = None,
        sub: str | None = None,
    ) -> dict[str, Any]:
        if res != PODS or sub is not None or namespace is None:
            raise NeedsApiError(f"PATCH {res.path(namespace, name, sub)}")
        self.pod_patches.append((namespace, name, copy.deepcopy(dict(patch))))
        return {}

    async def create(
        self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        if res != EVENTS or namespace is None:
            raise NeedsApiError(f"POST {res.path(namespace)}")
        self.events.append((namespace, copy.deepcopy(dict(obj))))
        return dict(obj)

    async def replay(self, kube: KubeClient, meta: Mapping[str, Any]) -> bool:
        """Send the kept writes: the status first, guarded by the cached resourceVersion, then the pod
        patches and the Events. False, with nothing sent, when the ModelService changed since the cache
        saw it (409): the caller reconciles from a fresh read instead."""
        if self.status is not None:
            guarded = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": self.status}
            try:
                written = await kube.patch(MODELSERVICES, meta["name"], guarded, meta["namespace"], "status")
            except ApiError as err:
                if err.not_found:
                    return True  # deleted meanwhile: nothing to report on
                if err.conflict:
                    return False
                raise
            self.cache.observe_msvc(written)
        for namespace, name, patch in self.pod_patches:
            try:
                await kube.patch(PODS, name, patch, namespace)
            except ApiError as err:
                if not err.not_found:
                    raise
        for namespace, event in self.events:
            with contextlib.suppress(ApiError):  # an Event is advice (cluster/events.py)
                await kube.create(EVENTS, event, namespace)
        return True
