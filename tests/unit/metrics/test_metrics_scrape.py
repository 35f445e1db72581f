"""ScrapeSource against agents' real exposition (the agent's collector over a fake NVML port)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from greenserve import contract as k
from greenserve.metrics.scrape import ScrapeSource, histogram_quantile, parse_exposition
from greenserve.metrics.types import PodRef
from greenserve_agent.collectors import GpuCollector, GpuSampler
from greenserve_agent.local_backend import TfsMetrics
from greenserve_agent.nvml import ClockKind, GpuDevice, MemoryInfo, Utilization
from support.http import local_server


@dataclass
class Dev:
    idx: int
    power: int
    energy: int = 0

    @property
    def index(self) -> int:
        return self.idx

    def uuid(self) -> str:
        return f"GPU-{self.idx}"

    def name(self) -> str:
        return "NVIDIA L4"

    def power_mw(self) -> int:
        return self.power

    def total_energy_mj(self) -> int:
        return self.energy

    def utilization(self) -> Utilization:
        return Utilization(50, 10)

    def memory(self) -> MemoryInfo:
        return MemoryInfo(1, 2)

    def clock_mhz(self, kind: ClockKind) -> int:
        return 1000

    def power_limit_mw(self) -> int:
        return 72_000


class Port:
    simulated = False

    def __init__(self, devs: Sequence[Dev]) -> None:
        self.devs = list(devs)

    def devices(self) -> Sequence[GpuDevice]:
        return self.devs

    def shutdown(self) -> None:
        pass


class FakeAgent:
    """Serves what the real agent serves: the GPU collector's output plus TF Serving's request metrics."""

    def __init__(self, devs: Sequence[Dev]) -> None:
        self.devs = list(devs)
        self.registry = CollectorRegistry()
        self.sampler = GpuSampler(Port(self.devs))
        self.sampler.sample()
        self.registry.register(GpuCollector(self.sampler))
        self.tfs = TfsMetrics()
        self.up = True
        self.inflight: float | None = None  # the agent's in-flight gauge, when set

    def text(self) -> str:
        extra = ""
        if self.inflight is not None:
            g = k.AGENT_INFLIGHT.name
            extra = f"# TYPE {g} gauge\n{g} {self.inflight}\n"
        return generate_latest(self.registry).decode() + self.tfs.render() + extra

    async def handle(self, _r: web.Request) -> web.Response:
        if not self.up:
            raise web.HTTPServiceUnavailable()
        return web.Response(text=self.text())


@pytest.fixture
async def agents() -> AsyncIterator[list[tuple[FakeAgent, PodRef]]]:
    out = []
    async with AsyncExitStack() as servers:
        for i, devs in enumerate(([Dev(0, 30_000)], [Dev(0, 40_000), Dev(1, 50_000)])):
            agent = FakeAgent(devs)
            app = web.Application()
            app.router.add_get("/metrics", agent.handle)
            port = await servers.enter_async_context(local_server(app))
            out.append((agent, PodRef("ml", f"svc-{i}", ip="127.0.0.1", node=f"n{i}", metrics_port=port)))
        yield out


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


async def test_first_scrape_gives_gauges_and_reports_rates_missing(
    agents: list[tuple[FakeAgent, PodRef]],
) -> None:
    src = ScrapeSource()
    try:
        m = await src.service_metrics("ml", "svc", [p for _, p in agents])
    finally:
        await src.close()
    assert m.power_w == pytest.approx(120.0)
    assert m.inflight_requests is None  # no agent gauge: unknown, not an empty queue
    assert m.gpus == 3 and m.replicas_reporting == 2
    assert m.gpu_utilization == pytest.approx(0.5)
    assert m.requests_per_s is None and m.joules_per_request is None
    assert "requests" in m.missing and "energy_window" in m.missing
    assert m.stale is False and m.simulated is False


async def test_second_scrape_gives_rates_and_joules_per_request(
    agents: list[tuple[FakeAgent, PodRef]],
) -> None:
    clock = Clock()
    src = ScrapeSource(clock=clock)
    pods = [p for _, p in agents]
    try:
        await src.service_metrics("ml", "svc", pods)
        (a, _), (b, _) = agents
        a.devs[0].energy += 30_000  # 30 J
        b.devs[0].energy += 40_000
        b.devs[1].energy += 50_000
        for _ in range(6):
            a.tfs.record("m", "OK", "predict", 1500.0)
        for _ in range(4):
            b.tfs.record("m", "OK", "predict", 90_000.0)
        clock.t += 10.0
        m = await src.service_metrics("ml", "svc", pods)
    finally:
        await src.close()
    assert m.energy_window_j == pytest.approx(120.0)
    assert m.requests_per_s == pytest.approx(1.0)
    assert m.joules_per_request == pytest.approx(12.0)
    assert m.window_s == pytest.approx(10.0)
    assert m.energy_j == pytest.approx(120.0)  # counters start at the agent's first reading
    assert m.pod_energy_j == {"svc-0": pytest.approx(30.0), "svc-1": pytest.approx(90.0)}
    # p95 of 6 fast (1.5 ms) and 4 slow (90 ms) requests lies in the slow requests' bucket.
    assert m.latency_p95_ms is not None and 50 < m.latency_p95_ms < 125
    assert m.missing == ()


async def test_rates_of_successive_windows_are_kept_newest_first(
    agents: list[tuple[FakeAgent, PodRef]],
) -> None:
    clock = Clock()
    src = ScrapeSource(clock=clock)
    pods = [p for _, p in agents]
    (a, _), _ = agents
    histories = []
    try:
        await src.service_metrics("ml", "svc", pods)
        for n in (10, 20, 30, 40):
            for _ in range(n):
                a.tfs.record("m", "OK", "predict", 1000.0)
            clock.t += 10.0
            histories.append((await src.service_metrics("ml", "svc", pods)).rate_history)
    finally:
        await src.close()
    assert histories[0] == (pytest.approx(1.0),)
    assert histories[-1] == (pytest.approx(4.0), pytest.approx(3.0), pytest.approx(2.0))


async def test_in_flight_gauges_add_up_over_the_replicas(agents: list[tuple[FakeAgent, PodRef]]) -> None:
    (a, _), (b, _) = agents
    a.inflight, b.inflight = 3.0, 4.0
    src = ScrapeSource()
    try:
        m = await src.service_metrics("ml", "svc", [p for _, p in agents])
    finally:
        await src.close()
    assert m.inflight_requests == pytest.approx(7.0)


async def test_unreachable_pod_is_missing_not_zero(agents: list[tuple[FakeAgent, PodRef]]) -> None:
    agents[1][0].up = False
    gone = PodRef("ml", "svc-gone", ip=None)
    src = ScrapeSource()
    try:
        m = await src.service_metrics("ml", "svc", [agents[0][1], agents[1][1], gone])
        nothing = await src.service_metrics("ml", "svc", [gone])
        no_pods = await src.service_metrics("ml", "svc", [])
    finally:
        await src.close()
    assert m.power_w == pytest.approx(30.0)
    assert {"pod:svc-1", "pod:svc-gone"} <= set(m.missing)
    assert m.stale is True
    assert nothing.power_w is None and nothing.energy_j is None and nothing.stale
    assert "power" in nothing.missing
    assert no_pods.power_w is None and no_pods.missing == ("pods",)


async def test_a_warming_replica_without_metrics_does_not_make_the_reading_stale(
    agents: list[tuple[FakeAgent, PodRef]],
) -> None:
    # A replica still loading its model (not Ready) has no endpoint yet: the Ready ones are the reading.
    warming = PodRef("ml", "svc-new", ip=None, ready=False)
    src = ScrapeSource()
    try:
        m = await src.service_metrics("ml", "svc", [agents[0][1], agents[1][1], warming])
        agents[1][0].up = False  # a Ready replica going silent still makes it stale
        lost = await src.service_metrics("ml", "svc", [agents[0][1], agents[1][1], warming])
    finally:
        await src.close()
    # (a first scrape has no rate window yet: energy_window and requests come with the second)
    assert m.stale is False and not [x for x in m.missing if x.startswith("pod:")]
    assert m.power_w is not None and m.power_w > 0
    assert lost.stale is True and [x for x in lost.missing if x.startswith("pod:")] == ["pod:svc-1"]


def test_counter_reset_between_scrapes_counts_the_new_value() -> None:
    fams = parse_exposition(
        "# TYPE :tensorflow:serving:request_count counter\n"
        ':tensorflow:serving:request_count{model_name="m",status="OK"} 7\n'
        ':tensorflow:serving:request_count{model_name="m",status="INVALID_ARGUMENT"} 2\n',
        at=0.0,
    )
    assert fams.requests == 9.0


def test_histogram_quantile_matches_prometheus_interpolation() -> None:
    buckets = {10.0: 0.0, 20.0: 50.0, 40.0: 100.0, math.inf: 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(20.0)
    assert histogram_quantile(0.75, buckets) == pytest.approx(30.0)
    assert histogram_quantile(0.25, buckets) == pytest.approx(15.0)
    assert histogram_quantile(0.5, {10.0: 0.0, math.inf: 0.0}) is None
    assert histogram_quantile(0.99, {10.0: 1.0, math.inf: 10.0}) == 10.0


def test_contract_names_are_unique_and_prefixed() -> None:
    names = [s.name for s in (*k.AGENT_METRICS, *k.OPERATOR_METRICS)]
    assert len(names) == len(set(names))
    assert all(n.startswith(k.PREFIX) for n in names)
    assert all(s.name.endswith("_total") for s in k.AGENT_METRICS if s.type == "counter")
