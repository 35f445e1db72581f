"""Per-model metrics of the models in a shared pool (metrics/pooled.py): the pool pods' per-model request
and busy-time counters read by both sources, each model's rate, power and energy counter from its part
of the pod's GPU energy, and missing or stale pods reported, never read as zero."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from greenserve import contract as k
from greenserve.metrics.pooled import PoolLedger, PoolPodSample, combine
from greenserve.metrics.prometheus import PrometheusSource, Sample
from greenserve.metrics.scrape import ScrapeSource, parse_exposition
from greenserve.metrics.types import PodRef, PooledModel, ServiceMetrics
from greenserve_agent.local_backend import TfsMetrics
from greenserve_agent.supervisor import AgentMetrics
from support.http import local_server

GIB = 2**30


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_two_readings_give_each_model_its_rate_power_and_energy() -> None:
    ledger = PoolLedger()
    members = {"a": 2.0 * GIB, "b": 1.0 * GIB, "c": 1.0 * GIB}
    ledger.observe("ns", "pool-0", PoolPodSample(100.0, 1000.0, 30.0, 1, False, {}, {}), members)
    # 10 s, 400 J at an idle of 30 W: 300 J idle by memory (150/75/75), 100 J active by busy time 3:1:0.
    sample = PoolPodSample(110.0, 1400.0, 40.0, 1, False, {"a": 30.0, "b": 10.0}, {"a": 3.0, "b": 1.0})
    ledger.observe("ns", "pool-0", sample, members)
    pods = (PodRef("ns", "pool-0"),)
    a = ledger.reading("ns", "svc-a", PooledModel("p", "a", pods, 2 * GIB), 111.0, "scrape")
    b = ledger.reading("ns", "svc-b", PooledModel("p", "b", pods, GIB), 111.0, "scrape")
    c = ledger.reading("ns", "svc-c", PooledModel("p", "c", pods, GIB), 111.0, "scrape")
    assert (a.requests_per_s, b.requests_per_s, c.requests_per_s) == pytest.approx((3.0, 1.0, 0.0))
    assert a.pod_energy_j == {"pool-0": pytest.approx(150.0 + 75.0)}
    assert b.pod_energy_j == {"pool-0": pytest.approx(75.0 + 25.0)}
    assert c.pod_energy_j == {"pool-0": pytest.approx(75.0)}
    assert a.power_w == pytest.approx(22.5) and c.power_w == pytest.approx(7.5)
    # The models' parts add up to what the GPU drew.
    assert sum(m.energy_window_j or 0.0 for m in (a, b, c)) == pytest.approx(400.0)
    assert not a.stale and a.missing == () and a.rate_history == (pytest.approx(3.0),)
    assert a.joules_per_request == pytest.approx(225.0 / 30.0)


def test_a_move_between_pool_gpus_keeps_the_models_run_of_windows() -> None:
    """The sizing's pooled estimate needs its three adjacent windows; a move between pool GPUs (its
    placement naming the new GPU, its requests read from both) must not start them again."""
    ledger = PoolLedger()
    members = {"a": GIB}
    old_gpu = PooledModel("p", "a", (PodRef("ns", "pool-0"),), GIB)
    both = PooledModel("p-1", "a", (PodRef("ns", "pool-1"), PodRef("ns", "pool-0")), GIB)
    history: tuple[float, ...] = ()
    # 2 req/s on the old GPU's pod until 120 s; then 1 req/s on each while both serve it, its placement
    # naming the new GPU.
    for t, old, new, pm in (
        (100.0, 0, 0, None),
        (110.0, 20, 0, old_gpu),
        (120.0, 40, 0, old_gpu),
        (130.0, 50, 10, both),
    ):
        ledger.observe("ns", "pool-0", PoolPodSample(t, t, 30.0, 1, False, {"a": old}, {"a": 0.0}), members)
        ledger.observe("ns", "pool-1", PoolPodSample(t, t, 30.0, 1, False, {"a": new}, {"a": 0.0}), members)
        if pm is not None:
            history = ledger.reading("ns", "svc-a", pm, t + 1.0, "scrape").rate_history
    assert history == pytest.approx((2.0, 2.0, 2.0))


def test_a_modelservice_made_again_under_a_deleted_ones_name_starts_its_own_run_of_windows() -> None:
    """The ledger keeps each pooled ModelService's run of windows; one no longer pooled (deleted) is
    forgotten at the next tick, so a new one of that name is sized on its own windows, not the old ones'."""
    ledger = PoolLedger()
    pod = (PodRef("ns", "pool-0"),)
    pm = PooledModel("p", "a", pod, GIB)
    history: tuple[float, ...] = ()

    def tick(t: float, count: float, pooled: dict[tuple[str, str], PooledModel]) -> None:
        nonlocal history
        sample = PoolPodSample(t, t, 30.0, 1, False, {"a": count}, {"a": 0.0})
        ledger.observe("ns", "pool-0", sample, {"a": GIB})
        ledger.forget([("ns", "pool-0")], pooled)
        if pooled:
            history = ledger.reading("ns", "svc-a", pm, t + 1.0, "scrape").rate_history

    for t, count in ((100.0, 0), (110.0, 50), (120.0, 100), (130.0, 150)):
        tick(t, count, {("ns", "svc-a"): pm})
    assert history == pytest.approx((5.0, 5.0, 5.0))
    tick(140.0, 150, {})  # svc-a deleted: no pooled model this tick
    tick(150.0, 160, {("ns", "svc-a"): pm})  # made again, at 1 req/s
    assert history == pytest.approx((1.0,))


def test_one_reading_is_missing_not_zero_and_an_unreachable_pod_is_stale() -> None:
    ledger = PoolLedger()
    pods = (PodRef("ns", "pool-0"),)
    pm = PooledModel("p", "a", pods, GIB)
    ledger.observe("ns", "pool-0", PoolPodSample(100.0, 10.0, 30.0, requests={}), {"a": GIB})
    first = ledger.reading("ns", "svc", pm, 100.0, "scrape")
    assert first.stale and first.requests_per_s is None and first.power_w is None
    assert "pod:pool-0" in first.missing
    ledger.observe("ns", "pool-0", PoolPodSample(110.0, 310.0, 30.0, requests={}), {"a": GIB})
    ok = ledger.reading("ns", "svc", pm, 110.0, "scrape")
    assert not ok.stale and ok.requests_per_s == 0.0  # a declared counter without its series: 0
    ledger.unreachable("ns", "pool-0")
    gone = ledger.reading("ns", "svc", pm, 120.0, "scrape")
    assert gone.stale and gone.requests_per_s is None and "pod:pool-0" in gone.missing
    # Old samples are stale too, and no request counter at all is missing, not zero.
    ledger.observe("ns", "pool-0", PoolPodSample(130.0, 610.0, 30.0), {"a": GIB})
    late = ledger.reading("ns", "svc", pm, 130.0 + 121.0, "scrape")
    assert late.stale and late.requests_per_s is None and "requests" in late.missing


def test_a_model_unloaded_and_loaded_again_counts_from_zero() -> None:
    ledger = PoolLedger()
    pods = (PodRef("ns", "pool-0"),)
    pm = PooledModel("p", "a", pods, GIB)
    ledger.observe("ns", "pool-0", PoolPodSample(0.0, 0.0, 10.0, requests={}), {"a": GIB})
    ledger.observe("ns", "pool-0", PoolPodSample(10.0, 100.0, 10.0, requests={}), {"a": GIB})
    assert ledger.reading("ns", "svc", pm, 10.0, "scrape").pod_energy_j == {"pool-0": pytest.approx(100.0)}
    ledger.observe("ns", "pool-0", PoolPodSample(20.0, 200.0, 10.0, requests={}), {"b": GIB})
    ledger.observe("ns", "pool-0", PoolPodSample(30.0, 300.0, 10.0, requests={}), {"a": GIB, "b": GIB})
    # Back in the pool: its counter restarts, as a new replica's would (its status total kept the rest).
    assert ledger.reading("ns", "svc", pm, 30.0, "scrape").pod_energy_j == {"pool-0": pytest.approx(50.0)}


def test_own_replicas_and_the_pool_add_up_during_a_move() -> None:
    pooled = ServiceMetrics(
        "ns", "svc", power_w=5.0, energy_j=50.0, requests_per_s=2.0, rate_history=(2.0, 1.0),
        replicas_reporting=1, pod_energy_j={"pool-0": 50.0}, sampled_at=10.0, stale=False,
    )  # fmt: skip
    own = ServiceMetrics(
        "ns", "svc", power_w=70.0, energy_j=700.0, requests_per_s=3.0, rate_history=(3.0,),
        replicas_reporting=1, pod_energy_j={"svc-0": 700.0}, sampled_at=9.0, stale=False,
    )  # fmt: skip
    both = combine(own, pooled)
    assert (both.power_w, both.requests_per_s, both.rate_history) == (75.0, 5.0, (5.0,))
    assert both.pod_energy_j == {"svc-0": 700.0, "pool-0": 50.0} and both.sampled_at == 9.0
    # No replica of its own: the pool's reading alone, not a stale sum.
    assert combine(ServiceMetrics("ns", "svc", missing=("pods",)), pooled) is pooled
    starting = ServiceMetrics("ns", "svc", missing=("pod:svc-0",), stale=True)
    assert combine(starting, pooled).stale  # a ready replica of its own not reporting: stale


class PoolAgent:
    """A pool pod's agent: the agent's own per-model request metrics, TF Serving's and a GPU."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = AgentMetrics(self.registry)
        self.tfs = TfsMetrics()
        self.energy_j = 0.0
        self.power_w = 30.0

    def serve(self, model: str, n: int, seconds: float) -> None:
        for _ in range(n):
            self.tfs.record(model, "OK", "predict", seconds * 1e6)
            self.metrics.requests.labels(model, "200").inc()
            self.metrics.duration.labels(model).observe(seconds)

    def text(self) -> str:
        gpu = 'gpu="0",uuid="GPU-0",simulated="false"'
        return (
            generate_latest(self.registry).decode()
            + self.tfs.render()
            + f"# TYPE {k.GPU_POWER.name} gauge\n{k.GPU_POWER.name}{{{gpu}}} {self.power_w}\n"
            + f"# TYPE {k.GPU_ENERGY.family} counter\n{k.GPU_ENERGY.name}{{{gpu}}} {self.energy_j}\n"
        )


def test_parse_exposition_reads_each_models_requests_and_busy_time() -> None:
    agent = PoolAgent()
    agent.serve("a", 3, 0.5)
    agent.serve("b", 1, 2.0)
    got = parse_exposition(agent.text(), 0.0)
    assert got.model_requests == {"a": 3.0, "b": 1.0}  # TF Serving's count, not the agent's
    assert got.model_busy_s == pytest.approx({"a": 1.5, "b": 2.0})
    fresh = parse_exposition(PoolAgent().text(), 0.0)
    assert fresh.model_requests == {} and fresh.model_busy_s == {}  # declared, no request yet: zeros


@pytest.fixture
async def pool_pod() -> AsyncIterator[tuple[PoolAgent, PodRef]]:
    agent = PoolAgent()

    async def handle(_r: web.Request) -> web.Response:
        return web.Response(text=agent.text())

    app = web.Application()
    app.router.add_get("/metrics", handle)
    async with local_server(app) as port:
        yield agent, PodRef("ml", "gs-pool-x-0", ip="127.0.0.1", metrics_port=port)


async def test_scrape_source_reads_pooled_models_from_one_scrape_per_pool_pod(
    pool_pod: tuple[PoolAgent, PodRef],
) -> None:
    agent, ref = pool_pod
    clock = Clock()
    src = ScrapeSource(clock=clock)
    models = {
        ("ml", "svc-a"): PooledModel("gs-pool-x", "a", (ref,), GIB),
        ("ml", "svc-b"): PooledModel("gs-pool-x", "b", (ref,), GIB),
    }
    try:
        first = await src.pooled_metrics(models)
        agent.serve("a", 20, 0.25)
        agent.energy_j += 400.0  # 10 s: 300 J idle at 30 W, 100 J active, all a's
        clock.t += 10.0
        got = await src.pooled_metrics(models)
    finally:
        await src.close()
    assert first[("ml", "svc-a")].stale and first[("ml", "svc-a")].requests_per_s is None
    a, b = got[("ml", "svc-a")], got[("ml", "svc-b")]
    assert (a.requests_per_s, b.requests_per_s) == pytest.approx((2.0, 0.0))
    assert a.pod_energy_j == {"gs-pool-x-0": pytest.approx(250.0)}
    assert b.pod_energy_j == {"gs-pool-x-0": pytest.approx(150.0)}
    assert not a.stale and a.source == "scrape"


class FakeProm(PrometheusSource):
    """The pool pods' series as Prometheus would return them, by query."""

    def __init__(self, clock: Clock) -> None:
        super().__init__("http://prometheus.invalid", clock=clock)
        self.sent: list[str] = []
        self.requests: dict[str, float] = {}
        self.busy: dict[str, float] = {}
        self.energy = 0.0

    async def query(self, promql: str) -> list[Sample]:
        self.sent.append(promql)
        pod = {"namespace": "ml", "pod": "gs-pool-x-0"}
        t = self._clock()
        if "timestamp(" in promql:
            return [Sample(pod, t, t)]
        if k.GPU_ENERGY.name in promql:
            return [Sample(pod, self.energy, t)]
        if "count by" in promql or k.GPU_POWER.name in promql:
            return [Sample(pod, 1.0 if "count by" in promql else 30.0, t)]
        if k.TFS_REQUEST_COUNT in promql:
            return [Sample({**pod, k.TFS_LABEL_MODEL: m}, v, t) for m, v in self.requests.items()]
        if k.REQUEST_DURATION.name in promql:
            return [Sample({**pod, k.LABEL_MODEL: m}, v, t) for m, v in self.busy.items()]
        return []


async def test_prometheus_reads_pooled_models_with_the_same_queries_for_one_or_many() -> None:
    clock = Clock()
    prom = FakeProm(clock)
    ref = PodRef("ml", "gs-pool-x-0")

    def models(n: int) -> dict[tuple[str, str], PooledModel]:
        return {("ml", f"svc-{i}"): PooledModel("gs-pool-x", f"m{i}", (ref,), GIB) for i in range(n)}

    await prom.pooled_metrics(models(1))
    one = len(prom.sent)
    prom.sent.clear()
    await prom.pooled_metrics(models(200))
    assert len(prom.sent) == one  # 200 pooled ModelServices cost what one does
    assert all('pool=~".+"' in q for q in prom.sent)
    clock.t += 15.0
    prom.requests, prom.busy, prom.energy = {"m0": 60.0, "m1": 30.0}, {"m0": 6.0, "m1": 2.0}, 0.0
    await prom.pooled_metrics(models(2))
    clock.t += 15.0
    prom.requests, prom.busy, prom.energy = {"m0": 90.0, "m1": 30.0}, {"m0": 9.0, "m1": 2.0}, 600.0
    got = await prom.pooled_metrics(models(2))
    m0, m1 = got[("ml", "svc-0")], got[("ml", "svc-1")]
    assert (m0.requests_per_s, m1.requests_per_s) == pytest.approx((2.0, 0.0))
    # 600 J over 15 s at an idle of 30 W: 450 J idle, split 1:1 by memory; 150 J active, all m0's.
    assert m0.pod_energy_j == {"gs-pool-x-0": pytest.approx(375.0)}
    assert m1.pod_energy_j == {"gs-pool-x-0": pytest.approx(225.0)}
    assert not m0.stale and m0.source == "prometheus/agent"


async def test_a_tick_without_pooled_models_forgets_the_last_ones_windows() -> None:
    """The last pooled ModelService deleted: the tick has no pooled model, asks Prometheus nothing, and
    forgets its windows, so one made again under its name is sized on its own."""
    clock = Clock()
    prom = FakeProm(clock)
    ref = PodRef("ml", "gs-pool-x-0")
    one = {("ml", "svc-0"): PooledModel("gs-pool-x", "m0", (ref,), GIB)}
    history: tuple[float, ...] = ()
    for count in (0.0, 30.0, 60.0, 90.0):
        prom.requests = {"m0": count}
        history = (await prom.pooled_metrics(one))[("ml", "svc-0")].rate_history
        clock.t += 15.0
    assert history == pytest.approx((2.0, 2.0, 2.0))
    prom.sent.clear()
    assert await prom.pooled_metrics({}) == {}
    assert prom.sent == []
    # The pool pod was forgotten too: the first reading after has no interval, the next one window.
    for count, expected in ((105.0, ()), (112.5, (0.5,))):
        clock.t += 15.0
        prom.requests = {"m0": count}
        history = (await prom.pooled_metrics(one))[("ml", "svc-0")].rate_history
        assert history == pytest.approx(expected)


async def test_prometheus_down_is_missing_for_pooled_models() -> None:
    src = PrometheusSource("http://127.0.0.1:9", window_s=60.0)
    try:
        got = await src.pooled_metrics({("ml", "svc"): PooledModel("p", "m", (PodRef("ml", "p-0"),), 1)})
    finally:
        await src.close()
    assert got[("ml", "svc")].stale and got[("ml", "svc")].requests_per_s is None


def test_an_interval_that_mixes_tf_servings_and_the_agents_counters_has_no_rate() -> None:
    """TF Serving's counters pass through the agent only when its read of the model server answered in
    time; the agent's own count (status requests included) is not the same counter."""
    ledger = PoolLedger()
    pm = PooledModel("p", "a", (PodRef("ns", "pool-0"),), GIB)
    tfs = PoolPodSample(0.0, 0.0, 10.0, requests={"a": 500.0}, requests_kind="tfs")
    agent = PoolPodSample(10.0, 100.0, 10.0, requests={"a": 520.0}, requests_kind="agent")
    ledger.observe("ns", "pool-0", tfs, {"a": GIB})
    ledger.observe("ns", "pool-0", agent, {"a": GIB})
    got = ledger.reading("ns", "svc", pm, 10.0, "scrape")
    assert got.requests_per_s is None and "requests" in got.missing
    assert got.pod_energy_j == {"pool-0": pytest.approx(100.0)}  # the energy is still split
