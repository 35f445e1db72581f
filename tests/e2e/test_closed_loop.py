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

from greenserve.api import conditions as cond
from greenserve.api import constants as c
from greenserve.cluster.client import DEPLOYMENTS, MODELSERVICES, NODES, PODS, KubeClient
from integration_prom import prom_server
from support.kube import Kubectl, OperatorProcess, eventually, rbac_denials
from support.paths import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
PRODUCT = "NVIDIA-L4"  # only the Karpenter NodePool's nodes carry it (tests/harness/karpenter/nodepool.yaml)
CAPACITY_TARGET = 50  # req/s per replica at target load
RESULTS = REPO / ".harness" / "e2e-results.json"


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
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({self.key: f"0:{rps}"}))
        os.replace(tmp, self.path)


@pytest.fixture
def twin(kubeconfig: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = _free_port()
    schedule = tmp_path / "schedule.json"
    schedule.write_text("{}")
    log = open(tmp_path / "twin.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "greenserve",
            "twin",
            "--port",
            str(port),
            "--interval",
            "1",
            "--schedule-file",
            str(schedule),
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
    yield proc, port, schedule
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def prometheus(twin: tuple[subprocess.Popen[bytes], int, Path], tmp_path: Path) -> Iterator[str]:
    binary = prom_server.find_or_install()
    assert binary, "Debian's prometheus package could not be installed (tests/harness/prometheus.sh)"
    _, port, _ = twin
    server = prom_server.start(
        binary,
        tmp_path,
        [
            {
                "job_name": "greenserve-twin",
                "honor_labels": True,  # the twin sets the namespace/pod/node labels Kubernetes SD would add
                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
            }
        ],
    )
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
    ):
        m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
        out[name] = float(m.group(1)) if m else float("nan")
    return out


async def l4_nodes(kube: KubeClient) -> list[str]:
    nodes = await kube.list_objects(NODES, label_selector=f"{c.GPU_PRODUCT_LABEL}={PRODUCT}")
    return [n["metadata"]["name"] for n in nodes if not n["metadata"].get("deletionTimestamp")]


async def ready_pods(kube: KubeClient, ns: str) -> list[dict[str, Any]]:
    pods = await kube.list_objects(PODS, ns, label_selector=f"{c.LABEL_MODELSERVICE}=svc")
    return [
        p
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and any(
            x["type"] == "Ready" and x["status"] == "True" for x in p.get("status", {}).get("conditions", [])
        )
    ]


@pytest.mark.parametrize("consolidation", [True, False], ids=["consolidation-on", "consolidation-off"])
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
    op = OperatorProcess(
        operator_kubeconfig,
        tmp_path / "op",
        extra_env={
            **operator_env,
            "GREENSERVE_PROMETHEUS_URL": prometheus,
            "GREENSERVE_METRICS_WINDOW": "10",
            "GREENSERVE_METRICS_STALE_AFTER": "15",
            "GREENSERVE_CONSOLIDATION": "true" if consolidation else "false",
            "GREENSERVE_CONSOLIDATION_INTERVAL": "6",
        },
    )
    (tmp_path / "op").mkdir()
    load = Load(schedule, f"{namespace}/svc")
    load.set(20)
    op.start()
    t0 = time.monotonic()
    start = twin_counters(twin_port)
    try:
        kubectl.apply(
            {
                "apiVersion": c.API_VERSION,
                "kind": c.KIND,
                "metadata": {"name": "svc", "namespace": namespace},
                "spec": {
                    "model": {"name": "svc", "storageUri": "/models/svc"},
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
        )

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
        moves = sum(
            1
            for e in kubectl.run("get", "events", "-n", namespace, "-o", "json").stdout.split("\n")
            if '"reason": "ReplicaMoved"' in e
        )
        result = {
            "consolidation": consolidation,
            "seconds": round(elapsed, 1),
            "peak_gpu_nodes": len(peak_nodes),
            "gpu_node_hours": round(
                (
                    end["greenserve_twin_gpu_node_seconds_total"]
                    - start["greenserve_twin_gpu_node_seconds_total"]
                )
                / 3600,
                4,
            ),
            "energy_kwh_simulated": round(
                (
                    end["greenserve_twin_cluster_energy_joules_total"]
                    - start["greenserve_twin_cluster_energy_joules_total"]
                )
                / 3.6e6,
                5,
            ),
            "moves": moves,
            "modelservice_energy_j": msvc["status"].get("energyJoules"),
        }
        print("E2E RESULT", json.dumps(result))
        RESULTS.parent.mkdir(exist_ok=True)
        with RESULTS.open("a") as fh:
            fh.write(json.dumps(result) + "\n")

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
        await asyncio.sleep(10)
        dep = await kube.get(DEPLOYMENTS, "svc", namespace)
        assert dep["spec"]["replicas"] == 1
        assert rbac_denials(op.logs()) == []
    finally:
        op.stop()
        kubectl.run("delete", "msvc", "svc", "-n", namespace, "--wait=false", check=False)


async def dump_state(kube: KubeClient, ns: str) -> None:
    """What a failed wait leaves to read: the ModelService's status, its pods and the GPU nodes."""
    body = await kube.get(MODELSERVICES, "svc", ns)
    status = {k: v for k, v in body.get("status", {}).items() if k not in ("energyCounters",)}
    print("STATE status", json.dumps(status, indent=1))
    for p in await kube.list_objects(PODS, ns, label_selector=f"{c.LABEL_MODELSERVICE}=svc"):
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
