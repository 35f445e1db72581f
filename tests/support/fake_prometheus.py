"""Prometheus' query API over what a cluster's agents would export, for the integration tests that run
the operator on kwok nodes (no container runs there, so nothing exports metrics): the rates are the
test's, the pods and their readiness the API server's."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from greenserve.api import constants as c
from greenserve.cluster.client import PODS, KubeClient


class FakePrometheus:
    """Prometheus' query API over what a cluster's agents would export, from the API's pods: each
    ModelService's requests go to its own Ready replicas while it has any, else to the pool pods
    labelled as serving it (their per-model counters), at the rate the test sets."""

    def __init__(self, kube: KubeClient, namespace: str) -> None:
        self.kube, self.ns = kube, namespace
        self.rps: dict[str, float] = {}
        self.pool_counts: dict[tuple[str, str], float] = {}  # (pool pod, model) -> requests
        self.t = time.time()
        self.t0 = self.t

    async def _advance(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        pods = [
            p for p in await self.kube.list_objects(PODS, self.ns)
            if not p["metadata"].get("deletionTimestamp")
            and any(cd.get("type") == "Ready" and cd.get("status") == "True"
                    for cd in (p.get("status") or {}).get("conditions") or [])
        ]  # fmt: skip
        own = [p for p in pods if c.LABEL_MODELSERVICE in p["metadata"].get("labels", {})]
        pool = [p for p in pods if c.LABEL_POOL in p["metadata"].get("labels", {})]
        now = time.time()
        dt, self.t = now - self.t, now
        for name, rps in self.rps.items():
            if any(p["metadata"]["labels"][c.LABEL_MODELSERVICE] == name for p in own):
                continue
            serving = [p for p in pool if p["metadata"]["labels"].get(f"model.greenserve.io/{name}")]
            for p in serving:
                key = (p["metadata"]["name"], name)
                self.pool_counts[key] = self.pool_counts.get(key, 0.0) + rps * dt / len(serving)
        return own, pool

    async def query_range(self, _: web.Request) -> web.Response:
        """No past: a restarted operator's rise history starts empty (reconcile/ticker.py `_backfill`)."""
        return web.json_response({"status": "success", "data": {"resultType": "matrix", "result": []}})

    async def query(self, request: web.Request) -> web.Response:
        q = str((await request.post()).get("query") or request.query.get("query", ""))
        own, pool = await self._advance()
        now = self.t
        out: list[tuple[dict[str, str], float]] = []
        if 'pool=~".+"' in q:
            for p in pool:
                labels = {"namespace": self.ns, "pod": p["metadata"]["name"]}
                if "timestamp(" in q:
                    out.append((labels, now))
                elif "request_count" in q:
                    out += [
                        ({**labels, "model_name": model}, n)
                        for (pod, model), n in self.pool_counts.items()
                        if pod == p["metadata"]["name"]
                    ]
                elif "gpu_energy_joules_total" in q:
                    out.append((labels, 40.0 * (now - self.t0)))
                elif "count by" in q or "gpu_power_watts" in q:
                    out.append((labels, 1.0 if "count by" in q else 40.0))
        elif 'modelservice=~".+"' in q:
            by_svc: dict[str, list[str]] = {}
            for p in own:
                by_svc.setdefault(p["metadata"]["labels"][c.LABEL_MODELSERVICE], []).append(
                    p["metadata"]["name"]
                )
            for svc, names in by_svc.items():
                svc_labels = {"namespace": self.ns, "modelservice": svc}
                if "request_count" in q and "increase(" in q and "_bucket" not in q:
                    out.append((svc_labels, self.rps.get(svc, 0.0) * 60.0))
                elif "inflight" in q:
                    out.append((svc_labels, 0.0))
                elif "histogram_quantile" in q or "requests_total" in q:
                    continue
                for name in names if "by (namespace, modelservice, pod)" in q else []:
                    labels = {**svc_labels, "pod": name}
                    if "timestamp(" in q:
                        out.append((labels, now))
                    elif "gpu_energy_joules_total" in q:
                        out.append((labels, 70.0 * 60.0 if "increase(" in q else 70.0 * (now - self.t0)))
                    elif "gpu_power_watts" in q:
                        out.append((labels, 1.0 if "count by" in q else 70.0))
                    elif "utilization" in q:
                        out.append((labels, 1.0 if "count by" in q else 0.3))
                    elif "agent_simulated" in q:
                        out.append((labels, 1.0))
        result = [{"metric": m, "value": [now, repr(v)]} for m, v in out]
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})
