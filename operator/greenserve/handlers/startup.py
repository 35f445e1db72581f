"""Operator startup and cleanup: kopf settings and the shared dependencies in memo."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from greenserve.api import constants as c
from greenserve.cluster.client import KubeClient
from greenserve.config import OperatorConfig


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Keep kopf's bookkeeping under our own API group, in annotations (status is ours to write).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=c.GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{c.GROUP}/finalizer"
    # Owned objects are garbage-collected through ownerReferences; no finalizer is needed or added.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 20
    memo["config"] = OperatorConfig.from_env()
    memo["kube"] = KubeClient()


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    kube = memo.get("kube")
    if isinstance(kube, KubeClient):
        await kube.close()


@kopf.on.probe(id="config")
def probe(memo: kopf.Memo, **_: Any) -> str:
    return "ok" if "kube" in memo else "starting"
