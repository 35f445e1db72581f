"""An in-memory stand-in for `greenserve.cluster.client.KubeClient`, for unit tests of pure orchestration.

It keeps objects by (resource, namespace, name) and follows the API server where the operator relies on it:
404 for what is missing, 409 when a patch carries a stale `metadata.resourceVersion`, a new resourceVersion
on every write, JSON merge patches, server-side apply as "the applied object replaces ours" (one field
manager), label selectors of the `k=v[,k=v]` form. Integration tests cover the real API server.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping
from typing import Any

from greenserve.cluster.client import ApiError, Resource, resource_for

Key = tuple[str, str | None, str]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self._rv = itertools.count(1)
        self.calls: list[tuple[str, str, str]] = []  # (verb, plural, name)
        # Runs before a patch is applied: lets a test change the object "between our read and our write".
        self.before_patch: Callable[[Resource, str], None] | None = None

    @staticmethod
    def _key(res: Resource, namespace: str | None, name: str) -> Key:
        return (res.plural, namespace if res.namespaced else None, name)

    def put(self, res: Resource, obj: Mapping[str, Any]) -> dict[str, Any]:
        stored = copy.deepcopy(dict(obj))
        meta = stored.setdefault("metadata", {})
        meta["resourceVersion"] = str(next(self._rv))
        self.objects[self._key(res, meta.get("namespace"), meta["name"])] = stored
        return copy.deepcopy(stored)

    def remove(self, res: Resource, name: str, namespace: str | None = None) -> None:
        self.objects.pop(self._key(res, namespace, name), None)

    def peek(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.objects.get(self._key(res, namespace, name))

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        self.calls.append(("get", res.plural, name))
        obj = self.peek(res, name, namespace)
        if obj is None:
            raise ApiError(404, "NotFound", f"{res.plural} {name} not found")
        return copy.deepcopy(obj)

    async def get_or_none(
        self, res: Resource, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        try:
            return await self.get(res, name, namespace)
        except ApiError:
            return None

    async def list_objects(
        self,
        res: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        self.calls.append(("list", res.plural, namespace or ""))
        wanted = dict(kv.split("=", 1) for kv in label_selector.split(",")) if label_selector else {}
        fields = dict(kv.split("=", 1) for kv in field_selector.split(",")) if field_selector else {}
        out = []
        for (plural, ns, _), obj in sorted(self.objects.items(), key=lambda kv: str(kv[0])):
            if plural != res.plural or (namespace and ns != namespace):
                continue
            labels = obj["metadata"].get("labels") or {}
            node = (obj.get("spec") or {}).get("nodeName")
            if fields.get("spec.nodeName", node) != node:
                continue
            if all(labels.get(k) == v for k, v in wanted.items()):
                out.append(copy.deepcopy(obj))
        return out

    async def apply(self, obj: Mapping[str, Any], force: bool = True) -> dict[str, Any]:
        res = resource_for(obj)
        self.calls.append(("apply", res.plural, obj["metadata"]["name"]))
        old = self.peek(res, obj["metadata"]["name"], obj["metadata"].get("namespace"))
        merged = copy.deepcopy(dict(obj))
        if old is not None and "status" in old:
            merged["status"] = old["status"]
        return self.put(res, merged)

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Mapping[str, Any],
        namespace: str | None = None,
        sub: str | None = None,
    ) -> dict[str, Any]:
        self.calls.append(("patch" if sub is None else f"patch/{sub}", res.plural, name))
        if self.before_patch is not None:
            self.before_patch(res, name)
        old = self.peek(res, name, namespace)
        if old is None:
            raise ApiError(404, "NotFound", f"{res.plural} {name} not found")
        want_rv = (patch.get("metadata") or {}).get("resourceVersion")
        if want_rv is not None and want_rv != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f"{res.plural} {name}: the object has been modified")
        return self.put(res, merge_patch(old, patch))

    async def patch_status(
        self, res: Resource, name: str, namespace: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self.patch(res, name, {"status": status}, namespace, sub="status")

    async def create(
        self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        self.calls.append(("create", res.plural, obj["metadata"]["name"]))
        if self.peek(res, obj["metadata"]["name"], namespace) is not None:
            raise ApiError(409, "AlreadyExists", f"{res.plural} {obj['metadata']['name']} already exists")
        return self.put(res, obj)

    async def request(self, method: str, path: str, body: Any = None, **_: Any) -> Any:
        """PUT (replace) of a whole object, with the API server's optimistic concurrency: 409 unless the
        body carries the stored resourceVersion. Other verbs go through the typed methods above."""
        if method != "PUT" or not isinstance(body, Mapping):
            raise NotImplementedError(f"FakeKube.request {method} {path}")
        res = resource_for(body)
        meta = body["metadata"]
        self.calls.append(("put", res.plural, meta["name"]))
        old = self.peek(res, meta["name"], meta.get("namespace"))
        if old is None:
            raise ApiError(404, "NotFound", f"{res.plural} {meta['name']} not found")
        if meta.get("resourceVersion") != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f"{res.plural} {meta['name']}: the object has been modified")
        return self.put(res, body)

    async def delete(self, res: Resource, name: str, namespace: str | None = None) -> None:
        self.calls.append(("delete", res.plural, name))
        self.remove(res, name, namespace)
