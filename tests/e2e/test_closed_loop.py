"""The mission end to end on the local control plane, with every part real except the GPUs:

kube-apiserver/scheduler/controller-manager + kwok nodes, Karpenter (kwok provider) as the node
autoscaler, the digital twin serving SIMULATED per-pod GPU metrics from a load schedule, Debian's
Prometheus scraping it, and the operator (as the chart's ServiceAccount) reading Prometheus.

Load rises: replicas and GPU nodes grow. Load falls: replicas shrink, the operator empties GPU nodes and
Karpenter removes them, while ready replicas never drop below what is needed. Metrics going away freezes
scaling. Run with consolidation on and off, it reports GPU-node-hours, simulated energy and moves.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from greenserve import contract as k
from greenserve.api import conditions as cond
from greenserve.api import constants as c
from greenserve.cluster.client import DEPLOYMENTS, EVENTS, MODELSERVICES, NODES, PODS, KubeClient
from integration_prom import prom_server
from support.kube import Kubectl, OperatorProcess, eventually, rbac_denials
from support.paths import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
PRODUCT = "NVIDIA-L4"  # only the Karpenter NodePool's nodes carry it (tests/harness/karpenter/nodepool.yaml)
CAPACITY_TARGET = 50  # req/s per replica at target load
RESULTS = REPO / ".harness" / "e2e-results.json"
TWIN = REPO / "tests" / "harness" / "twin.py"  # harness code, run as a script


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def karpenter(kubectl: Kubectl) -> Iterator[None]:
    subprocess.run(
        ["bash", str(REPO / "tests/harness/cluster.sh"), "karpenter-up"], check=True, capture_output=True
    )
    yield
    subprocess.run(["bash", str(REPO / "tests/harness/cluster.sh"), "karpenter-down"], check=False)


class Load:
    """Drives the twin: writing the schedule file changes the request rate at once."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key

    def set(self, rps: float) -> None:
        set_loads(self.path, {self.key: rps})


def set_loads(path: Path, rates: dict[str, float]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({key: f"0:{rps}" for key, rps in rates.items()}))
    os.replace(tmp, path)


def start_twin(kubeconfig: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    """The twin as a child process serving on a free port, driven by a schedule file."""
    port = _free_port()
    schedule = tmp_path / "schedule.json"
    schedule.write_text("{}")
    log = open(tmp_path / "twin.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            str(TWIN),
            "--port",
            str(port),
            "--interval",
            "1",
            "--schedule-file",
            str(schedule),
            *extra,
        ],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            twin_counters(port)
            break
        except OSError:
            assert proc.poll() is None, (tmp_path / "twin.log").read_text()
            assert time.monotonic() < deadline, "the twin did not start serving"
            time.sleep(0.3)
    return proc, port, schedule


def stop_twin(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def twin(kubeconfig: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    started = start_twin(kubeconfig, tmp_path)
    yield started
    stop_twin(started[0])


def start_prometheus(twin_port: int, tmp_path: Path) -> prom_server.PrometheusServer:
    binary = prom_server.find_or_install()
    assert binary, "Debian's prometheus package could not be installed (tests/harness/prometheus.sh)"
    return prom_server.start(
        binary,
        tmp_path,
        [
            {
                "job_name": "greenserve-twin",
                "honor_labels": True,  # the twin sets the namespace/pod/node labels Kubernetes SD would add
                "static_configs": [{"targets": [f"127.0.0.1:{twin_port}"]}],
            }
        ],
    )


@pytest.fixture
def prometheus(twin: tuple[subprocess.Popen[bytes], int, Path], tmp_path: Path) -> Iterator[str]:
    server = start_prometheus(twin[1], tmp_path)
    yield server.url
    server.stop()


def twin_counters(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for name in (
        "greenserve_twin_cluster_energy_joules_total",
        "greenserve_twin_gpu_node_seconds_total",
        "greenserve_twin_gpu_nodes",
        "greenserve_twin_requests_dropped_total",
    ):
        m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
        out[name] = float(m.group(1)) if m else float("nan")
    return out


def twin_inflight(port: int, namespace: str, modelservice: str) -> float:
    """Requests waiting or in service at one ModelService's pods, as the twin serves them (the truth the
    agents' in-flight gauges report); the operator's status carries the same figure only as of its last
    write, which quiet-at-rest defers up to `status_refresh_s` while nothing else changes."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == k.AGENT_INFLIGHT.name
        and s.labels.get(k.LABEL_NAMESPACE) == namespace
        and s.labels.get(k.LABEL_MODELSERVICE) == modelservice
    )


def e2e_operator(
    kubeconfig: Path, env: dict[str, str], prometheus: str, consolidation: bool, tmp_path: Path
) -> OperatorProcess:
    """The operator as the chart's ServiceAccount, reading Prometheus on short windows (not started)."""
    (tmp_path / "op").mkdir()
    return OperatorProcess(
        kubeconfig,
        tmp_path / "op",
        extra_env={
            **env,
            "GREENSERVE_PROMETHEUS_URL": prometheus,
            "GREENSERVE_METRICS_WINDOW": "10",
            "GREENSERVE_METRICS_STALE_AFTER": "15",
            "GREENSERVE_CONSOLIDATION": "true" if consolidation else "false",
            "GREENSERVE_CONSOLIDATION_INTERVAL": "6",
        },
    )


def twin_usage(start: dict[str, float], end: dict[str, float]) -> dict[str, float]:
    """GPU-node-hours and SIMULATED energy between two readings of the twin's cluster counters."""

    def delta(name: str) -> float:
        return end[name] - start[name]

    return {
        "gpu_node_hours": round(delta("greenserve_twin_gpu_node_seconds_total") / 3600, 4),
        "energy_kwh_simulated": round(delta("greenserve_twin_cluster_energy_joules_total") / 3.6e6, 5),
    }


def record(result: dict[str, Any]) -> None:
    print("E2E RESULT", json.dumps(result))
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as fh:
        fh.write(json.dumps(result) + "\n")


async def replica_moves(kube: KubeClient, ns: str) -> int:
    return sum(1 for e in await kube.list_objects(EVENTS, ns) if e.get("reason") == "ReplicaMoved")


async def l4_nodes(kube: KubeClient) -> list[str]:
    nodes = await kube.list_objects(NODES, label_selector=f"{c.GPU_PRODUCT_LABEL}={PRODUCT}")
    return [n["metadata"]["name"] for n in nodes if not n["metadata"].get("deletionTimestamp")]


async def ready_pods(kube: KubeClient, ns: str) -> list[dict[str, Any]]:
    pods = await kube.list_objects(PODS, ns, label_selector=f"{c.LABEL_MODELSERVICE}=svc")
    return [p for p in pods if _is_ready(p)]


@pytest.mark.parametrize("consolidation", [True], ids=["consolidation-on"])
async def test_load_up_and_down_grows_then_frees_gpu_nodes(
    consolidation: bool,
    kube: KubeClient,
    kubectl: Kubectl,
    namespace: str,
    karpenter: None,
    twin: tuple[subprocess.Popen[bytes], int, Path],
    prometheus: str,
    operator_kubeconfig: Path,
    operator_env: dict[str, str],
    tmp_path: Path,
) -> None:
    twin_proc, twin_port, schedule = twin
    # Start from no Karpenter nodes (a previous run's are removed once empty).
    await eventually(lambda: _none(l4_nodes(kube)), 180, interval=2, what="no leftover L4 nodes")
    op = e2e_operator(operator_kubeconfig, operator_env, prometheus, consolidation, tmp_path)
    load = Load(schedule, f"{namespace}/svc")
    load.set(20)
    op.start()
    t0 = time.monotonic()
    start = twin_counters(twin_port)
    try:
        kubectl.apply(msvc_manifest("svc", namespace, consolidation))

        async def replicas_ready(n: int) -> list[dict[str, Any]] | None:
            pods = await ready_pods(kube, namespace)
            return pods if len(pods) >= n else None

        await eventually(lambda: replicas_ready(1), 120, interval=1, what="first replica on a Karpenter node")

        # Load rises: 700 req/s needs ceil(700 / (62.5 * 0.8)) = 14 one-GPU replicas, two 8-GPU nodes.
        load.set(700)
        await eventually(lambda: replicas_ready(12), 240, interval=1, what="scale-up to >= 12 ready replicas")
        peak_nodes = await eventually(
            lambda: _at_least(l4_nodes(kube), 2), 120, interval=1, what="a second GPU node"
        )

        async def telemetry() -> dict[str, Any] | None:
            # A replica that just turned Ready reports from the twin's next tick on: wait for a full reading.
            st = (await kube.get(MODELSERVICES, "svc", namespace))["status"]
            return st if st.get("powerWatts") and st.get("requestsPerSecond") else None

        status = await eventually(telemetry, 60, interval=1, what="power and traffic in status")
        assert status["metricsSimulated"] is True
        assert status["powerWatts"] > 0 and status["requestsPerSecond"] > 0

        # Load falls: back to one replica, emptied node removed by Karpenter, never below 1 ready replica.
        load.set(30)
        min_ready = 99

        async def shrunk() -> bool:
            nonlocal min_ready
            min_ready = min(min_ready, len(await ready_pods(kube, namespace)))
            dep = await kube.get(DEPLOYMENTS, "svc", namespace)
            return dep["spec"]["replicas"] == 1 and len(await l4_nodes(kube)) == 1

        try:
            await eventually(shrunk, 300, interval=1, what="one replica on one GPU node")
        except AssertionError:
            await dump_state(kube, namespace)
            raise
        assert min_ready >= 1
        elapsed = time.monotonic() - t0
        end = twin_counters(twin_port)
        msvc = await kube.get(MODELSERVICES, "svc", namespace)
        moves = await replica_moves(kube, namespace)
        result = {
            "consolidation": consolidation,
            "seconds": round(elapsed, 1),
            "peak_gpu_nodes": len(peak_nodes),
            **twin_usage(start, end),
            "moves": moves,
            "modelservice_energy_j": msvc["status"].get("energyJoules"),
        }
        record(result)

        # Metrics go away: scaling freezes instead of scaling down (or anything else).
        load.set(0)
        twin_proc.terminate()
        twin_proc.wait(timeout=10)

        async def frozen() -> dict[str, Any] | None:
            body = await kube.get(MODELSERVICES, "svc", namespace)
            m = cond.get_condition(body["status"].get("conditions"), "MetricsAvailable")
            return body if m and m["status"] == "False" else None

        body = await eventually(frozen, 60, interval=1, what="MetricsAvailable=False after the twin stopped")
        scaling = cond.get_condition(body["status"]["conditions"], cond.SCALING)
        assert scaling is not None and scaling["reason"].startswith("Hold")
        await op.wait_passes("resync", 3)  # the operator looked again three times without a reading
        dep = await kube.get(DEPLOYMENTS, "svc", namespace)
        assert dep["spec"]["replicas"] == 1
        assert rbac_denials(op.logs()) == []
    finally:
        op.stop()
        kubectl.run("delete", "msvc", "svc", "-n", namespace, "--wait=false", check=False)


async def dump_state(kube: KubeClient, ns: str, names: tuple[str, ...] = ("svc",)) -> None:
    """What a failed wait leaves to read: the ModelServices' status, their pods and the GPU nodes."""
    for name in names:
        body = await kube.get(MODELSERVICES, name, ns)
        status = {k: v for k, v in body.get("status", {}).items() if k not in ("energyCounters",)}
        print("STATE status", name, json.dumps(status, indent=1))
    for p in await kube.list_objects(PODS, ns, label_selector=c.LABEL_MODELSERVICE):
        conds = {x["type"]: x["status"] for x in p.get("status", {}).get("conditions", [])}
        print(
            "STATE pod",
            p["metadata"]["name"],
            p["spec"].get("nodeName"),
            conds.get("Ready"),
            p["metadata"].get("deletionTimestamp"),
            p["metadata"].get("annotations", {}),
        )
    for n in await kube.list_objects(NODES):
        print(
            "STATE node",
            n["metadata"]["name"],
            n["metadata"].get("labels", {}).get(c.GPU_PRODUCT_LABEL),
            n["spec"].get("taints"),
            n["metadata"].get("deletionTimestamp"),
        )


async def _none(coro: Any) -> bool:
    return not await coro


async def _at_least(coro: Any, n: int) -> list[str] | None:
    found: list[str] = await coro
    return found if len(found) >= n else None


def msvc_manifest(name: str, ns: str, consolidation: bool) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "model": {"name": name, "storageUri": f"/models/{name}"},
            "gpu": {"count": 1, "product": PRODUCT},
            "scaling": {
                "minReplicas": 1,
                "maxReplicas": 20,
                "metric": "requestsPerSecond",
                "target": CAPACITY_TARGET,
                "scaleDownDelaySeconds": 20,
            },
            "energy": {"consolidation": consolidation},
        },
    }


@pytest.mark.parametrize("consolidation", [True, False], ids=["consolidation-on", "consolidation-off"])
async def test_two_service_replay_consolidation_frees_a_node(
    consolidation: bool,
    kube: KubeClient,
    kubectl: Kubectl,
    namespace: str,
    karpenter: None,
    twin: tuple[subprocess.Popen[bytes], int, Path],
    prometheus: str,
    operator_kubeconfig: Path,
    operator_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """A fixed replay of two services' load: "a" peaks at 600 req/s (two nodes), "b" stays small and lands
    beside a's overflow; then a falls to 100 req/s. a's scale-in empties what it can by deletion cost, but
    b's replica keeps the second node. With consolidation the operator moves it (make-before-break) and
    Karpenter removes the node; without, the node stays. Both runs are measured over the same window."""
    _, twin_port, schedule = twin
    await eventually(lambda: _none(l4_nodes(kube)), 180, interval=2, what="no leftover L4 nodes")
    op = e2e_operator(operator_kubeconfig, operator_env, prometheus, consolidation, tmp_path)
    a, b = f"{namespace}/a", f"{namespace}/b"
    # 600 req/s: 12-13 replicas, one full node and a part-full one that b's replica joins.
    set_loads(schedule, {a: 600, b: 20})
    op.start()
    try:
        kubectl.apply(msvc_manifest("a", namespace, consolidation))

        async def a_ready() -> bool:
            pods = await kube.list_objects(PODS, namespace, label_selector=f"{c.LABEL_MODELSERVICE}=a")
            return sum(1 for p in pods if _is_ready(p)) >= 12

        await eventually(a_ready, 300, interval=1, what="a scaled up to >= 12 ready replicas")
        kubectl.apply(msvc_manifest("b", namespace, consolidation))

        async def b_ready() -> bool:
            pods = await kube.list_objects(PODS, namespace, label_selector=f"{c.LABEL_MODELSERVICE}=b")
            return any(_is_ready(p) for p in pods)

        await eventually(b_ready, 120, interval=1, what="b ready")
        await eventually(lambda: _at_least(l4_nodes(kube), 2), 120, interval=1, what="two L4 nodes")

        # The measured window: the same length in both runs.
        window_s = 150.0
        set_loads(schedule, {a: 100, b: 20})
        start = twin_counters(twin_port)
        t0 = time.monotonic()
        min_ready: dict[str, int] = {"a": 99, "b": 99}
        while time.monotonic() - t0 < window_s:
            pods = await kube.list_objects(PODS, namespace, label_selector=c.LABEL_MODELSERVICE)
            for svc in min_ready:
                ready = sum(
                    1
                    for p in pods
                    if p["metadata"]["labels"].get(c.LABEL_MODELSERVICE) == svc and _is_ready(p)
                )
                min_ready[svc] = min(min_ready[svc], ready)
            await progress(kube, namespace, ("a", "b"), time.monotonic() - t0)
            await asyncio.sleep(1)
        end = twin_counters(twin_port)
        nodes_left = len(await l4_nodes(kube))
        moves = await replica_moves(kube, namespace)
        result = {
            "replay": "two-service",
            "consolidation": consolidation,
            "window_s": window_s,
            **twin_usage(start, end),
            "moves": moves,
            "l4_nodes_at_end": nodes_left,
        }
        record(result)
        # Never below one ready replica of either service while load moved around.
        assert min_ready["a"] >= 1 and min_ready["b"] >= 1, min_ready
        if consolidation:
            # Scale-in by deletion cost, and a move where b's replica alone keeps a node, leave one node.
            assert nodes_left == 1, "the node consolidation emptied should have been removed"
        assert rbac_denials(op.logs()) == []
    except AssertionError:
        await dump_state(kube, namespace, ("a", "b"))
        raise
    finally:
        op.stop()
        kubectl.run("delete", "msvc", "a", "b", "-n", namespace, "--wait=false", check=False)


async def progress(kube: KubeClient, ns: str, names: tuple[str, ...], t: float) -> None:
    """One line of the replay's progress per call: desired/ready, request rate and scaling reason."""
    parts = []
    for name in names:
        st = (await kube.get(MODELSERVICES, name, ns)).get("status", {})
        scaling = cond.get_condition(st.get("conditions"), cond.SCALING) or {}
        metrics = cond.get_condition(st.get("conditions"), "MetricsAvailable") or {}
        parts.append(
            f"{name} {st.get('desiredReplicas')}/{st.get('readyReplicas')} rps={st.get('requestsPerSecond')}"
            f" {scaling.get('reason')} metrics={metrics.get('reason')}"
        )
    print(f"REPLAY t={t:5.1f}s " + " | ".join(parts), flush=True)


def _is_ready(pod: dict[str, Any]) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and any(
        x["type"] == "Ready" and x["status"] == "True" for x in pod.get("status", {}).get("conditions", [])
    )


async def test_queued_requests_get_replicas_of_their_own(
    kube: KubeClient,
    kubectl: Kubectl,
    namespace: str,
    kubeconfig: Path,
    operator_kubeconfig: Path,
    operator_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Replicas that complete at most their capacity (the twin's --queueing): under an overload the
    request counter shows only what they complete, so the rate alone under-reads demand. The agents'
    in-flight gauge shows the queue; the operator must size for it too, drain it, and lose no request."""
    proc, port, schedule = start_twin(kubeconfig, tmp_path, "--queueing", "--max-wait-s", "120")
    prom = start_prometheus(port, tmp_path)
    op = e2e_operator(operator_kubeconfig, operator_env, prom.url, False, tmp_path)
    key = f"{namespace}/svc"
    set_loads(schedule, {key: 20})
    op.start()
    try:
        manifest = msvc_manifest("svc", namespace, False)
        # The static H100 nodes (no node autoscaling needed here); no scale-down within the test.
        manifest["spec"]["gpu"]["product"] = "NVIDIA-H100-80GB-HBM3"
        manifest["spec"]["scaling"].update({"maxReplicas": 16, "scaleDownDelaySeconds": 600})
        kubectl.apply(manifest)

        async def fresh() -> dict[str, Any] | None:
            st = (await kube.get(MODELSERVICES, "svc", namespace)).get("status", {})
            return st if st.get("readyReplicas") and st.get("requestsPerSecond") else None

        await eventually(fresh, 120, interval=1, what="one ready replica reporting traffic")
        # 400 req/s against 62.5 req/s of capacity per replica (target 50 at 80%): 8 replicas by the rate.
        set_loads(schedule, {key: 400})
        t0 = time.monotonic()
        peak_inflight = 0.0
        sized_for_queue = None
        drained_at = None
        while time.monotonic() - t0 < 240 and drained_at is None:
            st = (await kube.get(MODELSERVICES, "svc", namespace)).get("status", {})
            inflight, rps = st.get("inflightRequests"), st.get("requestsPerSecond")
            desired, ready = st.get("desiredReplicas") or 0, st.get("readyReplicas") or 0
            await progress(kube, namespace, ("svc",), time.monotonic() - t0)
            if inflight is not None and rps is not None:
                peak_inflight = max(peak_inflight, inflight)
                # More replicas than the completions alone call for: the queue is in the demand.
                if inflight > 1000 and desired > math.ceil(rps / CAPACITY_TARGET) and sized_for_queue is None:
                    sized_for_queue = {"inflight": inflight, "rps": rps, "desired": desired}
            # Drained: judged from the pods' own gauges. Once the operator has sized for the queue it
            # holds its count, and a hold writes no status figures until `status_refresh_s` has passed.
            if peak_inflight > 1000 and ready >= 8 and twin_inflight(port, namespace, "svc") < 50:
                drained_at = time.monotonic() - t0
            await asyncio.sleep(1)
        counters = twin_counters(port)
        result = {
            "replay": "overload-queue",
            "peak_inflight": round(peak_inflight),
            "drained_after_s": None if drained_at is None else round(drained_at, 1),
            "sized_for_queue": sized_for_queue,
            "dropped_requests": counters["greenserve_twin_requests_dropped_total"],
        }
        record(result)
        assert peak_inflight > 1000, "the overload should have queued requests"
        assert sized_for_queue is not None, "the operator never sized beyond the completion rate"
        assert drained_at is not None, "the queue did not drain within 240 s"
        assert counters["greenserve_twin_requests_dropped_total"] == 0.0
        assert rbac_denials(op.logs()) == []
    except AssertionError:
        await dump_state(kube, namespace, ("svc",))
        raise
    finally:
        op.stop()
        prom.stop()
        stop_twin(proc)
        kubectl.run("delete", "msvc", "svc", "-n", namespace, "--wait=false", check=False)
