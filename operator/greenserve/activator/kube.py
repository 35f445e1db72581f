"""The activator's requests to the API server, and its entry point (`greenserve activator`).

Least privilege (the chart's activator Role): read Services and EndpointSlices, and patch ModelServices,
which it does only to set the demand annotation (api/constants.py ANN_ACTIVATION_DEMAND). It never
writes anything else, and holds no watch: it reads the private Service's slices only while requests wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from greenserve.activator.proxy import (
    LABEL_SELECTOR_OURS,
    Activator,
    ActivatorConfig,
    Endpoint,
    Metrics,
    admin_app,
    app,
    private_endpoints,
)
from greenserve.api import constants as c
from greenserve.cluster.client import ENDPOINTSLICES, MODELSERVICES, SERVICES, ApiError, KubeClient
from greenserve.manifests.builders import private_service_name

log = logging.getLogger(__name__)

#: A ClusterIP not in the map is looked up again at most this often (a Service created since).
SERVICE_MAP_TTL_S = 5.0


class KubeCluster:
    def __init__(self, kube: KubeClient, namespaces: tuple[str, ...] = ()) -> None:
        self.kube = kube
        self.namespaces = namespaces
        self._by_ip: dict[str, tuple[str, str]] = {}
        self._listed_at = -SERVICE_MAP_TTL_S

    async def ready_endpoints(self, namespace: str, name: str) -> list[Endpoint]:
        selector = f"{c.LABEL_SERVICE_NAME}={private_service_name(name)}"
        slices = await self.kube.list_objects(ENDPOINTSLICES, namespace, label_selector=selector)
        return private_endpoints(slices)

    async def mark_demand(self, namespace: str, name: str, at: float) -> Mapping[str, Any] | None:
        patch = {"metadata": {"annotations": {c.ANN_ACTIVATION_DEMAND: f"{at:.3f}"}}}
        try:
            return await self.kube.patch(MODELSERVICES, name, patch, namespace)
        except ApiError as err:
            if err.not_found:
                return None
            raise

    async def service_by_ip(self, ip: str) -> tuple[str, str] | None:
        if ip not in self._by_ip and time.monotonic() - self._listed_at >= SERVICE_MAP_TTL_S:
            self._listed_at = time.monotonic()
            found: dict[str, tuple[str, str]] = {}
            for ns in self.namespaces or (None,):
                for svc in await self.kube.list_objects(SERVICES, ns, label_selector=LABEL_SELECTOR_OURS):
                    meta = svc["metadata"]
                    for addr in (svc.get("spec") or {}).get("clusterIPs") or []:
                        found[addr] = (meta["namespace"], meta["name"])
            self._by_ip = found
        return self._by_ip.get(ip)


async def serve(config: ActivatorConfig) -> None:
    metrics = Metrics(CollectorRegistry())
    async with KubeClient() as kube, aiohttp.ClientSession() as session:
        activator = Activator(KubeCluster(kube, config.namespaces), config, session, metrics)
        runners = []
        for application, port in ((app(activator), config.port), (admin_app(metrics), config.metrics_port)):
            runner = web.AppRunner(application, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, port=port).start()
            runners.append(runner)
        log.info("activator listening on :%d (metrics :%d)", config.port, config.metrics_port)
        try:
            await asyncio.Event().wait()
        finally:
            for runner in runners:
                await runner.cleanup()


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="greenserve activator", description=__doc__)
    defaults = ActivatorConfig()
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--metrics-port", type=int, default=defaults.metrics_port)
    parser.add_argument("--max-wait-seconds", type=float, default=defaults.max_wait_s)
    parser.add_argument("--namespace", "-n", action="append", default=[], help="default: all")
    args = parser.parse_args(argv)
    if args.max_wait_seconds <= 0:
        parser.error("--max-wait-seconds must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ActivatorConfig(
        port=args.port,
        metrics_port=args.metrics_port,
        max_wait_s=args.max_wait_seconds,
        namespaces=tuple(args.namespace),
    )
    asyncio.run(serve(config))
    return 0
