"""MetricsSource that scrapes the agents' ``/metrics`` directly (no Prometheus in the cluster).

The operator passes the pods (with IPs) it already knows from its index; each call scrapes them
concurrently and parses the exposition with prometheus_client's parser. Gauges (power, utilization) come
from the current scrape; rates (requests per second, joules per request, latency) need two scrapes of the
same pod, so they are None on the first call for a pod and filled from the second on. A pod that does not
answer is listed in ``missing`` as ``pod:<name>`` and left out of the sums; it never counts as zero.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from greenserve import contract as k
from greenserve.metrics.pooled import PoolLedger, PoolPodSample
from greenserve.metrics.types import PodRef, PooledModel, ServiceMetrics
from greenserve.policy.energy import counter_delta

# ModelServices scraped at once by a fleet read (each scrapes its pods concurrently).
FLEET_CONCURRENCY = 16

log = logging.getLogger(__name__)


@dataclass
class PodScrape:
    """What one scrape of one agent says, reduced to what the operator uses."""

    at: float
    power_w: float | None = None
    energy_j: float | None = None
    utilization: float | None = None
    gpus: int = 0
    simulated: bool | None = None
    requests: float | None = None  # TF Serving's request_count, else the agent's requests_total
    inflight: float | None = None  # the agent's in-flight gauge
    latency_buckets: dict[float, float] = field(default_factory=dict)  # le (us) -> cumulative count
    # Per model (a shared pool pod serves several; metrics/pooled.py): requests (TF Serving's counter,
    # else the agent's; None without either) and busy seconds (the agent's request durations, else TF
    # Serving's latency sum).
    model_requests: dict[str, float] | None = None
    model_busy_s: dict[str, float] = field(default_factory=dict)
    model_requests_kind: str = ""  # "tfs" or "agent": which counters model_requests are
    model_busy_kind: str = ""


def parse_exposition(text: str, at: float) -> PodScrape:
    out = PodScrape(at=at)
    power: list[float] = []
    energy: list[float] = []
    util: list[float] = []
    tfs_requests: float | None = None
    agent_requests: float | None = None
    by_model: dict[str, dict[str, float]] = {"tfs": {}, "agent": {}, "busy": {}, "tfs_busy": {}}
    declared = {"tfs": False, "agent": False}

    def add(book: str, model: str | None, value: float) -> None:
        if model is not None:
            by_model[book][model] = by_model[book].get(model, 0.0) + value

    for family in text_string_to_metric_families(text):
        # A declared request counter without series means no request yet: a measured zero.
        if family.name == k.TFS_REQUEST_COUNT and tfs_requests is None:
            tfs_requests = 0.0
            declared["tfs"] = True
        elif family.name == k.REQUESTS.family and agent_requests is None:
            agent_requests = 0.0
            declared["agent"] = True
        for s in family.samples:
            name, labels, value = s.name, s.labels, s.value
            if name == k.GPU_POWER.name:
                power.append(value)
                out.simulated = labels.get(k.LABEL_SIMULATED) == "true"
            elif name == k.GPU_ENERGY.name:
                energy.append(value)
            elif name == k.GPU_UTILIZATION.name:
                util.append(value)
            elif name == k.AGENT_SIMULATED.name:
                out.simulated = value > 0
            elif name == k.AGENT_INFLIGHT.name:
                out.inflight = (out.inflight or 0.0) + value
            # prometheus_client's parser names a counter's samples `<family>_total` even when the
            # exposition (TF Serving's) has no suffix.
            elif family.name == k.TFS_REQUEST_COUNT and name.startswith(k.TFS_REQUEST_COUNT):
                tfs_requests = (tfs_requests or 0.0) + value
                add("tfs", labels.get(k.TFS_LABEL_MODEL), value)
            elif name == k.REQUESTS.name:
                agent_requests = (agent_requests or 0.0) + value
                add("agent", labels.get(k.LABEL_MODEL), value)
            elif name == k.REQUEST_DURATION.name + "_sum":
                add("busy", labels.get(k.LABEL_MODEL), value)
            elif name == k.TFS_REQUEST_LATENCY + "_sum":
                add("tfs_busy", labels.get(k.TFS_LABEL_MODEL), value * k.TFS_LATENCY_UNIT_S)
            elif name == k.TFS_REQUEST_LATENCY + "_bucket":
                le = float(labels["le"])
                out.latency_buckets[le] = out.latency_buckets.get(le, 0.0) + value
    out.power_w = sum(power) if power else None
    out.energy_j = sum(energy) if energy else None
    out.utilization = sum(util) / len(util) if util else None
    out.gpus = len(power)
    out.requests = tfs_requests if tfs_requests is not None else agent_requests
    if declared["tfs"]:
        out.model_requests, out.model_requests_kind = by_model["tfs"], "tfs"
    elif declared["agent"]:
        out.model_requests, out.model_requests_kind = by_model["agent"], "agent"
    if by_model["busy"] or not by_model["tfs_busy"]:
        out.model_busy_s, out.model_busy_kind = by_model["busy"], "agent"
    else:
        out.model_busy_s, out.model_busy_kind = by_model["tfs_busy"], "tfs"
    return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative ``{le: count}``; None without observations."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # the quantile lies in the +Inf bucket: the highest finite bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return None


class ScrapeSource:
    def __init__(
        self,
        *,
        stale_after_s: float = 120.0,
        timeout_s: float = 3.0,
        scheme: str = "http",
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stale_after_s = stale_after_s
        self.scheme = scheme
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._last: dict[tuple[str, str], PodScrape] = {}
        self._known_pods: dict[tuple[str, str], PodRef] = {}
        self._members: dict[tuple[str, str], set[tuple[str, str]]] = {}
        # The last rates per service, newest first: each call's window follows the previous one's.
        self._rates: dict[tuple[str, str], tuple[float, ...]] = {}
        self._pools = PoolLedger(stale_after_s)

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    async def scrape(self, pod: PodRef) -> PodScrape | None:
        if not pod.ip:
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
        url = f"{self.scheme}://{host}:{pod.metrics_port}{k.AGENT_METRICS_PATH}"
        try:
            async with self._session.get(url, timeout=self._timeout) as resp:
                if resp.status != 200:
                    log.info("scrape %s/%s: HTTP %d", pod.namespace, pod.name, resp.status)
                    return None
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("scrape %s/%s failed: %s", pod.namespace, pod.name, exc)
            return None
        try:
            return parse_exposition(text, self._clock())
        except ValueError as exc:
            log.warning("scrape %s/%s: unparsable exposition: %s", pod.namespace, pod.name, exc)
            return None

    async def fleet_metrics(
        self, services: Mapping[tuple[str, str], Sequence[PodRef]]
    ) -> dict[tuple[str, str], ServiceMetrics]:
        """Direct scraping has no aggregate to ask: one scrape per pod, at most `FLEET_CONCURRENCY`
        ModelServices at a time over the one connection pool."""
        gate = asyncio.Semaphore(FLEET_CONCURRENCY)

        async def one(key: tuple[str, str], pods: Sequence[PodRef]) -> ServiceMetrics:
            async with gate:
                return await self.service_metrics(key[0], key[1], pods)

        keys = list(services)
        got = await asyncio.gather(*(one(key, services[key]) for key in keys))
        return dict(zip(keys, got, strict=True))

    async def rate_history(
        self, services: Mapping[tuple[str, str], str | None], until: float, span_s: float
    ) -> dict[tuple[str, str], list[tuple[float, float]]]:
        """None: a scrape sees only the counters' current values (the rise history refills as it runs)."""
        return {}

    async def pooled_metrics(
        self, models: Mapping[tuple[str, str], PooledModel]
    ) -> dict[tuple[str, str], ServiceMetrics]:
        """Every pooled model's part of its pool pods (metrics/pooled.py): one scrape per pool pod."""
        members: dict[tuple[str, str], dict[str, float]] = {}
        pods: dict[tuple[str, str], PodRef] = {}
        for pm in models.values():
            for ref in pm.pods:
                pods[(ref.namespace, ref.name)] = ref
                members.setdefault((ref.namespace, ref.name), {})[pm.model] = float(pm.memory_bytes)
        keys = list(pods)
        scrapes = await asyncio.gather(*(self.scrape(pods[key]) for key in keys))
        for key, sc in zip(keys, scrapes, strict=True):
            if sc is None:
                self._pools.unreachable(*key)
                continue
            sample = PoolPodSample(
                at=sc.at,
                energy_j=sc.energy_j,
                power_w=sc.power_w,
                gpus=sc.gpus,
                simulated=sc.simulated,
                requests=sc.model_requests,
                busy_s=sc.model_busy_s,
                requests_kind=sc.model_requests_kind,
                busy_kind=sc.model_busy_kind,
            )
            self._pools.observe(key[0], key[1], sample, members[key])
        self._pools.forget(keys, models)
        now = self._clock()
        return {key: self._pools.reading(key[0], key[1], pm, now, "scrape") for key, pm in models.items()}

    async def service_metrics(
        self, namespace: str, name: str, pods: Sequence[PodRef] | None = None
    ) -> ServiceMetrics:
        if not pods:
            # Without a pod list there is nothing to scrape: report it, don't guess.
            return ServiceMetrics(namespace, name, missing=("pods",))
        for pod in pods:
            self._known_pods[(pod.namespace, pod.name)] = pod
        scrapes = await asyncio.gather(*(self.scrape(p) for p in pods))
        missing: list[str] = []
        now: dict[str, PodScrape] = {}
        pairs: list[tuple[PodScrape, PodScrape]] = []
        for pod, sc in zip(pods, scrapes, strict=True):
            key = (pod.namespace, pod.name)
            if sc is None:
                if pod.ready:  # a replica still warming up has nothing to say yet
                    missing.append(f"pod:{pod.name}")
                continue
            now[pod.name] = sc
            prev = self._last.get(key)
            if prev is not None and sc.at > prev.at:
                pairs.append((prev, sc))
            self._last[key] = sc
        # Forget this service's pods that are gone, so their state does not grow without bound.
        alive = {(p.namespace, p.name) for p in pods}
        for key in self._members.get((namespace, name), set()) - alive:
            self._last.pop(key, None)
            self._known_pods.pop(key, None)
        self._members[(namespace, name)] = alive
        reading = self._assemble(namespace, name, now, pairs, missing)
        if reading.requests_per_s is None:
            self._rates.pop((namespace, name), None)  # a gap breaks the run of adjacent windows
            return reading
        history = (reading.requests_per_s, *self._rates.get((namespace, name), ()))[:3]
        self._rates[(namespace, name)] = history
        return replace(reading, rate_history=history)

    def _assemble(
        self,
        namespace: str,
        name: str,
        now: dict[str, PodScrape],
        pairs: list[tuple[PodScrape, PodScrape]],
        missing: list[str],
    ) -> ServiceMetrics:
        def total(values: Iterable[float | None]) -> float | None:
            got = [v for v in values if v is not None]
            return sum(got) if got else None

        power = total(s.power_w for s in now.values())
        pod_energy = {pod: s.energy_j for pod, s in now.items() if s.energy_j is not None}
        utils = [s.utilization for s in now.values() if s.utilization is not None]
        energy_window = requests = window = None
        latency: dict[float, float] = {}
        if pairs:
            energy_window = total(
                counter_delta(a.energy_j, b.energy_j)
                for a, b in pairs
                if a.energy_j is not None and b.energy_j is not None
            )
            # Request counters appear with the first request (TF Serving creates cells lazily): a series
            # absent from the earlier scrape started from 0 since.
            requests = total(
                counter_delta(a.requests or 0.0, b.requests) for a, b in pairs if b.requests is not None
            )
            window = sum(b.at - a.at for a, b in pairs) / len(pairs)
            for a, b in pairs:
                for le, count in b.latency_buckets.items():
                    latency[le] = latency.get(le, 0.0) + counter_delta(a.latency_buckets.get(le, 0.0), count)
        rps = None if requests is None or not window else requests / window
        jpr = energy_window / requests if energy_window is not None and requests else None
        p95 = histogram_quantile(0.95, latency) if latency else None
        for field_name, value in (
            ("power", power),
            ("energy", total(pod_energy.values())),
            ("gpu_utilization", utils or None),
        ):
            if value is None:
                missing.append(field_name)
        if not pairs:
            missing.extend(("energy_window", "requests"))
        elif requests is None:
            missing.append("requests")
        sims = {s.simulated for s in now.values() if s.simulated is not None}
        stamp = min((s.at for s in now.values()), default=None)
        return ServiceMetrics(
            namespace=namespace,
            name=name,
            power_w=power,
            energy_j=total(pod_energy.values()),
            energy_window_j=energy_window,
            requests_per_s=rps,
            joules_per_request=jpr,
            gpu_utilization=sum(utils) / len(utils) if utils else None,
            latency_p95_ms=None if p95 is None else p95 * k.TFS_LATENCY_UNIT_S * 1000.0,
            inflight_requests=total(s.inflight for s in now.values()),
            replicas_reporting=len(now),
            gpus=sum(s.gpus for s in now.values()) if now else None,
            simulated=(True in sims) if sims else None,
            pod_energy_j=pod_energy,
            window_s=window or 0.0,
            sampled_at=stamp,
            stale=stamp is None
            or any(m.startswith("pod:") for m in missing)
            or self._clock() - stamp > self.stale_after_s,
            missing=tuple(missing),
            source="scrape",
        )
