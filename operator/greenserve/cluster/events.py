"""Kubernetes Events about ModelServices (core/v1 Events, shown by `kubectl describe msvc`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
from collections.abc import Mapping
from typing import Any, Literal

from greenserve.cluster.client import EVENTS, ApiError, KubeClient

EventType = Literal["Normal", "Warning"]
COMPONENT = "greenserve-operator"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def post(kube: KubeClient, obj: Mapping[str, Any], type_: EventType, reason: str, message: str) -> None:
    """Post an Event; failures are swallowed because an Event is advice, never worth failing a reconcile."""
    meta = obj["metadata"]
    namespace = meta.get("namespace") or "default"
    now = _now()
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta["name"],
            "namespace": namespace,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    with contextlib.suppress(ApiError):
        await kube.create(EVENTS, event, namespace)
