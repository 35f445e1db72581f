"""List-then-watch views of the GPU pods and nodes, for consolidation's hot path (reconcile/consolidator.py).

kopf's watches serve only the watched namespaces, but a node is filled by every tenant's GPU pods, so
consolidation keeps its own two watches, cluster-wide: pods and nodes. Each `Informer` lists once (in
pages), then follows the watch from the list's resourceVersion, resuming from the last version seen
(bookmarks included) when the server ends a watch, and lists again only when that version is gone
(410) or the connection failed. What it keeps is slimmed to what a plan reads (`slim_gpu_pod`,
`slim_gpu_node`): a cluster's other pods and nodes are not held at all.

The view decides *whether* to act; acting still reads fresh (a GET of the source pod and target node
before a move starts, the move's own pods while one is in flight).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from greenserve.api import constants as c
from greenserve.api.objects import node_gpus, pod_gpus
from greenserve.cluster.cache import ClusterCache
from greenserve.cluster.client import MODELSERVICES, NODES, PODS, ApiError, KubeClient, Resource

log = logging.getLogger(__name__)

Slim = Callable[[Mapping[str, Any]], dict[str, Any] | None]

_POD_ANNOTATIONS = (c.ANN_POD_DELETION_COST, c.ANN_KARPENTER_DO_NOT_DISRUPT, c.ANN_POOL_MOVE)
_NODE_ANNOTATIONS = (c.ANN_KARPENTER_DO_NOT_DISRUPT, c.ANN_CA_SCALE_DOWN_DISABLED)


def _meta(obj: Mapping[str, Any], annotations: tuple[str, ...]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    out = {k: meta[k] for k in ("name", "namespace", "labels", "resourceVersion", "deletionTimestamp",
                                "creationTimestamp") if k in meta}  # fmt: skip
    ann = meta.get("annotations") or {}
    out["annotations"] = {k: ann[k] for k in annotations if k in ann}
    return out


def slim_gpu_pod(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """A pod that holds GPUs or serves a ModelService, as consolidation reads it; None for the others."""
    gpus = pod_gpus(pod)
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if gpus == 0 and c.LABEL_MODELSERVICE not in labels:
        return None
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    return {
        "metadata": _meta(pod, _POD_ANNOTATIONS),
        "spec": {
            "nodeName": spec.get("nodeName"),
            "nodeSelector": spec.get("nodeSelector"),
            "containers": [{"resources": {"limits": {c.GPU_RESOURCE: gpus}}}],
        },
        "status": {
            "phase": status.get("phase"),
            "startTime": status.get("startTime"),
            "conditions": [x for x in status.get("conditions") or [] if x.get("type") == "Ready"],
        },
    }


def slim_gpu_node(node: Mapping[str, Any]) -> dict[str, Any] | None:
    """A GPU node (or one still carrying consolidation's taint) as consolidation reads it."""
    spec = node.get("spec") or {}
    taints = spec.get("taints") or []
    gpus = node_gpus(node)
    if gpus == 0 and not any(t.get("key") == c.TAINT_CONSOLIDATING for t in taints):
        return None
    return {
        "metadata": _meta(node, _NODE_ANNOTATIONS),
        "spec": {"taints": taints, "unschedulable": spec.get("unschedulable")},
        "status": {"allocatable": {c.GPU_RESOURCE: gpus}},
    }


class WatchClient(Protocol):
    async def list_page(
        self, res: Resource, namespace: str | None = None, limit: int = 500, cont: str | None = None
    ) -> tuple[list[dict[str, Any]], str, str | None]: ...

    def watch(
        self, res: Resource, resource_version: str, namespace: str | None = None, timeout_s: int = 300
    ) -> Any: ...  # an async iterator of events


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name")))


class Informer:
    """One resource's objects, kept current by a watch (see the module docstring)."""

    def __init__(
        self, kube: WatchClient, res: Resource, slim: Slim, timeout_s: int = 300, retry_s: float = 5.0
    ) -> None:
        self.kube, self.res, self.slim = kube, res, slim
        self.timeout_s, self.retry_s = timeout_s, retry_s
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.synced = asyncio.Event()  # set once the first list is in
        self.resource_version: str | None = None
        self.lists = 0  # LIST requests made (a test checks that steady state makes none)

    def items(self) -> list[dict[str, Any]]:
        return list(self.objects.values())

    def replace_all(self, items: list[dict[str, Any]], resource_version: str) -> None:
        kept = {}
        for obj in items:
            slim = self.slim(obj)
            if slim is not None:
                kept[_key(obj)] = slim
        self.objects = kept
        self.resource_version = resource_version
        self.synced.set()

    def apply(self, event: Mapping[str, Any]) -> None:
        """One watch event. ERROR raises ApiError (410: the caller lists again)."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise ApiError(int(obj.get("code") or 500), str(obj.get("reason")), str(obj.get("message")))
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            slim = self.slim(obj)
            if slim is None:
                self.objects.pop(_key(obj), None)  # e.g. a node whose GPUs went away
            else:
                self.objects[_key(obj)] = slim
        elif kind == "DELETED":
            self.objects.pop(_key(obj), None)
        if rv:
            self.resource_version = str(rv)

    async def relist(self) -> None:
        items: list[dict[str, Any]] = []
        cont: str | None = None
        rv = ""
        while True:
            self.lists += 1
            page, rv_page, cont = await self.kube.list_page(self.res, cont=cont)
            items += page
            rv = rv or rv_page  # the first page's version is the snapshot's
            if not cont:
                break
        self.replace_all(items, rv)

    async def run(self) -> None:
        """List, then watch, forever (cancel to stop)."""
        while True:
            try:
                if self.resource_version is None:
                    await self.relist()
                assert self.resource_version is not None
                async for event in self.kube.watch(self.res, self.resource_version, timeout_s=self.timeout_s):
                    self.apply(event)
            except asyncio.CancelledError:
                raise
            except ApiError as err:
                if err.status != 410:
                    log.warning("watch of %s failed: %s; listing again", self.res.plural, err)
                    await asyncio.sleep(self.retry_s)
                self.resource_version = None
            except Exception as err:  # a dropped connection: resume from the last version seen
                log.warning("watch of %s interrupted: %s", self.res.plural, err)
                await asyncio.sleep(self.retry_s)


class ClusterView(Protocol):
    """What a consolidation pass plans from: ModelServices, every GPU pod and serving pod, GPU nodes.
    Each returns None while the view cannot answer yet (its watch has not listed)."""

    async def modelservices(self) -> list[dict[str, Any]] | None: ...
    async def pods(self) -> list[dict[str, Any]] | None: ...
    async def nodes(self) -> list[dict[str, Any]] | None: ...


class ListedView:
    """Reads by LIST on every call: for tools and tests, and the fresh read before a move starts."""

    def __init__(self, kube: KubeClient, namespaces: tuple[str, ...] | list[str] = ()) -> None:
        self.kube, self.namespaces = kube, tuple(namespaces)

    async def modelservices(self) -> list[dict[str, Any]]:
        """Cluster-wide, or per watched namespace when the operator is namespaced (its RBAC is then a
        Role per namespace)."""
        if not self.namespaces:
            return await self.kube.list_objects(MODELSERVICES)
        out: list[dict[str, Any]] = []
        for ns in self.namespaces:
            out += await self.kube.list_objects(MODELSERVICES, ns)
        return out

    async def pods(self) -> list[dict[str, Any]]:
        # Every namespace's, also when namespaced (the chart then grants read-only pods cluster-wide):
        # another tenant's GPU pods fill a node as much as ours.
        return await self.kube.list_objects(PODS)

    async def nodes(self) -> list[dict[str, Any]]:
        return await self.kube.list_objects(NODES)


class WatchedView:
    """The operator's view: ModelServices from kopf's watch (cluster/cache.py, fed by handlers/cache.py,
    which serves the watched namespaces only) and this module's pod and node informers."""

    def __init__(self, cache: ClusterCache, pods: Informer, nodes: Informer) -> None:
        self.cache, self.pod_informer, self.node_informer = cache, pods, nodes

    async def modelservices(self) -> list[dict[str, Any]]:
        return list(self.cache.msvcs.values())

    async def pods(self) -> list[dict[str, Any]] | None:
        return self.pod_informer.items() if self.pod_informer.synced.is_set() else None

    async def nodes(self) -> list[dict[str, Any]] | None:
        return self.node_informer.items() if self.node_informer.synced.is_set() else None


def gpu_informers(kube: KubeClient) -> tuple[Informer, Informer]:
    """The pod and node informers consolidation runs (their `run` tasks are the caller's)."""
    return Informer(kube, PODS, slim_gpu_pod), Informer(kube, NODES, slim_gpu_node)
