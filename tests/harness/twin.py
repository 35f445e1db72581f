"""A load-driven digital twin of the serving pods on the local control plane (SIMULATED metrics).

kwok runs no containers, so nothing on the local control plane serves requests or draws power. The twin
fills that gap: it follows where greenserve's pods really are (it lists them from the API server each
tick), spreads each ModelService's request rate from a load schedule over its Ready pods, and exports what
each pod's agent would export — GPU power, the energy counter, utilization, the request counter — under the
agent's metric names (greenserve.contract), with the target labels Prometheus would add. A real Prometheus
scrapes it and the operator reads it through its normal Prometheus source.

Serving: by default every request is served as it arrives (utilization capped at 1, nothing queues). With
`queueing` each ModelService has one FIFO in front of its Ready pods: they complete at most their capacity,
the rest waits (a client gives up once the queue ahead of it exceeds `max_wait_s` of capacity; those
count as dropped), the request
counter counts completions as TF Serving does, and each pod's in-flight gauge holds its share of the queue
plus the requests in service (Little's law), as the agent's would.

Power per GPU follows the documented model in greenserve.policy.energy :
resident-idle power plus the serving increment times utilization. Every series carries simulated="true".
Cluster-level series (GPU nodes, node and GPU power including idle GPUs, cumulative energy) let a test or
the demo report GPU-node-hours and simulated energy.

Load schedules: `ns/name=t0:rps0,t1:rps1,...` (piecewise constant from each t, seconds since start), or a
JSON file mapping "ns/name" to such a list, or a trace binned by greenserve.simulator.traces.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import ValidationError

from greenserve import contract as k
from greenserve.api import constants as c
from greenserve.api.v1alpha1 import parse_spec
from greenserve.cluster.client import MODELSERVICES, NODES, PODS, KubeClient
from greenserve.manifests.profile import service_profile
from greenserve.policy.energy import NodePowerModel, gpu_model_for

log = logging.getLogger("greenserve.twin")
SIM = "true"


@dataclass(frozen=True)
class Schedule:
    """Piecewise-constant request rate: rate[i] holds from times[i] (seconds since start) on."""

    times: tuple[float, ...]
    rates: tuple[float, ...]

    def rate(self, t: float) -> float:
        i = bisect.bisect_right(self.times, t) - 1
        return self.rates[i] if i >= 0 else 0.0

    @classmethod
    def parse(cls, text: str) -> Schedule:
        points = sorted((float(a), float(b)) for a, b in (p.split(":") for p in text.split(",") if p))
        return cls(tuple(p[0] for p in points), tuple(p[1] for p in points))


@dataclass
class PodState:
    namespace: str
    modelservice: str
    name: str
    node: str
    gpus: int
    product: str
    energy_j: float = 0.0
    requests: float = 0.0
    power_w: float = 0.0
    utilization: float = 0.0
    inflight: float = 0.0


@dataclass
class ClusterState:
    gpu_nodes: int = 0
    power_w: float = 0.0
    energy_j: float = 0.0
    gpu_node_seconds: float = 0.0
    dropped_requests: float = 0.0


@dataclass
class Twin:
    schedules: Mapping[str, Schedule]
    node_model: NodePowerModel = field(default_factory=NodePowerModel)
    clock: Callable[[], float] = time.monotonic
    pods: dict[str, PodState] = field(default_factory=dict)
    cluster: ClusterState = field(default_factory=ClusterState)
    queueing: bool = False
    max_wait_s: float = 60.0
    queues: dict[str, float] = field(default_factory=dict)  # ns/name -> requests waiting
    started: float | None = None
    _last: float | None = None

    def _serve(self, svc: str, rate: float, capacity: float, dt: float) -> tuple[float, float]:
        """(completions per second, requests left waiting) of one ModelService over the last `dt`."""
        if not self.queueing:
            return rate, 0.0
        waiting = self.queues.get(svc, 0.0)
        if dt <= 0:
            return min(rate, capacity), waiting
        served = min(waiting + rate * dt, capacity * dt)
        waiting += rate * dt - served
        # FIFO: the newest request waits about queue / capacity; clients beyond max_wait_s give up.
        limit = capacity * self.max_wait_s
        if waiting > limit:
            self.cluster.dropped_requests += waiting - limit
            waiting = limit
        self.queues[svc] = waiting
        return served / dt, waiting

    def step(
        self,
        pods: Iterable[Mapping[str, Any]],
        nodes: Iterable[Mapping[str, Any]],
        capacity_rps: Mapping[str, float],
    ) -> None:
        """Advance to now: integrate the last interval's power, then take the cluster as it is now."""
        now = self.clock()
        if self.started is None:
            self.started = now
        dt = 0.0 if self._last is None else max(0.0, now - self._last)
        self._last = now
        for st in self.pods.values():
            st.energy_j += st.power_w * dt
        self.cluster.energy_j += self.cluster.power_w * dt
        self.cluster.gpu_node_seconds += self.cluster.gpu_nodes * dt

        live: dict[str, PodState] = {}
        by_service: dict[str, list[PodState]] = {}
        for pod in pods:
            meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
            ready = any(
                x.get("type") == "Ready" and x.get("status") == "True" for x in status.get("conditions") or []
            )
            if not ready or meta.get("deletionTimestamp") or not spec.get("nodeName"):
                continue
            svc = meta.get("labels", {}).get(c.LABEL_MODELSERVICE)
            if not svc:
                continue
            key = f"{meta['namespace']}/{meta['name']}"
            limits = (spec.get("containers") or [{}])[0].get("resources", {}).get("limits", {})
            selector = spec.get("nodeSelector") or {}
            st = self.pods.get(key) or PodState(
                meta["namespace"],
                svc,
                meta["name"],
                spec["nodeName"],
                int(limits.get(c.GPU_RESOURCE, 0) or 0),
                selector.get(c.GPU_PRODUCT_LABEL, ""),
            )
            live[key] = st
            by_service.setdefault(f"{meta['namespace']}/{svc}", []).append(st)
        self.pods = live

        t = now - self.started
        for svc, members in by_service.items():
            schedule = self.schedules.get(svc)
            rate = schedule.rate(t) if schedule else 0.0
            cap = capacity_rps.get(svc) or 1.0
            served_rps, waiting = self._serve(svc, rate, cap * len(members), dt)
            share = served_rps / len(members)
            for st in members:
                st.requests += share * dt
                st.utilization = min(1.0, share / cap)
                st.inflight = waiting / len(members) + share / cap
                gpu = gpu_model_for(st.product)
                st.power_w = st.gpus * gpu.power_w(st.utilization, loaded=True)

        gpu_nodes = [n for n in nodes if (n.get("status") or {}).get("allocatable", {}).get(c.GPU_RESOURCE)]
        used_gpus: dict[str, int] = {}
        for st in self.pods.values():
            used_gpus[st.node] = used_gpus.get(st.node, 0) + st.gpus
        power = sum(st.power_w for st in self.pods.values())
        for node in gpu_nodes:
            name = node["metadata"]["name"]
            total = int(node["status"]["allocatable"][c.GPU_RESOURCE])
            product = node["metadata"].get("labels", {}).get(c.GPU_PRODUCT_LABEL, "")
            idle = max(0, total - used_gpus.get(name, 0))
            power += self.node_model.base_w + idle * gpu_model_for(product).power_w(0.0, loaded=False)
        self.cluster.gpu_nodes = len(gpu_nodes)
        self.cluster.power_w = power


class TwinCollector(Collector):
    def __init__(self, twin: Twin) -> None:
        self.twin = twin

    def collect(self) -> Iterable[Any]:
        labels = [
            k.LABEL_GPU,
            k.LABEL_UUID,
            k.LABEL_SIMULATED,
            k.LABEL_NAMESPACE,
            k.LABEL_POD,
            k.LABEL_NODE,
            k.LABEL_MODELSERVICE,
        ]
        power = GaugeMetricFamily(k.GPU_POWER.name, k.GPU_POWER.help + " (twin)", labels=labels)
        energy = CounterMetricFamily(k.GPU_ENERGY.family, k.GPU_ENERGY.help + " (twin)", labels=labels)
        util = GaugeMetricFamily(k.GPU_UTILIZATION.name, k.GPU_UTILIZATION.help + " (twin)", labels=labels)
        sim = GaugeMetricFamily(
            k.AGENT_SIMULATED.name,
            k.AGENT_SIMULATED.help,
            labels=[k.LABEL_NAMESPACE, k.LABEL_POD, k.LABEL_MODELSERVICE],
        )
        inflight = GaugeMetricFamily(
            k.AGENT_INFLIGHT.name,
            k.AGENT_INFLIGHT.help + " (twin)",
            labels=[k.LABEL_NAMESPACE, k.LABEL_POD, k.LABEL_MODELSERVICE],
        )
        reqs = CounterMetricFamily(
            k.REQUESTS.family,
            k.REQUESTS.help + " (twin)",
            labels=[k.LABEL_MODEL, "code", k.LABEL_NAMESPACE, k.LABEL_POD, k.LABEL_MODELSERVICE],
        )
        for st in self.twin.pods.values():
            gpus = max(st.gpus, 1)
            for i in range(gpus):
                lv = [str(i), f"GPU-twin-{st.name}-{i}", SIM, st.namespace, st.name, st.node, st.modelservice]
                power.add_metric(lv, st.power_w / gpus)
                energy.add_metric(lv, st.energy_j / gpus)
                util.add_metric(lv, st.utilization)
            sim.add_metric([st.namespace, st.name, st.modelservice], 1.0)
            inflight.add_metric([st.namespace, st.name, st.modelservice], st.inflight)
            reqs.add_metric([st.modelservice, "200", st.namespace, st.name, st.modelservice], st.requests)
        yield from (power, energy, util, sim, inflight, reqs)
        cl = self.twin.cluster
        yield GaugeMetricFamily(
            "greenserve_twin_gpu_nodes", "GPU nodes in the cluster (simulated twin).", value=cl.gpu_nodes
        )
        yield GaugeMetricFamily(
            "greenserve_twin_cluster_power_watts",
            "Simulated power of all GPU nodes: node base, idle and serving GPUs.",
            value=cl.power_w,
        )
        yield CounterMetricFamily(
            "greenserve_twin_cluster_energy_joules",
            "Simulated energy of all GPU nodes since the twin started.",
            value=cl.energy_j,
        )
        yield CounterMetricFamily(
            "greenserve_twin_requests_dropped",
            "Requests whose clients gave up waiting in a queue (simulated twin, --queueing).",
            value=cl.dropped_requests,
        )
        yield CounterMetricFamily(
            "greenserve_twin_gpu_node_seconds",
            "GPU-node-seconds since the twin started.",
            value=cl.gpu_node_seconds,
        )


async def _capacities(kube: KubeClient) -> dict[str, float]:
    """Per-replica capacity (req/s at 100% utilization): the service rate the operator's adapter takes
    from each ModelService's request-rate target (manifests/profile.py); 100 req/s for other metrics."""
    out: dict[str, float] = {}
    for msvc in await kube.list_objects(MODELSERVICES):
        key = f"{msvc['metadata']['namespace']}/{msvc['metadata']['name']}"
        try:
            rate = service_profile(parse_spec(dict(msvc.get("spec") or {}))).service_rate_rps
        except ValidationError:
            rate = None  # the operator reports it and scales nothing
        out[key] = rate or 100.0
    return out


def _mtime(path: Path | None) -> float | None:
    # A tiny local stat per tick; not worth a thread.
    return path.stat().st_mtime if path is not None and path.exists() else None


async def run(
    twin: Twin,
    kube: KubeClient,
    interval_s: float,
    duration_s: float | None,
    schedule_file: Path | None = None,
) -> None:
    deadline = None if duration_s is None else time.monotonic() + duration_s
    selector = f"{c.LABEL_MANAGED_BY}={c.MANAGED_BY}"
    mtime = _mtime(schedule_file)
    while deadline is None or time.monotonic() < deadline:
        current = _mtime(schedule_file)
        if schedule_file is not None and current is not None and current != mtime:
            # A changed schedule file takes effect at once (tests and demos drive the load this way);
            # its times count from this moment.
            mtime = current
            twin.schedules = load_schedules([], schedule_file)
            twin.started = twin.clock()
            log.info("load schedule reloaded: %s", {k: v.rates for k, v in twin.schedules.items()})
        try:
            pods = await kube.list_objects(PODS, label_selector=selector)
            nodes = await kube.list_objects(NODES)
            twin.step(pods, nodes, await _capacities(kube))
        except Exception as err:  # keep serving the last state through API hiccups
            log.warning("twin step failed: %s", err)
        await asyncio.sleep(interval_s)


def load_schedules(specs: list[str], file: Path | None) -> dict[str, Schedule]:
    out: dict[str, Schedule] = {}
    if file is not None:
        for key, text in json.loads(file.read_text()).items():
            out[key] = Schedule.parse(text)
    for spec in specs:
        key, _, text = spec.partition("=")
        out[key] = Schedule.parse(text)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tests/harness/twin.py", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    parser.add_argument("--port", type=int, default=9500)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--schedule", action="append", default=[], help="ns/name=t0:rps,t1:rps,...")
    parser.add_argument("--schedule-file", type=Path, default=None)
    parser.add_argument(
        "--queueing", action="store_true", help="pods serve at most their capacity; the rest queues"
    )
    parser.add_argument("--max-wait-s", type=float, default=60.0, help="clients give up after this wait")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s twin %(levelname)s %(message)s")
    twin = Twin(
        load_schedules(args.schedule, args.schedule_file), queueing=args.queueing, max_wait_s=args.max_wait_s
    )
    registry = CollectorRegistry()
    registry.register(TwinCollector(twin))
    start_http_server(args.port, addr=args.address, registry=registry)
    log.info("serving SIMULATED metrics on %s:%d for %s", args.address, args.port, sorted(twin.schedules))

    async def _main() -> None:
        async with KubeClient() as kube:
            await run(twin, kube, args.interval, args.duration, args.schedule_file)

    asyncio.run(_main())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
