"""A small asyncio Kubernetes REST client: the only place greenserve talks to the API server.

It covers what the operator needs (get, list, server-side apply, merge patch, status patch, delete) with
one error type, instead of a generated client whose per-kind methods hide the REST semantics this operator
relies on (apply field managers, 404/409 handling).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import yaml

from greenserve.api import constants

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


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


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    insecure: bool = False
    impersonate: str | None = None


def _materialise(data_b64: str | None, path: str | None, base: Path, suffix: str) -> str | None:
    if data_b64:
        handle = tempfile.NamedTemporaryFile(prefix="greenserve-", suffix=suffix, delete=False)  # noqa: SIM115
        with handle:
            handle.write(base64.b64decode(data_b64))
        return handle.name
    if path:
        return str((base / path).resolve()) if not os.path.isabs(path) else path
    return None


def load_kubeconfig(path: str | os.PathLike[str] | None = None, context: str | None = None) -> Credentials:
    """Credentials from a kubeconfig (KUBECONFIG or ~/.kube/config), for the current or the named context."""
    raw_path = (
        path or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or Path.home() / ".kube" / "config"
    )
    cfg_path = Path(raw_path)
    cfg = yaml.safe_load(cfg_path.read_text())
    base = cfg_path.parent
    ctx_name = context or cfg.get("current-context")
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
    user: dict[str, Any] = {}
    for entry in cfg.get("users") or []:
        if entry["name"] == ctx.get("user"):
            user = entry.get("user") or {}
    return Credentials(
        server=cluster["server"].rstrip("/"),
        ca_file=_materialise(
            cluster.get("certificate-authority-data"), cluster.get("certificate-authority"), base, ".crt"
        ),
        cert_file=_materialise(
            user.get("client-certificate-data"), user.get("client-certificate"), base, ".crt"
        ),
        key_file=_materialise(user.get("client-key-data"), user.get("client-key"), base, ".key"),
        token=user.get("token"),
        token_file=user.get("tokenFile"),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
    )


def load_in_cluster() -> Credentials:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    if ":" in host:
        host = f"[{host}]"
    # The projected token rotates; it is re-read on every request.
    return Credentials(
        server=f"https://{host}:{port}", ca_file=str(SA_DIR / "ca.crt"), token_file=str(SA_DIR / "token")
    )


def load_credentials() -> Credentials:
    if (
        "KUBERNETES_SERVICE_HOST" in os.environ
        and (SA_DIR / "token").exists()
        and not os.environ.get("KUBECONFIG")
    ):
        return load_in_cluster()
    return load_kubeconfig()


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

_BY_KIND = {
    ("apps/v1", "Deployment"): DEPLOYMENTS,
    ("v1", "Service"): SERVICES,
    ("v1", "ConfigMap"): CONFIGMAPS,
    ("v1", "Pod"): PODS,
    ("v1", "Node"): NODES,
    ("policy/v1", "PodDisruptionBudget"): PDBS,
    (constants.API_VERSION, constants.KIND): MODELSERVICES,
}


def resource_for(obj: Mapping[str, Any]) -> Resource:
    return _BY_KIND[(str(obj["apiVersion"]), str(obj["kind"]))]


class KubeClient:
    """One aiohttp session to the API server. Use as an async context manager, or call close()."""

    def __init__(self, creds: Credentials | None = None, timeout_s: float = 30.0) -> None:
        self.creds = creds or load_credentials()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.creds.server.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=self.creds.ca_file)
        if self.creds.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.creds.cert_file and self.creds.key_file:
            ctx.load_cert_chain(self.creds.cert_file, self.creds.key_file)
        return ctx

    async def _session_(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl()), timeout=self._timeout
            )
        return self._session

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.creds.token
        if self.creds.token_file:
            token = Path(self.creds.token_file).read_text().strip()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self.creds.impersonate:
            headers["Impersonate-User"] = self.creds.impersonate
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
        session = await self._session_()
        url = self.creds.server + path + ("?" + urlencode(params) if params else "")
        data = None if body is None else json.dumps(body)
        async with session.request(
            method, url, data=data, headers=self._headers(content_type if data else None)
        ) as r:
            text = await r.text()
            payload: dict[str, Any] = json.loads(text) if text and text.lstrip().startswith("{") else {}
            if r.status >= 400:
                raise ApiError(
                    r.status,
                    str(payload.get("reason") or r.reason),
                    str(payload.get("message") or text),
                    payload,
                )
            return payload

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
