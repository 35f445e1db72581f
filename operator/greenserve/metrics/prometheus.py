"""MetricsSource over the Prometheus HTTP API (``/api/v1/query``).

Queries are built from :mod:`greenserve.contract`. Per ModelService the source reads the agents' series,
which carry the ``namespace``/``modelservice``/``pod`` target labels from the scrape config
(:func:`greenserve.contract.kubernetes_pod_scrape_config`). Where no agent series exist (a plain TF Serving
image) it falls back to NVIDIA's dcgm-exporter, matched on ``namespace`` and the pods the operator passes,
with traffic still from TF Serving's own ``:tensorflow:serving:*`` metrics.

Freshness: an instant query returns a series' last sample up to Prometheus' lookback (5 min by default),
so each read also asks for ``timestamp()`` and marks the result stale when the oldest newest-sample is
older than ``stale_after_s``. A series that Prometheus has marked stale (target gone) is simply absent:
the field comes back None and is listed in ``missing``.

Authentication (:class:`PrometheusAuth`): a bearer token or a basic-auth password read from files, re-read
when the file changes (projected ServiceAccount tokens and mounted Secrets are rotated in place), a CA
bundle or insecure-skip-verify for https, and extra headers such as a multi-tenant ``X-Scope-OrgID``. An
unreadable credential is a PrometheusError like an unreachable server: the metrics are missing and
scaling holds.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import os
import re
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from greenserve import contract as k
from greenserve.metrics.pooled import PoolLedger, PoolPodSample
from greenserve.metrics.types import PodRef, PooledModel, ServiceMetrics, SourceKind

log = logging.getLogger(__name__)

GpuSourceMode = Literal["auto", "agent", "dcgm"]


class PrometheusError(Exception):
    """The Prometheus API could not be queried (unreachable, bad query)."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float
    timestamp: float


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    points: tuple[tuple[float, float], ...]  # (timestamp, value), oldest first


@dataclass(frozen=True)
class PrometheusAuth:
    """How to authenticate to Prometheus (or Thanos, Mimir, Cortex, a managed service behind a proxy).

    At most one of ``bearer_token_file`` and basic auth (``username`` with ``password_file``); credentials
    come from files only, so they never sit in the environment or the Deployment spec.
    """

    bearer_token_file: str | None = None
    username: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    insecure_skip_verify: bool = False
    headers: tuple[tuple[str, str], ...] = ()  # (name, value) pairs, sent as given

    def __post_init__(self) -> None:
        if self.bearer_token_file and (self.username or self.password_file):
            raise ValueError("Prometheus auth: set either a bearer token file or basic auth, not both")
        if bool(self.username) != bool(self.password_file):
            raise ValueError("Prometheus basic auth needs both a username and a password file")
        if self.ca_file and self.insecure_skip_verify:
            raise ValueError("Prometheus TLS: a CA file and insecure-skip-verify contradict each other")
        for name, value in self.headers:
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name) or any(c in value for c in "\r\n"):
                raise ValueError(f"Prometheus header {name!r}: not a valid HTTP header name or value")
            if name.lower() == "authorization" and (self.bearer_token_file or self.username):
                raise ValueError("Prometheus headers: Authorization comes from the token or basic auth")


class _WatchedFile:
    """A small file's content, re-read whenever its identity (inode, size, mtime) changes. Kubernetes
    swaps a mounted Secret's ``..data`` symlink atomically, and ``os.stat`` follows it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._key: tuple[int, int, int] | None = None
        self._text = ""

    def read(self) -> str:
        try:
            st = os.stat(self.path)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if key != self._key:
                with open(self.path, encoding="utf-8") as fh:
                    self._text = fh.read().strip()
                self._key = key
        except OSError as exc:
            raise PrometheusError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        if not self._text:
            raise PrometheusError(f"{self.path} is empty")
        return self._text


class _Credentials:
    """Request headers and the TLS context of one PrometheusAuth, files re-read on change."""

    def __init__(self, auth: PrometheusAuth) -> None:
        self.auth = auth
        self._token = _WatchedFile(auth.bearer_token_file) if auth.bearer_token_file else None
        self._password = _WatchedFile(auth.password_file) if auth.password_file else None
        self._ca = _WatchedFile(auth.ca_file) if auth.ca_file else None
        self._ssl: ssl.SSLContext | None = None
        self._ssl_for = ""

    def headers(self) -> dict[str, str]:
        out = dict(self.auth.headers)
        if self._token is not None:
            out["Authorization"] = f"Bearer {self._token.read()}"
        elif self._password is not None and self.auth.username:
            pair = f"{self.auth.username}:{self._password.read()}".encode()
            out["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return out

    def ssl(self) -> ssl.SSLContext | bool:
        """True: the default verification; a context for a CA bundle (rebuilt when it changes) or for
        skipping verification."""
        if self.auth.insecure_skip_verify:
            if self._ssl is None:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                self._ssl = ctx
            return self._ssl
        if self._ca is None:
            return True
        pem = self._ca.read()
        if self._ssl is None or pem != self._ssl_for:
            try:
                self._ssl = ssl.create_default_context(cadata=pem)
            except (ssl.SSLError, ValueError) as exc:
                raise PrometheusError(f"CA bundle {self._ca.path}: {exc}") from exc
            self._ssl_for = pem
        return self._ssl


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def selector(name: str | None = None, **matchers: str) -> str:
    """``{__name__="...", key="value", key=~"regex"}``; a value starting with ``~`` is a regex matcher.
    The ``__name__`` form keeps TF Serving's colon-prefixed names unambiguous."""
    parts = [f"__name__={_quote(name)}"] if name else []
    for key, value in matchers.items():
        if value.startswith("~"):
            parts.append(f"{key}=~{_quote(value[1:])}")
        else:
            parts.append(f"{key}={_quote(value)}")
    return "{" + ",".join(parts) + "}"


def pods_regex(pods: Sequence[PodRef]) -> str:
    return "~" + "|".join(re.escape(p.name) for p in pods)


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


class PrometheusSource:
    """See the module docstring. ``window_s`` is the rate window; pick at least 4 scrape intervals."""

    def __init__(
        self,
        url: str,
        *,
        window_s: float = 60.0,
        stale_after_s: float = 120.0,
        gpu_source: GpuSourceMode = "auto",
        timeout_s: float = 5.0,
        auth: PrometheusAuth | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url.rstrip("/")
        self._credentials = _Credentials(auth or PrometheusAuth())
        self.window_s = window_s
        self.stale_after_s = stale_after_s
        self.gpu_source = gpu_source
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._pools = PoolLedger(stale_after_s)

    @property
    def _window(self) -> str:
        return f"{max(1, round(self.window_s))}s"

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    async def _api(self, path: str, promql: str, form: Mapping[str, str]) -> dict[str, Any]:
        """POST one query to the HTTP API; returns its `data`, or raises a PrometheusError that says why."""
        session = await self._http()
        headers, tls = self._credentials.headers(), self._credentials.ssl()
        try:
            async with session.post(
                f"{self.url}{path}", data=dict(form), headers=headers, ssl=tls, timeout=self._timeout
            ) as resp:
                if resp.status in (401, 403):
                    # The body of an auth proxy is rarely the API's JSON; say what happened instead.
                    raise PrometheusError(f"{promql}: HTTP {resp.status} {resp.reason}: check credentials")
                body: dict[str, Any] = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PrometheusError(f"{promql}: {type(exc).__name__}: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{promql}: {body.get('errorType')}: {body.get('error')}")
        data: dict[str, Any] = body["data"]
        return data

    async def query(self, promql: str) -> list[Sample]:
        """An instant query; returns the vector (a scalar result becomes one sample without labels)."""
        data = await self._api("/api/v1/query", promql, {"query": promql})
        if data["resultType"] == "scalar":
            ts, val = data["result"]
            return [Sample({}, float(val), float(ts))]
        if data["resultType"] != "vector":
            raise PrometheusError(f"{promql}: unexpected result type {data['resultType']}")
        return [Sample(dict(r["metric"]), float(r["value"][1]), float(r["value"][0])) for r in data["result"]]

    async def query_range(self, promql: str, start: float, end: float, step: float) -> list[Series]:
        """A range query; returns the matrix (one series per label set, points oldest first)."""
        form = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        data = await self._api("/api/v1/query_range", promql, form)
        if data["resultType"] != "matrix":
            raise PrometheusError(f"{promql}: unexpected result type {data['resultType']}")
        return [
            Series(dict(r["metric"]), tuple((float(t), float(v)) for t, v in r["values"]))
            for r in data["result"]
        ]

    async def rate_history(
        self, services: Mapping[tuple[str, str], str | None], until: float, span_s: float
    ) -> dict[tuple[str, str], list[tuple[float, float]]]:
        """The windows' request counts over `span_s` before `until`, at one window per step, from four range
        queries for the whole fleet: TF Serving's count where a series has it, else the agent's, by
        ModelService for its own replicas and by (namespace, model) on the pool pods, summed per
        ModelService. A pooled model name two ModelServices of one namespace share is left out (whose
        requests they were is not known)."""
        if not services:
            return {}
        w, step = self._window, max(1.0, round(self.window_s))
        end = until - step
        start = end - max(0.0, span_s - step)
        svc = f"{k.LABEL_NAMESPACE}, {k.LABEL_MODELSERVICE}"
        has_svc, in_pool = {k.LABEL_MODELSERVICE: "~.+"}, {k.LABEL_POOL: "~.+"}
        queries = {
            ("own", "tfs"): f"sum by ({svc}) (increase({selector(k.TFS_REQUEST_COUNT, **has_svc)}[{w}]))",
            ("own", "agent"): f"sum by ({svc}) (increase({selector(k.REQUESTS.name, **has_svc)}[{w}]))",
            ("pool", "tfs"): (
                f"sum by ({k.LABEL_NAMESPACE}, {k.TFS_LABEL_MODEL}) "
                f"(increase({selector(k.TFS_REQUEST_COUNT, **in_pool)}[{w}]))"
            ),
            ("pool", "agent"): (
                f"sum by ({k.LABEL_NAMESPACE}, {k.LABEL_MODEL}) "
                f"(increase({selector(k.REQUESTS.name, **in_pool)}[{w}]))"
            ),
        }
        keys = list(queries)
        got = await asyncio.gather(*(self.query_range(queries[q], start, end, step) for q in keys))
        counts: dict[tuple[str, str], dict[str, dict[float, float]]] = {}
        for (where, counter), series in zip(keys, got, strict=True):
            label = k.LABEL_MODELSERVICE if where == "own" else (
                k.TFS_LABEL_MODEL if counter == "tfs" else k.LABEL_MODEL
            )  # fmt: skip
            for one in series:
                at = (one.labels.get(k.LABEL_NAMESPACE, ""), one.labels.get(label, ""))
                found = counts.setdefault(at, {}).setdefault(f"{where}/{counter}", {})
                found.update({t: v for t, v in one.points if math.isfinite(v)})
        models = Counter((ns, m) for (ns, _), m in services.items() if m is not None)
        out: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for (ns, name), model in services.items():
            books = [("own", counts.get((ns, name), {}))]
            if model is not None and models[(ns, model)] == 1:
                books.append(("pool", counts.get((ns, model), {})))
            per_t: dict[float, float] = {}
            for where, series_of in books:
                for t, v in (series_of.get(f"{where}/tfs") or series_of.get(f"{where}/agent") or {}).items():
                    per_t[t] = per_t.get(t, 0.0) + v / self.window_s
            if per_t:
                out[(ns, name)] = sorted(per_t.items())
        return out

    async def _scalar(self, promql: str) -> float | None:
        """The single value of an aggregating query; None when there are no series (or NaN/Inf)."""
        samples = await self.query(promql)
        return _finite(samples[0].value) if samples else None

    # --- per ModelService ----------------------------------------------------------------------------

    async def service_metrics(
        self, namespace: str, name: str, pods: Sequence[PodRef] | None = None
    ) -> ServiceMetrics:
        try:
            if self.gpu_source in ("auto", "agent"):
                result = await self._agent_service(namespace, name, pods)
                if result.power_w is not None or self.gpu_source == "agent" or not pods:
                    return result
            if pods:
                return await self._dcgm_service(namespace, name, pods)
            return ServiceMetrics(namespace, name, missing=("pods",), window_s=self.window_s)
        except PrometheusError as exc:
            log.warning("metrics for %s/%s unavailable: %s", namespace, name, exc)
            return ServiceMetrics(namespace, name, missing=("prometheus",), window_s=self.window_s)

    # --- the whole fleet at once --------------------------------------------------------------------

    async def fleet_metrics(
        self, services: Mapping[tuple[str, str], Sequence[PodRef]]
    ) -> dict[tuple[str, str], ServiceMetrics]:
        """Every ModelService from one fixed set of queries, aggregated by (namespace, modelservice[, pod])
        and sliced here: the queries per tick do not grow with the fleet. Services without agent series
        fall back to dcgm-exporter one by one (plain TF Serving images only)."""
        if not services:
            return {}
        out: dict[tuple[str, str], ServiceMetrics] = {}
        try:
            if self.gpu_source in ("auto", "agent"):
                out = await self._agent_fleet(services)
            for (ns, name), pods in services.items():
                got = out.get((ns, name))
                if got is not None and (got.power_w is not None or self.gpu_source == "agent" or not pods):
                    continue
                if pods:
                    out[(ns, name)] = await self._dcgm_service(ns, name, pods)
                else:
                    out[(ns, name)] = ServiceMetrics(ns, name, missing=("pods",), window_s=self.window_s)
        except PrometheusError as exc:
            log.warning("fleet metrics unavailable: %s", exc)
            return {
                (ns, name): ServiceMetrics(ns, name, missing=("prometheus",), window_s=self.window_s)
                for ns, name in services
            }
        return out

    async def _agent_fleet(
        self, services: Mapping[tuple[str, str], Sequence[PodRef]]
    ) -> dict[tuple[str, str], ServiceMetrics]:
        w = self._window
        svc_labels = f"{k.LABEL_NAMESPACE}, {k.LABEL_MODELSERVICE}"
        pod_labels = f"{svc_labels}, {k.LABEL_POD}"
        has_svc = {k.LABEL_MODELSERVICE: "~.+"}
        power = selector(k.GPU_POWER.name, **has_svc)
        energy = selector(k.GPU_ENERGY.name, **has_svc)
        util = selector(k.GPU_UTILIZATION.name, **has_svc)
        per_pod = {
            "power": f"sum by ({pod_labels}) ({power})",
            "gpus": f"count by ({pod_labels}) ({power})",
            "stamp": f"min by ({pod_labels}) (timestamp({power}))",
            "pod_energy": f"sum by ({pod_labels}) ({energy})",
            "energy_window": f"sum by ({pod_labels}) (increase({energy}[{w}]))",
            "util_sum": f"sum by ({pod_labels}) ({util})",
            "util_count": f"count by ({pod_labels}) ({util})",
            "simulated": f"max by ({pod_labels}) ({selector(k.AGENT_SIMULATED.name, **has_svc)})",
        }
        per_svc = {
            key: re.sub(r"^sum\(", f"sum by ({svc_labels}) (", q)
            for key, q in self._traffic_queries(has_svc).items()
            if key != "latency_p95"
        }
        buckets = selector(k.TFS_REQUEST_LATENCY + "_bucket", **has_svc)
        per_svc["latency_p95"] = f"histogram_quantile(0.95, sum by ({svc_labels}, le) (rate({buckets}[{w}])))"
        r = await self._gather({**per_pod, **per_svc})

        def svc_of(s: Sample) -> tuple[str, str]:
            return (s.labels.get(k.LABEL_NAMESPACE, ""), s.labels.get(k.LABEL_MODELSERVICE, ""))

        by_svc: dict[tuple[str, str], dict[str, list[Sample]]] = {}
        for key, samples in r.items():
            for sample in samples:
                by_svc.setdefault(svc_of(sample), {}).setdefault(key, []).append(sample)
        out: dict[tuple[str, str], ServiceMetrics] = {}
        for (ns, name), pods in services.items():
            mine = by_svc.get((ns, name), {})
            wanted = {p.name for p in pods} if pods else None

            def rows(
                key: str, mine: dict[str, list[Sample]] = mine, only: set[str] | None = wanted
            ) -> list[Sample]:
                return [s for s in mine.get(key, []) if only is None or s.labels.get(k.LABEL_POD) in only]

            def total(key: str, agg: Callable[[list[float]], float] = sum) -> list[Sample]:
                got = rows(key)
                return [Sample({}, agg([s.value for s in got]), 0.0)] if got else []

            util_n = sum(s.value for s in rows("util_count"))
            assembled: dict[str, list[Sample]] = {
                "power": total("power"),
                "gpus": total("gpus"),
                "stamp": total("stamp", min),
                "energy_window": total("energy_window"),
                "utilization": (
                    [Sample({}, sum(s.value for s in rows("util_sum")) / util_n, 0.0)] if util_n else []
                ),
                **{key: mine.get(key, []) for key in per_svc},
            }
            pod_energy = {s.labels.get(k.LABEL_POD, ""): s.value for s in rows("pod_energy")}
            sim = _value(total("simulated", max))
            out[(ns, name)] = self._assemble(
                ns,
                name,
                assembled,
                source="prometheus/agent",
                energy_j=sum(pod_energy.values()) if pod_energy else None,
                pod_energy=pod_energy,
                simulated=None if sim is None else sim > 0,
                replicas=len(pod_energy),
                absent_pods=[f"pod:{p.name}" for p in pods or () if p.ready and p.name not in pod_energy],
            )
        return out

    async def pooled_metrics(
        self, models: Mapping[tuple[str, str], PooledModel]
    ) -> dict[tuple[str, str], ServiceMetrics]:
        """Every pooled model's part of its pool pods (metrics/pooled.py) from one fixed set of instant
        queries over every pool pod, aggregated by (namespace, pod[, model]): flat in the number of
        ModelServices. The counters' increase is taken between ticks by the ledger."""
        if not models:
            self._pools.forget((), ())  # no pool pod or model to keep; nothing to ask Prometheus
            return {}
        pods = f"{k.LABEL_NAMESPACE}, {k.LABEL_POD}"
        in_pool = {k.LABEL_POOL: "~.+"}
        power = selector(k.GPU_POWER.name, **in_pool)
        q = {
            "energy": f"sum by ({pods}) ({selector(k.GPU_ENERGY.name, **in_pool)})",
            "power": f"sum by ({pods}) ({power})",
            "gpus": f"count by ({pods}) ({power})",
            "stamp": f"min by ({pods}) (timestamp({power}))",
            "simulated": f"max by ({pods}) ({selector(k.AGENT_SIMULATED.name, **in_pool)})",
            "tfs": f"sum by ({pods}, {k.TFS_LABEL_MODEL}) ({selector(k.TFS_REQUEST_COUNT, **in_pool)})",
            "agent": f"sum by ({pods}, {k.LABEL_MODEL}) ({selector(k.REQUESTS.name, **in_pool)})",
            "busy": (
                f"sum by ({pods}, {k.LABEL_MODEL}) ({selector(k.REQUEST_DURATION.name + '_sum', **in_pool)})"
            ),
            "tfs_busy": (
                f"sum by ({pods}, {k.TFS_LABEL_MODEL}) "
                f"({selector(k.TFS_REQUEST_LATENCY + '_sum', **in_pool)}) * {k.TFS_LATENCY_UNIT_S}"
            ),
        }
        try:
            r = await self._gather(q)
        except PrometheusError as exc:
            log.warning("pooled metrics unavailable: %s", exc)
            r = {key: [] for key in q}

        def pod_of(s: Sample) -> tuple[str, str]:
            return (s.labels.get(k.LABEL_NAMESPACE, ""), s.labels.get(k.LABEL_POD, ""))

        def per_pod(key: str) -> dict[tuple[str, str], float]:
            return {pod_of(s): s.value for s in r[key] if math.isfinite(s.value)}

        def per_model(key: str, label: str) -> dict[tuple[str, str], dict[str, float]]:
            out: dict[tuple[str, str], dict[str, float]] = {}
            for s in r[key]:
                if math.isfinite(s.value):
                    out.setdefault(pod_of(s), {})[s.labels.get(label, "")] = s.value
            return out

        energy, watts, gpus, stamp, sim = (
            per_pod(x) for x in ("energy", "power", "gpus", "stamp", "simulated")
        )
        tfs, agent = per_model("tfs", k.TFS_LABEL_MODEL), per_model("agent", k.LABEL_MODEL)
        busy, tfs_busy = per_model("busy", k.LABEL_MODEL), per_model("tfs_busy", k.TFS_LABEL_MODEL)
        members: dict[tuple[str, str], dict[str, float]] = {}
        for pm in models.values():
            for ref in pm.pods:
                members.setdefault((ref.namespace, ref.name), {})[pm.model] = float(pm.memory_bytes)
        for key, loaded in members.items():
            if key not in stamp:
                self._pools.unreachable(*key)
                continue
            sample = PoolPodSample(
                at=stamp[key],
                energy_j=energy.get(key),
                power_w=watts.get(key),
                gpus=int(gpus.get(key, 0)),
                simulated=None if key not in sim else sim[key] > 0,
                requests=tfs.get(key, agent.get(key)),
                busy_s=busy.get(key, tfs_busy.get(key, {})),
                requests_kind="tfs" if key in tfs else "agent",
                busy_kind="agent" if key in busy or key not in tfs_busy else "tfs",
            )
            self._pools.observe(key[0], key[1], sample, loaded)
        self._pools.forget(members, models)
        now = self._clock()
        return {
            key: self._pools.reading(key[0], key[1], pm, now, "prometheus/agent")
            for key, pm in models.items()
        }

    def _traffic_queries(self, sel: dict[str, str]) -> dict[str, str]:
        w = self._window
        buckets = selector(k.TFS_REQUEST_LATENCY + "_bucket", **sel)
        return {
            "requests": f"sum(increase({selector(k.TFS_REQUEST_COUNT, **sel)}[{w}]))",
            "agent_requests": f"sum(increase({selector(k.REQUESTS.name, **sel)}[{w}]))",
            # The two windows before: a sustained rise is one that shows in all three.
            **{
                f"{key}_{i}": f"sum(increase({selector(metric, **sel)}[{w}] offset {i * self.window_s:g}s))"
                for key, metric in (("requests", k.TFS_REQUEST_COUNT), ("agent_requests", k.REQUESTS.name))
                for i in (1, 2)
            },
            "latency_p95": f"histogram_quantile(0.95, sum by (le) (rate({buckets}[{w}])))",
            "inflight": f"sum({selector(k.AGENT_INFLIGHT.name, **sel)})",
        }

    async def _gather(self, queries: dict[str, str]) -> dict[str, list[Sample]]:
        keys = list(queries)
        results = await asyncio.gather(*(self.query(queries[key]) for key in keys))
        return dict(zip(keys, results, strict=True))

    async def _agent_service(
        self, namespace: str, name: str, pods: Sequence[PodRef] | None
    ) -> ServiceMetrics:
        service = {k.LABEL_NAMESPACE: namespace, k.LABEL_MODELSERVICE: name}
        sel = dict(service)
        if pods:
            sel[k.LABEL_POD] = pods_regex(pods)
        w = self._window
        power = selector(k.GPU_POWER.name, **sel)
        energy = selector(k.GPU_ENERGY.name, **sel)
        q = {
            "power": f"sum({power})",
            "gpus": f"count({power})",
            "stamp": f"min(timestamp({power}))",
            "pod_energy": f"sum by ({k.LABEL_POD}) ({energy})",
            "energy_window": f"sum(increase({energy}[{w}]))",
            "utilization": f"avg({selector(k.GPU_UTILIZATION.name, **sel)})",
            "simulated": f"max({selector(k.AGENT_SIMULATED.name, **sel)})",
            # Traffic by the service label, not the current pods: after a scale-in the removed pods'
            # requests still count for the rest of the window (a pod list would under-read them).
            **self._traffic_queries(service),
        }
        r = await self._gather(q)
        pod_energy = {s.labels.get(k.LABEL_POD, ""): s.value for s in r["pod_energy"]}
        sim = _value(r["simulated"])
        # Pods the operator expects but Prometheus has no (fresh) series for: partial sums, say so.
        absent = [f"pod:{p.name}" for p in pods or () if p.ready and p.name not in pod_energy]
        return self._assemble(
            namespace,
            name,
            r,
            source="prometheus/agent",
            energy_j=sum(pod_energy.values()) if pod_energy else None,
            pod_energy=pod_energy,
            simulated=None if sim is None else sim > 0,
            replicas=len(pod_energy),
            absent_pods=absent,
        )

    async def _dcgm_service(self, namespace: str, name: str, pods: Sequence[PodRef]) -> ServiceMetrics:
        # dcgm-exporter writes the pod a GPU is allocated to as namespace/pod. Scraped with honor_labels
        # they stay so; through a ServiceMonitor without honorLabels (the GPU operator's) Prometheus moves
        # them to exported_namespace/exported_pod and puts the exporter's own pod in namespace/pod.
        # Each query reads both forms (a series has one of them for a given serving pod).
        regex = pods_regex(pods)
        sel = {k.LABEL_NAMESPACE: namespace, k.LABEL_POD: regex}
        exported = {k.DCGM_LABEL_EXPORTED_NAMESPACE: namespace, k.DCGM_LABEL_EXPORTED_POD: regex}

        def vector(metric: str) -> str:
            return f"({selector(metric, **sel)} or {selector(metric, **exported)})"

        def each(fn: str, metric: str) -> str:
            # Range functions need plain selectors: apply fn to each form, then join them.
            return f"({fn.format(selector(metric, **sel))} or {fn.format(selector(metric, **exported))})"

        w = self._window
        power = vector(k.DCGM_POWER)
        exported_pods = selector(k.DCGM_POWER, **exported)
        q = {
            "power": f"sum({power})",
            "gpus": f"count({power})",
            "pods": (
                f"count by ({k.LABEL_POD}) ({selector(k.DCGM_POWER, **sel)}) or label_replace("
                f'count by ({k.DCGM_LABEL_EXPORTED_POD}) ({exported_pods}), "{k.LABEL_POD}", "$1", '
                f'"{k.DCGM_LABEL_EXPORTED_POD}", "(.+)")'
            ),
            # timestamp() of a selector, not of an expression (that would be the evaluation time).
            "stamp": f"min({each('timestamp({})', k.DCGM_POWER)})",
            "energy_window": (
                f"sum({each('increase({}[' + w + '])', k.DCGM_ENERGY)}) * {k.DCGM_ENERGY_UNIT_J}"
            ),
            "utilization": f"avg({vector(k.DCGM_GPU_UTIL)}) * {k.DCGM_UTIL_UNIT_RATIO}",
            # TF Serving's metrics come from the pods' own scrape (agent or plain TF Serving).
            **self._traffic_queries({k.LABEL_NAMESPACE: namespace, k.LABEL_POD: pods_regex(pods)}),
        }
        r = await self._gather(q)
        reporting = {s.labels.get(k.LABEL_POD) for s in r["pods"]}
        # DCGM's counter runs since the driver loaded, not since the pod started: no per-service total.
        return self._assemble(
            namespace,
            name,
            r,
            source="prometheus/dcgm",
            energy_j=None,
            pod_energy={},
            simulated=False if r["power"] else None,
            replicas=len(r["pods"]),
            absent_pods=[f"pod:{p.name}" for p in pods if p.ready and p.name not in reporting],
            energy_not_applicable=True,
        )

    def _assemble(
        self,
        namespace: str,
        name: str,
        r: dict[str, list[Sample]],
        *,
        source: SourceKind,
        energy_j: float | None,
        pod_energy: dict[str, float],
        simulated: bool | None,
        replicas: int,
        absent_pods: list[str],
        energy_not_applicable: bool = False,
    ) -> ServiceMetrics:
        missing: list[str] = list(absent_pods)
        power = _value(r["power"])
        if power is None:
            missing.append("power")
        if energy_j is None and not energy_not_applicable:
            missing.append("energy")
        energy_window = _value(r["energy_window"])
        if energy_window is None:
            missing.append("energy_window")
        utilization = _value(r["utilization"])
        if utilization is None:
            missing.append("gpu_utilization")
        # TF Serving counts every request (REST and gRPC); the agent's own counter is the fallback.
        requests = _value(r["requests"])
        counter = "requests"
        if requests is None:
            requests, counter = _value(r["agent_requests"]), "agent_requests"
        if requests is None:
            missing.append("requests")
        rps = None if requests is None else requests / self.window_s
        history: list[float] = [] if rps is None else [rps]
        for i in (1, 2):
            earlier = _value(r.get(f"{counter}_{i}", []))
            if earlier is None or len(history) < i:
                break
            history.append(earlier / self.window_s)
        jpr = None
        if energy_window is not None and requests is not None and requests > 0:
            jpr = energy_window / requests
        p95 = _value(r["latency_p95"])
        inflight = _value(r["inflight"])
        latency_ms = None if p95 is None else p95 * k.TFS_LATENCY_UNIT_S * 1000.0
        stamp = _value(r["stamp"])
        stale = stamp is None or bool(absent_pods) or self._clock() - stamp > self.stale_after_s
        gpus = _value(r["gpus"])
        return ServiceMetrics(
            namespace=namespace,
            name=name,
            power_w=power,
            energy_j=energy_j,
            energy_window_j=energy_window,
            requests_per_s=rps,
            joules_per_request=jpr,
            gpu_utilization=utilization,
            latency_p95_ms=latency_ms,
            inflight_requests=inflight,
            rate_history=tuple(history),
            replicas_reporting=replicas,
            gpus=None if gpus is None else int(gpus),
            simulated=simulated,
            pod_energy_j=pod_energy,
            window_s=self.window_s,
            sampled_at=stamp,
            stale=stale,
            missing=tuple(missing),
            source=source,
        )


def _value(samples: list[Sample]) -> float | None:
    return _finite(samples[0].value) if samples else None
