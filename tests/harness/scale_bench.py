"""Scale benchmark on the local control plane (issue 15 item 6; a command, not a timed test).

    GREENSERVE_AUDIT=1 GREENSERVE_CLUSTER=gs-scale bash tests/harness/cluster.sh up
    python tests/harness/scale_bench.py --n 100

The operator runs as in the integration tests: `python -m greenserve run --standalone` with the Helm chart's
ServiceAccount token, RBAC and admission policy (tests/support/chart.py), here with the chart's default
intervals (resync 15 s, consolidation 30 s) and reading a real Prometheus (Debian's package, as
tests/integration_prom does) that scrapes the digital twin (tests/harness/twin.py, SIMULATED per-pod
metrics). The command creates N CPU-serving ModelServices (kwok runs their pods) and prints:

* the time until all N are `Ready=True`, and the time beyond the control plane's own pod-Ready time (the
  moment every ModelService has a Ready pod);
* the operator's CPU-seconds and peak RSS (VmHWM), from /proc;
* the time until a spec patch of all N shows in `status.observedGeneration`, sent once the control
  plane has gone quiet after the creation (the deployment controller's status backlog outlasts pod-Ready);
* queries sent to Prometheus per resync tick (from Prometheus' own `prometheus_http_requests_total`) and the
  operator's API requests by verb and resource (kube-apiserver audit log, tests/harness/api_requests.py),
  over a window with all N idle and one with load on `--busy-fraction` of them.

A summary is written to .harness/scale-bench-N.json. Everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
# This checkout's operator, here and in the processes started below (the twin, the operator), not a
# greenserve installed in the environment.
SOURCES = [str(REPO / "operator"), str(REPO / "serving-image")]
sys.path[:0] = [*SOURCES, str(REPO / "tests"), str(REPO / "tests" / "harness")]
os.environ["PYTHONPATH"] = os.pathsep.join([*SOURCES, *filter(None, [os.environ.get("PYTHONPATH")])])

import api_requests  # noqa: E402

from greenserve.api import constants as c  # noqa: E402
from greenserve.cluster.client import (  # noqa: E402
    CONFIGMAPS,
    DEPLOYMENTS,
    MODELSERVICES,
    PDBS,
    PODS,
    SERVICES,
    ApiError,
    KubeClient,
    Resource,
    load_kubeconfig,
)
from integration_prom import prom_server  # noqa: E402
from support.chart import (  # noqa: E402
    chart_operator_env,
    operator_kubeconfig_from_chart,
    uninstall,
)
from support.kube import Kubectl, OperatorProcess, harness_bin  # noqa: E402
from support.paths import harness_kubeconfig  # noqa: E402

STATE = REPO / ".harness"
TWIN = REPO / "tests" / "harness" / "twin.py"
TARGET_RPS = 50.0


def modelservice(namespace: str, name: str) -> dict[str, Any]:
    """A small CPU-serving ModelService: kwok runs its pods without a GPU or an image."""
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": "m", "storageUri": "/models/m"},
            "runtime": {
                "image": "tensorflow/serving:2.18.0",
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
            },
            "gpu": {"count": 0},
            "scaling": {"minReplicas": 1, "maxReplicas": 4, "target": TARGET_RPS},
        },
    }


PODS_PER_NODE = 110  # the kubelet's default max-pods


def cpu_nodes(n: int) -> list[dict[str, Any]]:
    """Enough kwok CPU nodes for `n` one-replica ModelServices (the harness has one, for 110 pods), with
    room for a scale-up of the busy ones."""
    count = -(-(n + n // 2) // PODS_PER_NODE)
    return [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": f"scale-bench-{i}",
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": f"scale-bench-{i}",
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    "greenserve.io/scale-bench": "true",
                },
            },
            "spec": {"providerID": f"kwok://scale-bench-{i}"},
            "status": {
                "allocatable": {"cpu": "32", "memory": "128Gi", "pods": str(PODS_PER_NODE)},
                "capacity": {"cpu": "32", "memory": "128Gi", "pods": str(PODS_PER_NODE)},
            },
        }
        for i in range(count)
    ]


def wait_nodes_ready(admin: Kubectl, count: int, timeout: float = 120.0) -> None:
    """Poll (kubectl wait fails at once on a node with no conditions yet)."""
    query = '{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}'
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = admin.run(
            "get", "node", "-l", "greenserve.io/scale-bench=true", "-o", f"jsonpath={query}", check=False
        )
        if got.stdout.split().count("True") >= count:
            return
        time.sleep(1.0)
    raise SystemExit(f"the {count} kwok CPU nodes are not Ready after {timeout:.0f} s")


def ready(obj: dict[str, Any]) -> bool:
    conds = (obj.get("status") or {}).get("conditions") or []
    return any(x.get("type") == "Ready" and x.get("status") == "True" for x in conds)


async def bounded(items: list[Any], fn: Callable[[Any], Awaitable[None]], limit: int = 16) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(item: Any) -> None:
        async with sem:
            await fn(item)

    await asyncio.gather(*(one(i) for i in items))


class Proc:
    """The operator's CPU time and peak RSS from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick  # utime, stime

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def prometheus_queries(url: str) -> float:
    """Queries Prometheus has answered so far (instant and range), by its own counter."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("prometheus_http_requests_total{") and (
            'handler="/api/v1/query"' in line or 'handler="/api/v1/query_range"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _follow(
    kube: KubeClient, res: Any, namespace: str, seen: Callable[[dict[str, Any] | None, str], None]
) -> None:
    """List then watch `res` in `namespace` for ever, handing each object (None when deleted) to `seen`."""
    while True:
        cont: str | None = None
        version = ""
        while True:
            items, rv, cont = await kube.list_page(res, namespace, limit=500, cont=cont)
            version = version or rv
            for obj in items:
                seen(obj, obj["metadata"]["name"])
            if cont is None:
                break
        while True:
            gone = False
            async for event in kube.watch(res, version, namespace, timeout_s=60):
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":  # 410 Gone: list again
                    gone = True
                    break
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if event.get("type") in ("ADDED", "MODIFIED"):
                    seen(obj, obj["metadata"]["name"])
                elif event.get("type") == "DELETED":
                    seen(None, obj["metadata"]["name"])
            if gone:
                break


async def wait_all(
    kube: KubeClient,
    namespace: str,
    n: int,
    timeout: float,
    t0: float,
    at_all: Callable[[], None] = lambda: None,
    lag_s: float = 300.0,
) -> dict[str, float]:
    """Seconds until every ModelService had a Ready pod ("pods"), a Deployment whose status counts a
    ready replica ("deployments": the deployment controller's view, which lags the pods) and Ready=True
    ("all"), each stamped when the watch event that completed it arrived. `at_all` runs with the event
    that completes "all"; the wait then goes on for the deployments at most `lag_s` more.
    (Polling LISTs of all N ModelServices and pods took up to 14 s each at N = 1,000 and made the gaps
    as coarse as the poll.)"""
    msvc_ready: dict[str, bool] = {}
    pod_of: dict[str, tuple[str, bool]] = {}  # pod name -> (its ModelService, Ready)
    dep_ready: dict[str, bool] = {}
    stamps: dict[str, float] = {}

    def check() -> None:
        now = time.monotonic() - t0
        with_pod = {m for m, ok in pod_of.values() if ok}
        if "pods" not in stamps and len(with_pod) >= n:
            stamps["pods"] = now
        if "deployments" not in stamps and sum(dep_ready.values()) >= n:
            stamps["deployments"] = now
        if "all" not in stamps and "pods" in stamps and sum(msvc_ready.values()) >= n:
            stamps["all"] = now
            at_all()

    def on_msvc(obj: dict[str, Any] | None, name: str) -> None:
        if obj is None:
            msvc_ready.pop(name, None)
        else:
            msvc_ready[name] = ready(obj)
        check()

    def on_pod(obj: dict[str, Any] | None, name: str) -> None:
        label = ((obj or {}).get("metadata", {}).get("labels") or {}).get(c.LABEL_MODELSERVICE)
        if obj is None or label is None:
            pod_of.pop(name, None)
        else:
            pod_of[name] = (label, ready(obj))
        check()

    def on_deployment(obj: dict[str, Any] | None, name: str) -> None:
        labels = (obj or {}).get("metadata", {}).get("labels") or {}
        if obj is None or c.LABEL_MODELSERVICE not in labels:
            dep_ready.pop(name, None)
        else:
            dep_ready[name] = int((obj.get("status") or {}).get("readyReplicas") or 0) > 0
        check()

    followers = [
        asyncio.create_task(_follow(kube, MODELSERVICES, namespace, on_msvc)),
        asyncio.create_task(_follow(kube, PODS, namespace, on_pod)),
        asyncio.create_task(_follow(kube, DEPLOYMENTS, namespace, on_deployment)),
    ]
    deadline = time.monotonic() + timeout
    last = ""
    try:
        # Until the deployment controller's view has caught up too: it lags pod-Ready by a minute at
        # N = 1,000 (the operator's Ready does not wait for it; `beyond_deployments_s` is then negative).
        while time.monotonic() < deadline and not {"all", "deployments"} <= stamps.keys():
            if "all" in stamps:
                deadline = min(deadline, t0 + stamps["all"] + lag_s)
            for task in followers:
                if task.done():
                    task.result()  # a follower's error ends the wait with it
            with_pod = {m for m, ok in pod_of.values() if ok}
            line = f"ModelServices Ready {sum(msvc_ready.values())}/{n}, with a Ready pod {len(with_pod)}/{n}"
            if line != last:
                print(f"    [{time.monotonic() - t0:6.1f} s] {line}", flush=True)
                last = line
            await asyncio.sleep(1.0)
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    return stamps


def _caught_up(m: dict[str, Any]) -> bool:
    return (m.get("status") or {}).get("observedGeneration") == m["metadata"].get("generation")


async def wait_observed(kube: KubeClient, namespace: str, n: int, timeout: float, t0: float) -> float | None:
    """Seconds from `t0` until all `n` ModelServices show their generation in status.observedGeneration,
    followed by a list and then a watch of the ModelServices. (A LIST of all N every half second loaded
    the API server whose answers it waits for: at N = 1,000 on the 2-core machine one took over 30 s
    during the fleet patch, and the measurement failed.)"""

    caught: dict[str, bool] = {}
    done = asyncio.Event()

    def seen(obj: dict[str, Any] | None, name: str) -> None:
        if obj is None:
            caught.pop(name, None)
        else:
            caught[name] = _caught_up(obj)
        if sum(caught.values()) >= n and not done.is_set():
            done.set()
            stamp.append(time.monotonic() - t0)

    stamp: list[float] = []
    follower = asyncio.create_task(_follow(kube, MODELSERVICES, namespace, seen))
    try:
        waiter = asyncio.create_task(done.wait())
        await asyncio.wait({follower, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if follower.done():
            follower.result()
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    return stamp[0] if stamp else None


# Verbs that only the creation backlog (or a real change) causes: while any shows, the fleet is not idle.
BACKLOG_VERBS = ("apply", "create", "update", "delete")


# Writes that go on at rest: leader and node Leases, and node heartbeats.
AT_REST = ("leases.", "nodes/status")


def wait_quiet(audit: Path, user: str | None, quiet_s: float, timeout: float) -> tuple[float, bool]:
    """Wait until `user` (None: every client of the API server) has sent no apply/create/update/delete,
    Leases and node heartbeats aside, and no ModelService status write for `quiet_s`: the creation and
    patch backlog has cleared, so that what follows measures itself, not catching up. Returns the
    seconds waited and whether it went quiet before `timeout`."""
    t0 = time.monotonic()
    offset, quiet_since = api_requests.end_offset(audit), t0
    writes = (*BACKLOG_VERBS, "patch") if user is None else BACKLOG_VERBS
    while time.monotonic() - t0 < timeout:
        time.sleep(min(5.0, quiet_s))
        end = api_requests.end_offset(audit)
        w = api_requests.count(audit, offset, end, user, 5.0)
        offset = end
        # The leader Lease is renewed at rest: not backlog. Status writes are: a fleet at rest with
        # unchanged figures writes none (the metrics tick's first look at every ModelService does).
        busy = {
            f"{v} {res}": n
            for (v, res), n in w.by_resource.items()
            if (v in writes and not res.startswith(AT_REST)) or res.startswith("modelservices/status")
        }
        if busy:
            quiet_since = time.monotonic()
            print(f"    [{time.monotonic() - t0:6.1f} s] still catching up: {busy}", flush=True)
        elif time.monotonic() - quiet_since >= quiet_s:
            return time.monotonic() - t0, True
    return time.monotonic() - t0, False


def _containers_request_cpu(dep: dict[str, Any] | None) -> set[str]:
    if dep is None:
        return set()
    pod = dep["spec"]["template"]["spec"]
    return {str((x.get("resources") or {}).get("requests", {}).get("cpu")) for x in pod["containers"]}


async def spec_change_latency(kube: KubeClient, ns: str, names: list[str], cpu: str) -> list[float]:
    """Seconds from a ModelService spec patch (the serving container's CPU request) being accepted until
    its Deployment carries it, one ModelService at a time; polled every 50 ms."""
    out = []
    for name in names:
        t0 = time.monotonic()
        await kube.patch(
            MODELSERVICES, name, {"spec": {"runtime": {"resources": {"requests": {"cpu": cpu}}}}}, ns
        )
        sent = time.monotonic()
        while time.monotonic() - sent < 60:
            if cpu in _containers_request_cpu(await kube.get_or_none(DEPLOYMENTS, name, ns)):
                out.append(round(time.monotonic() - t0, 2))
                break
            await asyncio.sleep(0.05)
        else:
            out.append(float("inf"))
    return out


async def repair_latency(kube: KubeClient, ns: str, name: str) -> dict[str, float]:
    """Seconds from deleting each owned object of `name` until it exists again (a new uid), polled every
    100 ms; one object at a time."""
    out: dict[str, float] = {}
    owned: list[tuple[str, Resource, str]] = [
        ("Service", SERVICES, name),
        ("PodDisruptionBudget", PDBS, name),
        ("ConfigMap", CONFIGMAPS, f"{name}-config"),
        ("Deployment", DEPLOYMENTS, name),
    ]
    for kind, res, obj in owned:
        before = await kube.get_or_none(res, obj, ns)
        if before is None:
            out[kind] = float("nan")
            continue
        t0 = time.monotonic()
        await kube.delete(res, obj, ns)
        while time.monotonic() - t0 < 120:
            now = await kube.get_or_none(res, obj, ns)
            if now is not None and now["metadata"]["uid"] != before["metadata"]["uid"]:
                out[kind] = round(time.monotonic() - t0, 2)
                break
            await asyncio.sleep(0.1)
        else:
            out[kind] = float("inf")
    return out


@dataclass
class Sample:
    """One window's figures (`window`)."""

    requests: api_requests.Window
    queries: float  # Prometheus queries answered
    cpu_s: float  # operator CPU-seconds
    passes: float  # metrics ticks the operator completed


def window(
    audit: Path, user: str, seconds: float, prom_url: str, proc: Proc, operator: OperatorProcess
) -> Sample:
    """API requests, Prometheus queries, operator CPU-seconds and metrics ticks over `seconds`."""
    q0, cpu0, start = prometheus_queries(prom_url), proc.cpu_s(), api_requests.end_offset(audit)
    p0 = operator.passes("resync")
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    w = api_requests.count(audit, start, api_requests.end_offset(audit), user, elapsed)
    return Sample(w, prometheus_queries(prom_url) - q0, proc.cpu_s() - cpu0, operator.passes("resync") - p0)


def start_processes(
    args: argparse.Namespace,
    kubeconfig: Path,
    work: Path,
    schedule: Path,
    sa: Path,
    op_ns: str,
    started: list[Any],
) -> tuple[prom_server.PrometheusServer, OperatorProcess, Proc]:
    """The twin, Prometheus scraping it, and the operator reading that Prometheus; waits for the operator's
    metrics endpoint."""
    twin_port = free_port()
    with (work / "twin.log").open("wb") as log:
        started.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(TWIN),
                    "--port",
                    str(twin_port),
                    "--interval",
                    "2",
                    "--schedule-file",
                    str(schedule),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            )
        )
    binary = prom_server.find_or_install()
    if not binary:
        raise SystemExit("Debian's prometheus package could not be installed (tests/harness/prometheus.sh)")
    (work / "prom").mkdir()
    prom = prom_server.start(
        binary,
        work / "prom",
        [
            {
                "job_name": "greenserve-twin",
                "honor_labels": True,
                "scrape_interval": "5s",
                "static_configs": [{"targets": [f"127.0.0.1:{twin_port}"]}],
            }
        ],
    )
    started.append(prom)
    operator = OperatorProcess(
        sa,
        work,
        extra_env={
            **chart_operator_env(op_ns),
            "GREENSERVE_PROMETHEUS_URL": prom.url,
            "GREENSERVE_RECONCILE_INTERVAL": str(args.reconcile_interval),
            "GREENSERVE_CONSOLIDATION": "true",
            "GREENSERVE_FULL_RESYNC": str(args.full_resync),
            "GREENSERVE_STATUS_REFRESH": str(args.status_refresh),
        },
        verbose=False,
    )
    operator.start()
    started.append(operator)
    assert operator.proc is not None
    proc = Proc(operator.proc.pid)
    print(f"==> operator pid {proc.pid} (log {work}/operator-1.log), Prometheus {prom.url}", flush=True)
    deadline = time.monotonic() + 120
    while not _metrics_up(operator) and time.monotonic() < deadline:
        time.sleep(0.5)
    return prom, operator, proc


async def run(args: argparse.Namespace) -> dict[str, Any]:
    kubeconfig = harness_kubeconfig()
    if kubeconfig is None:
        raise SystemExit("no local control plane: run tests/harness/cluster.sh up")
    audit = api_requests.audit_log_path()
    if not audit.exists():
        raise SystemExit(f"{audit} missing: start the cluster with GREENSERVE_AUDIT=1 (API request counts)")
    admin = Kubectl(kubeconfig)
    os.environ["PATH"] = f"{harness_bin()}:{os.environ['PATH']}"
    admin.run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    admin.wait_established(c.CRD_NAME)
    op_ns, ns = "scale-bench-operator", "scale-bench"
    helm = harness_bin() / "helm"
    work = Path(tempfile.mkdtemp(prefix="greenserve-scale-"))
    sa = operator_kubeconfig_from_chart(admin, helm, op_ns, out_dir=work)
    # The kubeconfig's user is named after the ServiceAccount (tests/support/chart.py).
    user = str(yaml.safe_load(sa.read_text())["users"][0]["name"])
    for _ in range(300):  # a previous run's namespace may still be terminating
        phase = admin.run("get", "namespace", ns, "-o", "jsonpath={.status.phase}", check=False)
        if phase.returncode != 0 or phase.stdout.strip() != "Terminating":
            break
        await asyncio.sleep(2.0)
    admin.run("create", "namespace", ns, check=False)
    nodes = cpu_nodes(args.n)
    admin.run("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
    wait_nodes_ready(admin, len(nodes))
    print(f"==> {len(nodes)} kwok CPU nodes for the pods", flush=True)
    names = [f"m{i:04d}" for i in range(args.n)]
    busy = names[: max(1, round(args.n * args.busy_fraction))]
    schedule = work / "schedule.json"
    schedule.write_text("{}")
    started: list[Any] = []  # processes, Prometheus and the operator, stopped in reverse order
    result: dict[str, Any] = {"n": args.n, "reconcile_interval_s": args.reconcile_interval}
    kube = KubeClient(load_kubeconfig(kubeconfig))
    try:
        prom, operator, proc = await asyncio.to_thread(
            start_processes, args, kubeconfig, work, schedule, sa, op_ns, started
        )

        print(f"==> create {args.n} ModelServices in {ns}", flush=True)
        t0 = time.monotonic()

        async def create(name: str) -> None:
            try:
                await kube.create(MODELSERVICES, modelservice(ns, name), ns)
            except ApiError as err:
                if not err.conflict:
                    raise

        await bounded(names, create)
        result["create_s"] = round(time.monotonic() - t0, 1)
        print(f"    created in {result['create_s']} s", flush=True)

        def at_ready() -> None:
            result["cpu_s_to_ready"] = round(proc.cpu_s(), 1)
            result["peak_rss_mb_to_ready"] = round(proc.peak_rss_mb(), 1)

        stamps = await wait_all(kube, ns, args.n, args.timeout, t0, at_ready)
        pods_at, deps_at, all_at = stamps.get("pods"), stamps.get("deployments"), stamps.get("all")
        result["pods_ready_s"] = pods_at and round(pods_at, 1)
        result["deployments_ready_s"] = deps_at and round(deps_at, 1)
        result["all_ready_s"] = all_at and round(all_at, 1)
        result["beyond_pods_s"] = round(all_at - pods_at, 1) if all_at and pods_at else None
        # Negative: the operator's Ready came first (it follows the pods' own watch events).
        result["beyond_deployments_s"] = round(all_at - deps_at, 1) if all_at and deps_at else None
        if all_at is None:  # timed out: the figures at the end of the wait
            at_ready()

        # The deployment controller still writes the Deployments' status (and the operator follows it)
        # well after every pod is Ready: a patch sent into that backlog measures the backlog too.
        print("==> wait until the creation backlog has cleared (no write by anyone for 10 s)", flush=True)
        waited, quiet = await asyncio.to_thread(wait_quiet, audit, None, 10.0, 300.0)
        result["settled_before_patch_s"] = round(waited, 1) if quiet else None
        print(f"    {'quiet' if quiet else 'NOT quiet'} after {waited:.0f} s", flush=True)
        print(f"==> patch all {args.n} (spec.scaling.maxReplicas 4 -> 5)", flush=True)
        t1 = time.monotonic()

        async def patch(name: str) -> None:
            await kube.patch(MODELSERVICES, name, {"spec": {"scaling": {"maxReplicas": 5}}}, ns)

        await bounded(names, patch)
        result["patch_send_s"] = round(time.monotonic() - t1, 1)
        observed = await wait_observed(kube, ns, args.n, args.timeout, t1)
        result["patch_observed_s"] = observed and round(observed, 1)
        print(f"    sent in {result['patch_send_s']} s, observed after {result['patch_observed_s']} s")

        print("==> wait until the backlog has cleared (no write for 30 s)", flush=True)
        waited, quiet = await asyncio.to_thread(wait_quiet, audit, user, 30.0, args.timeout)
        result["quiet_after_s"] = round(waited, 1)
        result["went_quiet"] = quiet
        print(f"    {'quiet' if quiet else 'NOT quiet'} after {waited:.0f} s", flush=True)
        print(f"==> idle: {args.window:g} s with no load (load average {_loadavg()})", flush=True)
        sample = await asyncio.to_thread(window, audit, user, args.window, prom.url, proc, operator)
        result["idle"] = _phase(sample, args)
        print(api_requests.table(sample.requests, f"idle, {args.n} ModelServices"))

        print("==> a spec change reaches its Deployment (5 ModelServices, one at a time)", flush=True)
        result["spec_to_deployment_s"] = await spec_change_latency(kube, ns, names[-5:], "20m")
        print(f"    {result['spec_to_deployment_s']} s", flush=True)
        print(f"==> deleted owned objects of {names[-6]} come back", flush=True)
        result["repair_s"] = await repair_latency(kube, ns, names[-6])
        print(f"    {result['repair_s']} s", flush=True)

        rate = 2.5 * TARGET_RPS
        print(f"==> busy: {rate:g} req/s on {len(busy)} of {args.n} for {args.busy_window:g} s", flush=True)
        schedule.write_text(json.dumps({f"{ns}/{name}": f"0:{rate}" for name in busy}))
        await asyncio.sleep(args.settle)
        sample = await asyncio.to_thread(window, audit, user, args.busy_window, prom.url, proc, operator)
        result["busy"] = _phase(sample, args)
        print(api_requests.table(sample.requests, f"busy ({len(busy)} loaded), {args.n} ModelServices"))
        result["cpu_s_total"] = round(proc.cpu_s(), 1)
        result["peak_rss_mb"] = round(proc.peak_rss_mb(), 1)
        return result
    finally:
        _write(result, args.n)  # what was measured survives a failing clean-up
        if not args.keep:
            print("==> clean up", flush=True)
            # The processes first (nothing of theirs holds a finalizer), then the namespace with all
            # its objects in one request: a `kubectl delete msvc --all` of 1,000 timed out.
            for h in reversed(started):
                _quietly(h.terminate if isinstance(h, subprocess.Popen) else h.stop)
                if isinstance(h, subprocess.Popen):
                    _quietly(lambda h=h: h.wait(timeout=30))
            for cmd in (
                ("delete", "namespace", ns, "--wait=false"),
                ("delete", "node", "-l", "greenserve.io/scale-bench=true", "--wait=false"),
            ):
                _quietly(lambda cmd=cmd: admin.run(*cmd, check=False))
            _quietly(lambda: uninstall(admin, helm, op_ns))
            _quietly(lambda: admin.run("delete", "namespace", op_ns, "--wait=false", check=False))
        await kube.close()


def _quietly(step: Callable[[], object]) -> None:
    try:
        step()
    except Exception as err:  # one failing clean-up step must not skip the others
        print(f"    clean-up step failed: {err}", flush=True)


def _write(result: dict[str, Any], n: int) -> Path:
    out = STATE / f"scale-bench-{n}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return out


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _metrics_up(operator: OperatorProcess) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=2):
            return True
    except OSError:
        return False


def _phase(sample: Sample, args: argparse.Namespace) -> dict[str, Any]:
    w = sample.requests
    return {
        "seconds": round(w.seconds, 1),
        "api_requests_per_s": round(w.total / w.seconds, 2),
        "all_users_requests_per_s": round(w.all_users / w.seconds, 2),
        "by_verb_per_s": {k: round(v / w.seconds, 2) for k, v in w.by_verb.most_common()},
        "by_resource_per_s": {
            f"{k[0]} {k[1]}": round(v / w.seconds, 2) for k, v in w.by_resource.most_common()
        },
        # A tick's queries come in one burst: per interval, a window holds one burst more or less
        # (60 s of 15 s ticks read 12, 16 or 20); per completed tick it does not.
        "prometheus_queries_per_tick": round(sample.queries / w.seconds * args.reconcile_interval, 1),
        "ticks": sample.passes,
        "prometheus_queries_per_completed_tick": round(sample.queries / sample.passes, 1)
        if sample.passes
        else None,
        "seconds_per_tick": round(w.seconds / sample.passes, 1) if sample.passes else None,
        "load_average_after": _loadavg(),
        "operator_cpu_percent_of_a_core": round(100 * sample.cpu_s / w.seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--n", type=int, default=100, help="ModelServices to create")
    p.add_argument("--busy-fraction", type=float, default=0.1, help="share of them given load")
    p.add_argument("--window", type=float, default=300.0, help="seconds of the idle window (issue 16: 5 min)")
    p.add_argument("--busy-window", type=float, default=120.0, help="seconds of the busy window")
    p.add_argument("--settle", type=float, default=20.0, help="seconds after the load starts")
    p.add_argument("--reconcile-interval", type=float, default=15.0, help="the chart's default")
    p.add_argument("--full-resync", type=float, default=900.0, help="the chart's; shorter is stricter")
    p.add_argument("--status-refresh", type=float, default=300.0, help="the chart's default")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for Ready / observed")
    p.add_argument("--keep", action="store_true", help="leave everything running")
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    print("==> summary")
    for key in (
        "n",
        "create_s",
        "pods_ready_s",
        "deployments_ready_s",
        "all_ready_s",
        "beyond_pods_s",
        "beyond_deployments_s",
        "cpu_s_to_ready",
        "peak_rss_mb_to_ready",
        "peak_rss_mb",
        "settled_before_patch_s",
        "patch_send_s",
        "patch_observed_s",
        "quiet_after_s",
        "spec_to_deployment_s",
        "repair_s",
    ):
        print(f"    {key:<18} {result.get(key)}")
    for phase in ("idle", "busy"):
        r = result.get(phase) or {}
        print(
            f"    {phase}: {r.get('api_requests_per_s')} API requests/s, "
            f"{r.get('prometheus_queries_per_tick')} Prometheus queries per "
            f"{args.reconcile_interval:g} s "
            f"({r.get('prometheus_queries_per_completed_tick')} per completed tick, "
            f"{r.get('ticks')} ticks, {r.get('seconds_per_tick')} s each), "
            f"operator CPU {r.get('operator_cpu_percent_of_a_core')}% of a core"
        )
    print(f"    written to {_write(result, args.n)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
