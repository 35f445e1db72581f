"""A coordination.k8s.io Lease as a leader lock, so one operator at a time runs the consolidation loop.

kopf's peering already keeps a single active operator when it runs with peering; the Lease makes the
guarantee explicit for the one loop that must never run twice (two consolidators would move the same
replicas), and holds also under `--standalone` if two operators were started by mistake.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from greenserve.cluster.client import LEASES, ApiError, KubeClient


def _fmt(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(raw: str | None) -> dt.datetime | None:
    if not raw:
        return None
    return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))


class LeaseLock:
    def __init__(
        self, kube: KubeClient, name: str, namespace: str, identity: str, duration_s: int = 60
    ) -> None:
        self.kube = kube
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.duration_s = duration_s

    def _body(
        self, now: dt.datetime, acquire: dt.datetime, transitions: int, rv: str | None
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if rv:
            meta["resourceVersion"] = rv  # optimistic concurrency: a racing writer gets 409
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.duration_s,
                "acquireTime": _fmt(acquire),
                "renewTime": _fmt(now),
                "leaseTransitions": transitions,
            },
        }

    async def try_acquire(self, now: dt.datetime | None = None) -> bool:
        """Acquire or renew; False when another live holder has it (or it lost a race)."""
        now = now or dt.datetime.now(dt.UTC)
        try:
            current = await self.kube.get_or_none(LEASES, self.name, self.namespace)
            if current is None:
                await self.kube.create(LEASES, self._body(now, now, 0, None), self.namespace)
                return True
            spec = current.get("spec", {}) or {}
            holder = spec.get("holderIdentity")
            renewed = _parse(spec.get("renewTime"))
            duration = int(spec.get("leaseDurationSeconds") or self.duration_s)
            expired = renewed is None or (now - renewed).total_seconds() > duration
            if holder not in (None, "", self.identity) and not expired:
                return False
            mine = holder == self.identity
            acquire = _parse(spec.get("acquireTime")) if mine else now
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
            body = self._body(now, acquire or now, transitions, current["metadata"]["resourceVersion"])
            await self.kube.request("PUT", LEASES.path(self.namespace, self.name), body=body)
            return True
        except ApiError as err:
            if err.conflict:
                return False
            raise

    async def release(self) -> None:
        current = await self.kube.get_or_none(LEASES, self.name, self.namespace)
        if current and (current.get("spec") or {}).get("holderIdentity") == self.identity:
            spec = dict(current["spec"])
            spec["holderIdentity"] = None
            body = {**current, "spec": spec}
            try:
                await self.kube.request("PUT", LEASES.path(self.namespace, self.name), body=body)
            except ApiError as err:
                if not err.conflict:
                    raise
