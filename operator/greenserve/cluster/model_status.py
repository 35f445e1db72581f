"""Read a model's state on a serving pod: TF Serving's model status endpoint (GET /v1/models/<name>).

The agent answers it on the pod's REST port (proxied to TF Serving, or the local backend of the CPU test
image); a draining agent answers 503. The operator sets a model's routing label on a shared pool pod only
after this says AVAILABLE (reconcile/pools.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from greenserve.api.constants import TFS_REST_PORT

log = logging.getLogger(__name__)
TIMEOUT_S = 2.0


def status_url(template: str, pod: Mapping[str, Any], model: str) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    meta = pod["metadata"]
    return template.format(
        ip=ip, port=TFS_REST_PORT, model=model, namespace=meta["namespace"], pod=meta["name"]
    )


async def model_available(session: aiohttp.ClientSession, url: str) -> bool:
    """True only when the server answers 200 with a version AVAILABLE; any failure is False (not loaded,
    loading, unloaded, draining, unreachable)."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as resp:
            if resp.status != 200:
                return False
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False
    states = [v.get("state") for v in (body or {}).get("model_version_status", []) if isinstance(v, dict)]
    return "AVAILABLE" in states
