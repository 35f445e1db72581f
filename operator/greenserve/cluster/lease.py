"""A coordination.k8s.io Lease as a leader lock, so one operator at a time runs the fleet-wide loops.

kopf's peering pauses kopf's own handlers while two operators overlap (a rolling update, or two started by
mistake), but not the operator's own background loops: the metrics tick and the consolidation pass
(handlers/leader.py). Two consolidators would move the same replicas, and two ticks would race on the same
status, so both loops run only while this Lease is held, also under `--standalone`.

As in client-go's leaderelection, the holder counts itself leader only until a renew deadline shorter
than the lease duration that others wait out, so two operators never both believe they lead.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
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
        self,
        kube: KubeClient,
        name: str,
        namespace: str,
        identity: str,
        duration_s: int = 60,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.duration_s = duration_s
        self.clock = clock
        # Leader until this monotonic time: two thirds of the duration after the last successful renew,
        # a margin for clock skew and a slow renew before another operator may take over.
        self._held_until = 0.0
        self._last: dict[str, Any] | None = None  # our last write: renew with its resourceVersion, no GET

    def held(self) -> bool:
        """True while the last acquire or renew is within its renew deadline."""
        return self.clock() < self._held_until

    def _won(self, started: float, written: Any) -> bool:
        self._held_until = started + self.duration_s * 2 / 3
        self._last = written if isinstance(written, dict) else None
        return True

    def _lost(self) -> bool:
        self._held_until = 0.0
        self._last = None
        return False

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
        started = self.clock()
        last = self._last
        if last is not None and self.held():
            # Renew from our own last write: one PUT, and a 409 says someone else wrote in between.
            spec = last.get("spec") or {}
            acquired = _parse(spec.get("acquireTime")) or now
            transitions = int(spec.get("leaseTransitions") or 0)
            body = self._body(now, acquired, transitions, (last.get("metadata") or {}).get("resourceVersion"))
            try:
                written = await self.kube.request("PUT", LEASES.path(self.namespace, self.name), body=body)
                return self._won(started, written)
            except ApiError as err:
                if not (err.conflict or err.not_found):
                    self._lost()
                    raise
            self._last = None  # read it afresh below
        try:
            current = await self.kube.get_or_none(LEASES, self.name, self.namespace)
            if current is None:
                written = await self.kube.create(LEASES, self._body(now, now, 0, None), self.namespace)
                return self._won(started, written)
            spec = current.get("spec", {}) or {}
            holder = spec.get("holderIdentity")
            renewed = _parse(spec.get("renewTime"))
            duration = int(spec.get("leaseDurationSeconds") or self.duration_s)
            expired = renewed is None or (now - renewed).total_seconds() > duration
            if holder not in (None, "", self.identity) and not expired:
                return self._lost()
            mine = holder == self.identity
            acquire = _parse(spec.get("acquireTime")) if mine else now
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
            body = self._body(now, acquire or now, transitions, current["metadata"]["resourceVersion"])
            written = await self.kube.request("PUT", LEASES.path(self.namespace, self.name), body=body)
            return self._won(started, written)
        except ApiError as err:
            self._lost()
            if err.conflict:
                return False
            raise

    async def release(self) -> None:
        self._lost()
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
