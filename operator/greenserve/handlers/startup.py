"""Operator login, startup and cleanup: kopf settings and the shared dependencies in memo."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

from greenserve.api import constants as c
from greenserve.cluster.client import KubeClient
from greenserve.cluster.credentials import KubeAuth, KubeAuthError
from greenserve.config import OperatorConfig
from greenserve.handlers import consolidation, leader, ticker
from greenserve.handlers.diffbase import DIFFBASE, UnmarkedProgressStorage
from greenserve.metrics.base import MetricsSource
from greenserve.metrics.operator_metrics import OperatorMetrics
from greenserve.metrics.prometheus import PrometheusAuth, PrometheusSource
from greenserve.metrics.scrape import ScrapeSource
from greenserve.reconcile.loop import LoopDeps

log = logging.getLogger(__name__)
_OPERATOR_METRICS: OperatorMetrics | None = None  # one registry per process, across kopf restarts in tests


def prometheus_auth(config: OperatorConfig) -> PrometheusAuth:
    """Raises ValueError with the offending setting for contradictory auth options."""
    return PrometheusAuth(
        bearer_token_file=config.prometheus_bearer_token_file,
        username=config.prometheus_username,
        password_file=config.prometheus_password_file,
        ca_file=config.prometheus_ca_file,
        insecure_skip_verify=config.prometheus_insecure_skip_verify,
        headers=config.prometheus_headers,
    )


def _metrics_source(config: OperatorConfig) -> MetricsSource | None:
    if config.prometheus_url:
        return PrometheusSource(
            config.prometheus_url,
            window_s=config.metrics_window_s,
            stale_after_s=config.metrics_stale_after_s,
            auth=prometheus_auth(config),
        )
    if config.scrape_pods:
        return ScrapeSource(stale_after_s=config.metrics_stale_after_s)
    # No source: status says so (MetricsAvailable=False) and autoscaling holds.
    return None


def _operator_metrics(config: OperatorConfig) -> OperatorMetrics:
    global _OPERATOR_METRICS
    if _OPERATOR_METRICS is None:
        _OPERATOR_METRICS = OperatorMetrics()
        if config.metrics_port:
            try:
                start_http_server(config.metrics_port)
            except OSError as err:  # a busy port must not keep the operator from reconciling
                log.warning("operator metrics endpoint on :%d unavailable: %s", config.metrics_port, err)
    return _OPERATOR_METRICS


def kube_auth(memo: kopf.Memo) -> KubeAuth:
    """The operator's one credential source (cluster/credentials.py), shared by kopf's login and the REST
    client; created by whichever of the two handlers runs first (kopf starts them concurrently)."""
    auth = memo.get("kube_auth")
    if not isinstance(auth, KubeAuth):
        auth = memo["kube_auth"] = KubeAuth()
    return auth


@kopf.on.login()
async def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """kopf calls this at start, after a 401 and once `expiration` passes: load afresh every time, so an
    exec plugin runs again and a rotated ServiceAccount token is read again."""
    try:
        creds = await kube_auth(memo).credentials(fresh=True)
    except KubeAuthError as exc:
        raise kopf.LoginError(str(exc)) from exc
    return kopf.ConnectionInfo(
        server=creds.server,
        ca_path=creds.ca_file,
        insecure=creds.insecure,
        scheme=creds.scheme if creds.token else None,
        token=creds.token,
        certificate_path=creds.cert_file,
        private_key_path=creds.key_file,
        expiration=creds.expires_at,
    )


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Keep kopf's bookkeeping under our own API group, in annotations (status is ours to write).
    # Neither writes anything for a handler that succeeds at once: no PATCH of the ModelService per
    # handled creation or spec change (handlers/diffbase.py). The last handled spec is kept in memory.
    settings.persistence.progress_storage = UnmarkedProgressStorage()
    settings.persistence.diffbase_storage = DIFFBASE
    # No handler needs a finalizer, so kopf adds none (and removes this one from objects an older
    # version marked): owned objects are garbage-collected through ownerReferences, and the periodic
    # work is one task of its own (handlers/ticker.py), not kopf timers.
    settings.persistence.finalizer = f"{c.GROUP}/finalizer"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 20
    config = OperatorConfig.from_env()
    kube = KubeClient(kube_auth(memo))
    memo["config"] = config
    memo["kube"] = kube
    memo["loop"] = LoopDeps(
        kube=kube, config=config, source=_metrics_source(config), metrics=_operator_metrics(config)
    )
    await leader.start(memo)
    # Consolidation first: its watch-fed view of GPU nodes and pods is also what the tick's held
    # replicas give way on (reconcile/give_way.py).
    await consolidation.start(memo)
    await ticker.start(memo)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    await ticker.stop(memo)
    await consolidation.stop(memo)
    await leader.stop(memo)
    deps = memo.get("loop")
    if isinstance(deps, LoopDeps) and deps.source is not None:
        await deps.source.close()
    kube = memo.get("kube")
    if isinstance(kube, KubeClient):
        await kube.close()


@kopf.on.probe(id="config")
def probe(memo: kopf.Memo, **_: Any) -> str:
    return "ok" if "kube" in memo else "starting"
