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

import copy
from collections.abc import Mapping
from typing import Any

from greenserve.api.constants import LABEL_MODELSERVICE
from greenserve.cluster.cache import ClusterCache
from greenserve.cluster.client import MODELSERVICES, PODS, KubeClient, Resource
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
