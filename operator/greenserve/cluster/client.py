"""A small asyncio Kubernetes REST client: the only place greenserve talks to the API server.

It covers what the operator needs (get, list, server-side apply, merge patch, status patch, delete) with
one error type, instead of a generated client whose per-kind methods hide the REST semantics this operator
relies on (apply field managers, 404/409 handling). Credentials come from the Kubernetes client's own
loaders through cluster/credentials.py, the source kopf logs in with too.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

from greenserve.api import constants
from greenserve.cluster.credentials import Credentials, KubeAuth, KubeAuthError

__all__ = ["ApiError", "Credentials", "KubeAuth", "KubeAuthError", "KubeClient", "Resource"]


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = dict(body or {})

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def load_kubeconfig(path: str | os.PathLike[str] | None = None, context: str | None = None) -> KubeAuth:
    """Credentials from a kubeconfig (the given file, else KUBECONFIG, else ~/.kube/config), for the current
    or the named context, through the Kubernetes client's loader (exec plugins included)."""
    return KubeAuth(path or os.environ.get("KUBECONFIG") or Path.home() / ".kube" / "config", context)


def load_credentials() -> KubeAuth:
    """In-cluster config in a pod, else the kubeconfig (see cluster/credentials.py)."""
    return KubeAuth()


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the REST API."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        root = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            root += f"/namespaces/{namespace}"
        root += f"/{self.plural}"
        if name:
            root += f"/{name}"
        if sub:
            root += f"/{sub}"
        return root


DEPLOYMENTS = Resource("apps", "v1", "deployments")
REPLICASETS = Resource("apps", "v1", "replicasets")
SERVICES = Resource("", "v1", "services")
CONFIGMAPS = Resource("", "v1", "configmaps")
PODS = Resource("", "v1", "pods")
NODES = Resource("", "v1", "nodes", namespaced=False)
EVENTS = Resource("", "v1", "events")
PDBS = Resource("policy", "v1", "poddisruptionbudgets")
LEASES = Resource("coordination.k8s.io", "v1", "leases")
MODELSERVICES = Resource(constants.GROUP, constants.VERSION, constants.PLURAL)
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices")

_BY_KIND = {
    ("apps/v1", "Deployment"): DEPLOYMENTS,
    ("v1", "Service"): SERVICES,
    ("v1", "ConfigMap"): CONFIGMAPS,
    ("v1", "Pod"): PODS,
    ("v1", "Node"): NODES,
    ("policy/v1", "PodDisruptionBudget"): PDBS,
    ("coordination.k8s.io/v1", "Lease"): LEASES,
    ("discovery.k8s.io/v1", "EndpointSlice"): ENDPOINTSLICES,
    (constants.API_VERSION, constants.KIND): MODELSERVICES,
}


def resource_for(obj: Mapping[str, Any]) -> Resource:
    return _BY_KIND[(str(obj["apiVersion"]), str(obj["kind"]))]


class KubeClient:
    """One aiohttp session to the API server. Use as an async context manager, or call close().

    ``source`` is fixed ``Credentials`` or a ``KubeAuth`` (default: in-cluster, else the kubeconfig) asked
    before every request, so rotated tokens and renewed exec-plugin credentials are picked up; a 401 asks
    it for fresh credentials once and retries.
    """

    def __init__(self, source: Credentials | KubeAuth | None = None, timeout_s: float = 30.0) -> None:
        self.auth: KubeAuth | None = None if isinstance(source, Credentials) else (source or KubeAuth())
        self._static = source if isinstance(source, Credentials) else None
        # The limit is on the server's answer, not on the wait for a free connection of the pool: when a
        # thousand ModelServices reconcile at once (a bulk create, a restart) most requests queue in the
        # pool, and a total timeout failed them there, for kopf to retry them all a minute later.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._session_tls: tuple[str | None, str | None, str | None, bool] | None = None

    async def credentials(self, *, fresh: bool = False) -> Credentials:
        if self._static is not None:
            return self._static
        assert self.auth is not None
        return await self.auth.credentials(fresh=fresh)

    @staticmethod
    def _ssl(creds: Credentials) -> ssl.SSLContext | bool:
        if not creds.server.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=creds.ca_file)
        if creds.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if creds.cert_file and creds.key_file:
            ctx.load_cert_chain(creds.cert_file, creds.key_file)
        return ctx

    async def _session_(self, creds: Credentials) -> aiohttp.ClientSession:
        # A new client certificate or CA (an exec plugin's, say) needs a new connection pool.
        if self._session is not None and (self._session.closed or self._session_tls != creds.tls_key):
            await self._session.close()
            self._session = None
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl(creds)), timeout=self._timeout
            )
            self._session_tls = creds.tls_key
        return self._session

    @staticmethod
    def _headers(creds: Credentials, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if creds.authorization:
            headers["Authorization"] = creds.authorization
        if creds.impersonate:
            headers["Impersonate-User"] = creds.impersonate
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str | None = "application/json",
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body)
        for attempt in (0, 1):
            creds = await self.credentials(fresh=attempt > 0)
            session = await self._session_(creds)
            url = creds.server + path + ("?" + urlencode(params) if params else "")
            async with session.request(
                method, url, data=data, headers=self._headers(creds, content_type if data else None)
            ) as r:
                text = await r.text()
                if r.status == 401 and attempt == 0 and self.auth is not None:
                    continue  # expired or revoked: once more with credentials loaded afresh
                payload: dict[str, Any] = json.loads(text) if text and text.lstrip().startswith("{") else {}
                if r.status >= 400:
                    raise ApiError(
                        r.status,
                        str(payload.get("reason") or r.reason),
                        str(payload.get("message") or text),
                        payload,
                    )
                return payload
        raise AssertionError("unreachable")  # the second attempt always returns or raises

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return await self.request("GET", res.path(namespace, name))

    async def get_or_none(
        self, res: Resource, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        try:
            return await self.get(res, name, namespace)
        except ApiError as err:
            if err.not_found:
                return None
            raise

    async def list_objects(
        self,
        res: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        params = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        result = await self.request("GET", res.path(namespace), params=params)
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    async def list_page(
        self, res: Resource, namespace: str | None = None, limit: int = 500, cont: str | None = None
    ) -> tuple[list[dict[str, Any]], str, str | None]:
        """One page of a paginated LIST: (items, the list's resourceVersion, the continue token or None)."""
        params = {"limit": str(limit)}
        if cont:
            params["continue"] = cont
        result = await self.request("GET", res.path(namespace), params=params)
        meta = result.get("metadata") or {}
        items: list[dict[str, Any]] = result.get("items") or []
        return items, str(meta.get("resourceVersion") or ""), meta.get("continue") or None

    async def watch(
        self, res: Resource, resource_version: str, namespace: str | None = None, timeout_s: int = 300
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events ({"type", "object"}) from `resource_version` until the server ends the watch
        (after `timeout_s`); bookmarks included. A 410 Gone (the version was compacted) arrives as an
        ERROR event, the caller's cue to list again."""
        params = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
        }
        creds = await self.credentials()
        session = await self._session_(creds)
        url = creds.server + res.path(namespace) + "?" + urlencode(params)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timeout_s + 30)
        async with session.get(url, headers=self._headers(creds, None), timeout=timeout) as r:
            if r.status >= 400:
                text = await r.text()
                raise ApiError(r.status, str(r.reason), text)
            # One JSON object per line; split by hand, as a line may be longer than aiohttp's readline limit.
            buf = b""
            async for chunk in r.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)

    async def apply(self, obj: Mapping[str, Any], force: bool = True) -> dict[str, Any]:
        """Server-side apply `obj` as greenserve's field manager; idempotent by construction."""
        res = resource_for(obj)
        meta = obj["metadata"]
        params = {"fieldManager": constants.FIELD_MANAGER, "force": "true" if force else "false"}
        return await self.request(
            "PATCH",
            res.path(meta.get("namespace"), meta["name"]),
            body=obj,
            params=params,
            content_type="application/apply-patch+yaml",
        )

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Mapping[str, Any],
        namespace: str | None = None,
        sub: str | None = None,
    ) -> dict[str, Any]:
        return await self.request(
            "PATCH", res.path(namespace, name, sub), body=patch, content_type="application/merge-patch+json"
        )

    async def patch_status(
        self, res: Resource, name: str, namespace: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self.patch(res, name, {"status": status}, namespace, sub="status")

    async def create(
        self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        return await self.request("POST", res.path(namespace), body=obj)

    async def delete(self, res: Resource, name: str, namespace: str | None = None) -> None:
        try:
            await self.request("DELETE", res.path(namespace, name))
        except ApiError as err:
            if not err.not_found:
                raise

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
