"""The activator's HTTP proxy (see greenserve/activator/__init__.py).

A request names its ModelService by the Host header, `<name>.<namespace>[.svc[.<domain>]][:port]` as the
Service's DNS name gives it, or the Service's ClusterIP; the model in the path (`/v1/models/<model>`) must
be the ModelService's. The request is then:

* forwarded at once when the private Service (builders.private_service) already lists a ready endpoint
  (the Service is switching back and kube-proxy still sends some requests here);
* otherwise held: the ModelService gets the demand annotation (the operator's watch wakes it, and the
  mark is renewed every `demand_every_s` while requests wait, so a mark the operator missed is not lost),
  the private Service's EndpointSlices are read every `poll_s`, and the request is forwarded to a ready
  endpoint as soon as one is listed;
* answered 503 with Retry-After once it has waited `max_wait_s` (or less, when the client asks for less
  with the X-Greenserve-Max-Wait header), never held longer.

The body is read before the wait (bounded by `max_body_bytes`), so a held request costs its body's memory
and a connection; nothing else is kept per request. Polling happens only while requests wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from greenserve import contract as k
from greenserve.api import constants as c
from greenserve.api.objects import endpoints_ready

log = logging.getLogger(__name__)

MODEL_PATH = re.compile(r"^/v1/models/([^/:]+)")
_HOP = k.HOP_BY_HOP_HEADERS  # never copied through the proxy


@dataclass(frozen=True)
class ActivatorConfig:
    port: int = 8012
    metrics_port: int = 9090
    #: The bound on a held request's wait. The default covers a cold start (60 s assumed by the policy)
    #: on a node the autoscaler has yet to add (120 s, policy/profile.py NODE_PROVISION_S).
    max_wait_s: float = 180.0
    poll_s: float = 0.5
    demand_every_s: float = 5.0
    max_body_bytes: int = 64 * 1024 * 1024
    #: Namespaces whose ModelServices it serves (empty: the whole cluster), as the operator watches.
    namespaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"


class Cluster(Protocol):
    """What the activator asks of the API server (KubeCluster; a fake in the unit tests)."""

    async def ready_endpoints(self, namespace: str, name: str) -> list[Endpoint]: ...

    async def mark_demand(self, namespace: str, name: str, at: float) -> Mapping[str, Any] | None:
        """Annotate the ModelService with the demand time; its body, or None when there is no such one."""
        ...

    async def service_by_ip(self, ip: str) -> tuple[str, str] | None: ...


class Unknown(Exception):
    """The request names no ModelService this activator serves (404)."""


def parse_host(host: str) -> tuple[str | None, str] | str:
    """(namespace or None, name) from a DNS Host, or the bare address when the Host is an IP."""
    if host.startswith("["):  # [IPv6]:port
        return host[1 : host.index("]")] if "]" in host else host
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        pass
    parts = name.split(".")
    return (parts[1] if len(parts) > 1 and parts[1] else None), parts[0]


@dataclass
class _Model:
    """The requests held for one ModelService and the one task polling its endpoints meanwhile."""

    waiting: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    endpoints: list[Endpoint] = field(default_factory=list)
    poller: asyncio.Task[None] | None = None
    marked_at: float = -math.inf
    model_name: str | None = None
    rr: itertools.count[int] = field(default_factory=itertools.count)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        labels = (k.LABEL_NAMESPACE, k.LABEL_MODELSERVICE)
        self.held = Gauge(k.ACTIVATOR_HELD.family, k.ACTIVATOR_HELD.help, labels, registry=registry)
        spec = k.ACTIVATOR_REQUESTS
        self.requests = Counter(spec.family, spec.help, spec.labels, registry=registry)
        buckets = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 90, 120, 180, 300)
        self.wait = Histogram(
            k.ACTIVATOR_WAIT.family, k.ACTIVATOR_WAIT.help, labels, buckets=buckets, registry=registry
        )


class Activator:
    def __init__(
        self, cluster: Cluster, config: ActivatorConfig, session: aiohttp.ClientSession, metrics: Metrics
    ) -> None:
        self.cluster = cluster
        self.config = config
        self.session = session
        self.metrics = metrics
        self.models: dict[tuple[str, str], _Model] = {}

    # --- routing a request to its ModelService --------------------------------------------------------

    async def resolve(self, request: web.Request) -> tuple[str, str]:
        host = request.headers.get("Host", "")
        parsed = parse_host(host)
        if isinstance(parsed, str):
            found = await self.cluster.service_by_ip(parsed)
            if found is None:
                raise Unknown(f"no ModelService's Service has the address {parsed}")
            return found
        namespace, name = parsed
        if namespace is None:
            raise Unknown(f"Host {host!r} names no namespace: use <name>.<namespace> or the ClusterIP")
        if self.config.namespaces and namespace not in self.config.namespaces:
            raise Unknown(f"namespace {namespace} is not served by this activator")
        return namespace, name

    # --- holding -------------------------------------------------------------------------------------

    async def _mark(self, key: tuple[str, str], model: _Model) -> None:
        now = time.time()
        if now - model.marked_at < self.config.demand_every_s:
            return
        model.marked_at = now
        body = await self.cluster.mark_demand(key[0], key[1], now)
        if body is None:
            raise Unknown(f"no ModelService {key[0]}/{key[1]}")
        model.model_name = str(((body.get("spec") or {}).get("model") or {}).get("name") or "") or None

    async def _poll(self, key: tuple[str, str], model: _Model) -> None:
        """While requests wait: read the endpoints every poll_s and renew the demand mark."""
        try:
            while model.waiting > 0:
                try:
                    model.endpoints = await self.cluster.ready_endpoints(*key)
                    if model.endpoints:
                        model.ready.set()
                    else:
                        model.ready.clear()
                        await self._mark(key, model)
                except Unknown:
                    raise
                except Exception as err:  # the API server's hiccup: the next poll tries again
                    log.warning("activator: reading %s/%s failed: %s", *key, err)
                await asyncio.sleep(self.config.poll_s)
        finally:
            model.poller = None
            if model.waiting == 0:
                self.models.pop(key, None)

    async def endpoints(
        self, key: tuple[str, str], deadline: float, path_model: str | None = None
    ) -> list[Endpoint]:
        """Ready endpoints of the ModelService, waiting until `deadline` (monotonic) for one. Raises
        Unknown for a ModelService that does not exist or serves another model than `path_model`."""
        model = self.models.setdefault(key, _Model())
        model.waiting += 1
        self.metrics.held.labels(*key).inc()
        try:
            if model.poller is None:
                model.endpoints = await self.cluster.ready_endpoints(*key)
                if model.endpoints:
                    return list(model.endpoints)
                await self._mark(key, model)  # raises Unknown: answered 404 at once
                if model.poller is None:
                    model.poller = asyncio.get_running_loop().create_task(self._poll(key, model))
            elif model.endpoints:
                return list(model.endpoints)
            if path_model and model.model_name and path_model != model.model_name:
                served = model.model_name
                raise Unknown(f"ModelService {key[0]}/{key[1]} serves model {served}, not {path_model}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(model.ready.wait(), max(0.0, deadline - time.monotonic()))
            return list(model.endpoints)
        finally:
            model.waiting -= 1
            self.metrics.held.labels(*key).dec()
            if model.waiting == 0 and model.poller is None:
                self.models.pop(key, None)

    # --- the handler ---------------------------------------------------------------------------------

    def _wait_bound(self, request: web.Request) -> float:
        asked = request.headers.get(k.ACTIVATOR_MAX_WAIT_HEADER)
        try:
            wanted = float(asked) if asked is not None else math.inf
        except ValueError:
            wanted = math.inf
        return max(0.0, min(self.config.max_wait_s, wanted))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        bound = self._wait_bound(request)
        try:
            key = await self.resolve(request)
        except Unknown as err:
            self.metrics.requests.labels("", "", "unknown").inc()
            return _error(404, str(err))
        body = await request.read()
        path_model = MODEL_PATH.match(request.path)
        try:
            ready = await self.endpoints(key, started + bound, path_model.group(1) if path_model else None)
        except Unknown as err:
            self.metrics.requests.labels(*key, "unknown").inc()
            return _error(404, str(err))
        waited = time.monotonic() - started
        if not ready:
            self.metrics.wait.labels(*key).observe(waited)
            self.metrics.requests.labels(*key, "timeout").inc()
            retry = max(1, math.ceil(self.config.max_wait_s / 6))
            message = (
                f"ModelService {key[0]}/{key[1]} has no ready replica after {waited:.0f} s "
                f"(it is scaled to zero and starting); retry after {retry} s"
            )
            return _error(503, message, {"Retry-After": str(retry)})
        self.metrics.wait.labels(*key).observe(waited)
        return await self._forward(request, body, key, ready, started + max(bound, 30.0))

    async def _forward(
        self,
        request: web.Request,
        body: bytes,
        key: tuple[str, str],
        ready: Sequence[Endpoint],
        deadline: float,
    ) -> web.StreamResponse:
        """Send the request to a ready endpoint (round robin); a connection refused by one that has just
        gone (its endpoint not yet removed) moves on to the next."""
        headers = {h: v for h, v in request.headers.items() if h.lower() not in _HOP}
        headers["Host"] = request.headers.get("Host", "")
        model = self.models.get(key)
        start = next(model.rr) if model is not None else 0
        last: Exception | None = None
        for i in range(len(ready)):
            ep = ready[(start + i) % len(ready)]
            timeout = aiohttp.ClientTimeout(total=max(1.0, deadline - time.monotonic() + 300.0))
            try:
                async with self.session.request(
                    request.method,
                    ep.url + request.rel_url.path_qs,
                    data=body,
                    headers=headers,
                    timeout=timeout,
                    allow_redirects=False,
                ) as resp:
                    # Decoded as the agent's front decodes it; its Content-Encoding is not passed on.
                    payload = await resp.read()
                    out = {h: v for h, v in resp.headers.items() if h.lower() not in _HOP}
                    self.metrics.requests.labels(*key, "forwarded").inc()
                    return web.Response(status=resp.status, body=payload, headers=out)
            except aiohttp.ClientConnectionError as err:
                last = err
        self.metrics.requests.labels(*key, "error").inc()
        return _error(502, f"no ready replica of {key[0]}/{key[1]} accepted the request: {last}")


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    # TF Serving's REST error shape: {"error": "..."}.
    return web.json_response({"error": message}, status=status, headers=dict(headers or {}))


def app(activator: Activator) -> web.Application:
    application = web.Application(client_max_size=activator.config.max_body_bytes)
    application.router.add_route("*", "/{tail:.*}", activator.handle)
    return application


def admin_app(metrics: Metrics) -> web.Application:
    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), content_type="text/plain")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    application = web.Application()
    application.router.add_get("/metrics", metrics_handler)
    application.router.add_get("/healthz", healthz)
    return application


def private_endpoints(slices: Sequence[Mapping[str, Any]]) -> list[Endpoint]:
    """Ready endpoints of the private Service's slices on their `http` port."""
    out: list[Endpoint] = []
    for s in slices:
        port = next((p.get("port") for p in s.get("ports") or [] if p.get("name") == "http"), None)
        if isinstance(port, int):
            out.extend(Endpoint(a, port) for a in endpoints_ready([s]))
    return out


LABEL_SELECTOR_OURS = f"{c.LABEL_MANAGED_BY}={c.MANAGED_BY}"
