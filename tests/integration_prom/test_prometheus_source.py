"""A real Prometheus (Debian's package) scrapes real agents serving a real SavedModel, plus a stand-in
dcgm-exporter; the operator's PrometheusSource must return each ModelService's power, energy and joules
per request, match both DCGM host label spellings, and report missing data as missing."""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import prom_server
import pytest
from prometheus_client.parser import text_string_to_metric_families

from greenserve import contract as k
from greenserve.metrics.prometheus import PrometheusSource
from greenserve.metrics.scrape import ScrapeSource
from greenserve.metrics.types import PodRef

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "agent"))
from agent_proc import MODEL, AgentProcess, make_saved_model, start_agent

pytestmark = [pytest.mark.prometheus, pytest.mark.tensorflow, pytest.mark.slow, pytest.mark.timeout(400)]

WINDOW_S = 20.0
LOAD_S = 6.0
LEAD_S = 5.0  # idle before the load; the load ends WINDOW_S - LEAD_S - LOAD_S (9 s) before the reads
NS = "ml"
DCGM_POWER_W = 123.5


class FakeDcgm:
    """dcgm-exporter's exposition: one GPU with the old `Hostname` label serving pod svc-b-0, one idle GPU
    with the new `hostname` label. The energy counter (mJ) integrates the constant power. ``exported``
    serves the GPU operator's node instead: a GPU of node-5 serving svc-c-0 (hostname label) and an idle
    one, scraped without honor_labels."""

    def __init__(self, exported: bool = False) -> None:
        self.t0 = time.time()
        self.exported = exported

    def text(self) -> str:
        mj = 5e9 + DCGM_POWER_W * (time.time() - self.t0) * 1000
        if self.exported:
            a = 'gpu="0",UUID="GPU-e0",device="nvidia0",modelName="NVIDIA L4",hostname="node-5",'
            a += f'namespace="{NS}",pod="svc-c-0",container="tfserving"'
            b = 'gpu="1",UUID="GPU-e1",device="nvidia1",modelName="NVIDIA L4",hostname="node-5",'
            b += 'namespace="",pod=""'
        else:
            a = 'gpu="0",UUID="GPU-d0",device="nvidia0",modelName="NVIDIA A100-SXM4-80GB",Hostname="node-3",'
            a += f'namespace="{NS}",pod="svc-b-0",container="tfserving"'
            b = 'gpu="1",UUID="GPU-d1",device="nvidia1",modelName="NVIDIA L4",hostname="node-4",'
            b += 'namespace="",pod=""'
        return (
            f"# TYPE {k.DCGM_POWER} gauge\n{k.DCGM_POWER}{{{a}}} {DCGM_POWER_W}\n{k.DCGM_POWER}{{{b}}} 16.0\n"
            f"# TYPE {k.DCGM_ENERGY} counter\n{k.DCGM_ENERGY}{{{a}}} {mj:.0f}\n{k.DCGM_ENERGY}{{{b}}} 42\n"
            f"# TYPE {k.DCGM_GPU_UTIL} gauge\n{k.DCGM_GPU_UTIL}{{{a}}} 80\n{k.DCGM_GPU_UTIL}{{{b}}} 0\n"
        )


def serve_dcgm(fake: FakeDcgm) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = fake.text().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Env:
    prom: prom_server.PrometheusServer
    agents: dict[str, AgentProcess]  # pod name -> agent
    pods: list[PodRef]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    binary = prom_server.find_or_install()
    if binary is None:
        pytest.skip("Debian's prometheus package is not installed and cannot be installed here")
    root = tmp_path_factory.mktemp("prom")
    base = make_saved_model(root / "models")
    agents = {
        "svc-a-0": start_agent(base, root / "a0.log"),
        "svc-a-1": start_agent(base, root / "a1.log", "--agent-simulated-gpu-count=2"),
    }
    dcgm = serve_dcgm(FakeDcgm())
    gpu_operator_dcgm = serve_dcgm(FakeDcgm(exported=True))
    prom = None
    try:
        for agent in agents.values():
            agent.wait_ready()
        static = [
            {
                "targets": [f"127.0.0.1:{agent.metrics_port}"],
                # What contract.kubernetes_pod_scrape_config's relabelling writes in a cluster.
                "labels": {"namespace": NS, "modelservice": "svc-a", "pod": pod, "node": f"node-{i + 1}"},
            }
            for i, (pod, agent) in enumerate(agents.items())
        ]
        prom = prom_server.start(
            binary,
            root,
            [
                {"job_name": "greenserve-agents", "static_configs": static},
                {
                    "job_name": "dcgm",
                    "honor_labels": True,  # keep the exporter's pod/namespace labels
                    "static_configs": [{"targets": [f"127.0.0.1:{dcgm.server_address[1]}"]}],
                },
                {
                    # The GPU operator's ServiceMonitor: no honorLabels, and the target's own namespace
                    # and pod, so the exporter's become exported_namespace/exported_pod.
                    "job_name": "gpu-operator/nvidia-dcgm-exporter",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{gpu_operator_dcgm.server_address[1]}"],
                            "labels": {
                                "namespace": "gpu-operator",
                                "pod": "nvidia-dcgm-exporter-x7k2p",
                                "service": "nvidia-dcgm-exporter",
                                "endpoint": "gpu-metrics",
                            },
                        }
                    ],
                },
            ],
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            health = prom.targets_up()
            if len(health) == 4 and set(health.values()) == {"up"}:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"targets not up: {prom.targets_up()}\n{prom.log()}")
        time.sleep(3)  # a few samples before the measurement window starts
        pods = [PodRef(NS, pod, ip="127.0.0.1", metrics_port=a.metrics_port) for pod, a in agents.items()]
        yield Env(prom, agents, pods)
    finally:
        if prom is not None:
            prom.stop()
        dcgm.shutdown()
        gpu_operator_dcgm.shutdown()
        for agent in agents.values():
            agent.stop()


def direct(agent: AgentProcess) -> tuple[float, float]:
    """(energy J, power W) summed over the agent's GPUs, read from its /metrics without Prometheus."""
    with urllib.request.urlopen(f"{agent.metrics}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    energy = power = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == k.GPU_ENERGY.name:
                energy += s.value
            elif s.name == k.GPU_POWER.name:
                power += s.value
    return energy, power


async def load(agents: dict[str, AgentProcess], seconds: float) -> dict[str, int]:
    """Concurrent predictions for `seconds`; returns the successful request count per pod."""
    done = {pod: 0 for pod in agents}
    stop = time.monotonic() + seconds
    body = {"instances": [[float(i)] for i in range(8)]}

    async def client(http: aiohttp.ClientSession, pod: str) -> None:
        while time.monotonic() < stop:
            async with http.post(f"{agents[pod].rest}/v1/models/{MODEL}:predict", json=body) as r:
                assert r.status == 200
                assert (await r.json())["predictions"][2] == [5.0]
                done[pod] += 1

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(client(http, pod) for pod in agents for _ in range(3)))
    return done


async def test_per_modelservice_power_energy_and_joules_per_request(env: Env) -> None:
    prom_src = PrometheusSource(env.prom.url, window_s=WINDOW_S, stale_after_s=30)
    scrape_src = ScrapeSource()
    try:
        t_a = time.monotonic()
        e_a = sum(direct(a)[0] for a in env.agents.values())
        first = await scrape_src.service_metrics(NS, "svc-a", env.pods)
        assert first.requests_per_s is None  # one scrape: no rate yet, and not zero
        # The load sits mid-window, LEAD_S from either edge: the reads below reach Prometheus a little
        # after t_a + WINDOW_S, and each second late slides the window's start towards the load.
        await asyncio.sleep(LEAD_S)
        sent = await load(env.agents, LOAD_S)
        await asyncio.sleep(max(0.0, t_a + WINDOW_S - time.monotonic()))
        # The three reads go out together, so Prometheus evaluates them at one instant: read one after
        # another, a slow machine slid the last one's window into the load (6,134 of 7,133 requests).
        m, fleet, after_scale_in = await asyncio.gather(
            prom_src.service_metrics(NS, "svc-a", env.pods),
            prom_src.fleet_metrics({(NS, "svc-a"): env.pods, (NS, "svc-b"): [PodRef(NS, "svc-b-0")]}),
            # As after a scale-in: svc-a-1 is gone from the pod list, its requests still count.
            prom_src.service_metrics(NS, "svc-a", env.pods[:1]),
        )
        e_q = sum(direct(a)[0] for a in env.agents.values())
        s = await scrape_src.service_metrics(NS, "svc-a", env.pods)
    finally:
        await prom_src.close()
        await scrape_src.close()

    n = sum(sent.values())
    assert n > 100
    truth_window_j = e_q - e_a
    assert m.source == "prometheus/agent" and m.simulated is True
    assert m.stale is False and m.missing == (), m
    assert m.gpus == 3 and m.replicas_reporting == 2
    # The fleet read (one set of queries for every ModelService) says what the per-service read says.
    f = fleet[(NS, "svc-a")]
    assert f.source == "prometheus/agent" and f.stale is False and f.missing == ()
    assert (f.gpus, f.replicas_reporting, set(f.pod_energy_j)) == (3, 2, set(m.pod_energy_j))
    assert f.power_w == pytest.approx(m.power_w, rel=0.1)
    assert f.requests_per_s == pytest.approx(m.requests_per_s, rel=0.1)
    assert f.gpu_utilization == pytest.approx(m.gpu_utilization, abs=0.05)
    assert len(f.rate_history) == len(m.rate_history)
    assert fleet[(NS, "svc-b")].source == "prometheus/dcgm"  # no agent series: the DCGM fallback
    # Load ended about 9 s ago: three simulated T4s with a resident model, idle, draw 26 W each.
    assert m.power_w == pytest.approx(3 * 26.0)
    # Cumulative: the sum of the agents' counters as last scraped (at most ~2 scrapes behind).
    assert m.energy_j is not None and e_q - 3 * 65 * 3 <= m.energy_j <= e_q
    assert set(m.pod_energy_j) == {"svc-a-0", "svc-a-1"}
    # Window figures: Prometheus' increase() extrapolates to the window edges (a few % at 1 s scrapes).
    assert m.energy_window_j == pytest.approx(truth_window_j, rel=0.1)
    assert m.requests_per_s is not None
    assert m.requests_per_s * WINDOW_S == pytest.approx(n, rel=0.1)
    assert m.joules_per_request == pytest.approx(truth_window_j / n, rel=0.15)
    assert m.latency_p95_ms is not None and m.latency_p95_ms > 0
    assert m.inflight_requests == 0.0  # the load ended: the agents' gauges read an empty queue
    # The current window first; earlier windows only as far back as Prometheus has data.
    assert m.rate_history and m.rate_history[0] == m.requests_per_s and len(m.rate_history) <= 3
    assert after_scale_in.requests_per_s is not None
    assert after_scale_in.requests_per_s * WINDOW_S == pytest.approx(n, rel=0.1)
    assert after_scale_in.gpus == 1  # power and energy are the remaining pod's
    # The direct-scrape source agrees over its own window (exact request count: no extrapolation).
    assert s.source == "scrape" and s.missing == ()
    assert s.requests_per_s is not None and s.requests_per_s * s.window_s == pytest.approx(n)
    assert s.energy_window_j == pytest.approx(truth_window_j, rel=0.05)
    assert s.joules_per_request == pytest.approx(truth_window_j / n, rel=0.05)
    assert s.power_w == pytest.approx(3 * 26.0)


async def test_past_windows_for_a_restarted_operators_history(env: Env) -> None:
    """`rate_history` against the real server: each window's requests, one window apart, oldest first,
    counting a load sent within the span (every test's load here is svc-a's)."""
    src = PrometheusSource(env.prom.url, window_s=WINDOW_S, stale_after_s=30)
    try:
        sent = sum((await load(env.agents, LOAD_S)).values())
        await asyncio.sleep(3.0)  # a scrape after the load (1 s interval)
        until = time.time() + WINDOW_S  # its newest window ends now
        got = await src.rate_history({(NS, "svc-a"): None, (NS, "svc-b"): None}, until, 300.0)
    finally:
        await src.close()
    points = got[(NS, "svc-a")]
    times = [t for t, _ in points]
    assert times == sorted(times) and all(
        b - a == pytest.approx(WINDOW_S) for a, b in itertools.pairwise(times)
    )
    assert until - 300.0 <= times[0] and times[-1] <= until - WINDOW_S + 1.0
    # Adjacent windows count each request once (increase() extrapolates a little at the edges).
    assert sum(r for _, r in points) * WINDOW_S >= 0.8 * sent
    assert (NS, "svc-b") not in got  # no request series (DCGM only): no past, never zeros


async def test_fleet_read_sends_the_same_queries_for_one_or_many_services(env: Env) -> None:
    src = PrometheusSource(env.prom.url, window_s=WINDOW_S, stale_after_s=30)
    sent: list[str] = []
    query = src.query

    async def counting(promql: str) -> Any:
        sent.append(promql)
        return await query(promql)

    src.query = counting  # type: ignore[method-assign]
    try:
        await src.fleet_metrics({(NS, "svc-a"): env.pods})
        one = len(sent)
        sent.clear()
        many = {(NS, "svc-a"): env.pods, **{(NS, f"idle-{i}"): [] for i in range(200)}}
        got = await src.fleet_metrics(many)
    finally:
        await src.close()
    assert len(sent) == one  # 201 ModelServices cost what one does
    assert got[(NS, "idle-7")].missing  # a ModelService without pods or series: missing, never zero
    assert got[(NS, "svc-a")].gpus == 3


async def test_dcgm_fallback(env: Env) -> None:
    src = PrometheusSource(env.prom.url, window_s=WINDOW_S, stale_after_s=30)
    try:
        svc_b = await src.service_metrics(NS, "svc-b", [PodRef(NS, "svc-b-0")])
    finally:
        await src.close()
    assert svc_b.source == "prometheus/dcgm"
    assert svc_b.power_w == pytest.approx(DCGM_POWER_W)
    assert svc_b.gpu_utilization == pytest.approx(0.8)
    assert svc_b.energy_window_j == pytest.approx(DCGM_POWER_W * WINDOW_S, rel=0.1)
    # No TF Serving metrics for svc-b: traffic is missing, never zero.
    assert svc_b.requests_per_s is None and svc_b.joules_per_request is None
    assert "requests" in svc_b.missing


async def test_dcgm_behind_the_gpu_operators_service_monitor_exported_labels(env: Env) -> None:
    src = PrometheusSource(env.prom.url, window_s=WINDOW_S, stale_after_s=30)
    try:
        raw = await src.query(f'{k.DCGM_POWER}{{hostname="node-5"}}')
        svc_c = await src.service_metrics(NS, "svc-c", [PodRef(NS, "svc-c-0")])
    finally:
        await src.close()
    # The premise: Prometheus renamed the exporter's labels.
    served = next(s.labels for s in raw if s.labels.get(k.DCGM_LABEL_UUID) == "GPU-e0")
    assert served["namespace"] == "gpu-operator"
    assert (served["exported_namespace"], served["exported_pod"]) == (NS, "svc-c-0")
    assert svc_c.source == "prometheus/dcgm"
    assert svc_c.power_w == pytest.approx(DCGM_POWER_W)  # the serving GPU only, not the idle one
    assert svc_c.gpus == 1 and svc_c.replicas_reporting == 1 and not svc_c.stale
    assert svc_c.gpu_utilization == pytest.approx(0.8)
    assert svc_c.energy_window_j == pytest.approx(DCGM_POWER_W * WINDOW_S, rel=0.1)
    assert not [m for m in svc_c.missing if m.startswith("pod:")]


async def test_missing_and_stale_are_reported_not_zero(env: Env) -> None:
    src = PrometheusSource(env.prom.url, window_s=WINDOW_S, stale_after_s=30)
    down = PrometheusSource("http://127.0.0.1:9", window_s=WINDOW_S)
    try:
        unknown = await src.service_metrics(NS, "no-such-service")
        partial = await src.service_metrics(NS, "svc-a", [*env.pods, PodRef(NS, "svc-a-9")])
        strict = PrometheusSource(
            env.prom.url, window_s=WINDOW_S, stale_after_s=0.0, clock=lambda: time.time() + 5
        )
        old = await strict.service_metrics(NS, "svc-a")
        await strict.close()
        unreachable = await down.service_metrics(NS, "svc-a")
    finally:
        await src.close()
        await down.close()
    assert unknown.power_w is None and unknown.energy_j is None and unknown.requests_per_s is None
    assert unknown.stale and "power" in unknown.missing
    assert "pod:svc-a-9" in partial.missing and partial.stale
    assert partial.power_w is not None  # what was found is still reported
    assert old.stale and old.power_w is not None
    assert unreachable.power_w is None and unreachable.missing == ("prometheus",) and unreachable.stale
