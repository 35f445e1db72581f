"""greenserve end to end on the real node: the shipped images, chart and pod spec, with real containers.

In order (one module, one operator, one ModelService; each test builds on the previous one):

1. the operator is installed with ``helm install`` from charts/greenserve as a pod on the real node, from
   the locally built operator image, with only the chart's RBAC;
2. a ModelService serving a real SavedModel (made here; a PVC bound to a hostPath volume) becomes Ready
   through the pods' real readiness probes, in a namespace that enforces Pod Security "restricted";
3. HTTP predictions through the ModelService's Service (a kube-proxy ClusterIP) return the model's outputs;
4. a bounded client load scales it up, a lower one scales it in, and no client request fails (the real
   preStop sleep and the agent's SIGTERM drain);
5. with two real nodes (``GREENSERVE_REAL_NODES=2``), the consolidator moves the replica make-before-break
   off the less-used node under a bounded client load, and no client request fails;
6. a second ModelService with ``minReplicas: 0`` goes to zero when idle (its Service routed to the chart's
   activator), and a client load started at zero is answered once its replica is back, with no failed
   request; a request that asks for a shorter wait than the cold start gets 503 with Retry-After.

Figures (seconds from ``helm install`` to the operator Ready, from ``kubectl apply`` to the first correct
prediction, the scale-up reaction, requests sent and failed during scale-in and during the move, idle to
zero, the first request at zero to its answer, requests sent and failed from zero) are printed
and written to .harness/realnode-figures.json.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from realnode_support import (
    Load,
    RealNodes,
    get_json,
    predict,
    predicts_correctly,
    restricted_namespace,
    wait_for,
)
from realnode_support import model_store as model_store_on

from greenserve import contract as k
from integration_prom import prom_server
from support.chart import CHART, helm, render
from support.kube import Kubectl, harness_bin, refusals
from support.paths import REPO

pytestmark = pytest.mark.realnode

OPERATOR_NS = "greenserve-rn"
RELEASE = "greenserve"
MODEL = "affine"
FIGURES: dict[str, float] = {}


def assert_closed_and_announced(kubectl: Kubectl, node: str, ns: str, involved: str) -> None:
    """A consolidation move's end state: the emptied node keeps the consolidating taint (for the node
    autoscaler to remove it), and the move's two Events are on `involved` (the ModelService, or the
    pool pod that moved)."""
    taints = get_json(kubectl, "node", node)["spec"].get("taints", [])
    assert any(t["key"] == CONSOLIDATING_TAINT for t in taints), taints
    reasons = kubectl.run(
        "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={involved}",
        "-o", "jsonpath={.items[*].reason}",
    ).stdout.split()  # fmt: skip
    assert "ConsolidationMove" in reasons and "ReplicaMoved" in reasons, reasons


def _record(name: str, value: float) -> None:
    FIGURES[name] = round(value, 2)
    print(f"[realnode figure] {name} = {value:.2f}")
    out = REPO / ".harness" / "realnode-figures.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(FIGURES, indent=2, sort_keys=True))


@pytest.fixture(scope="module")
def images(real_nodes: RealNodes) -> dict[str, str]:
    """`make images` (tests/harness/images.sh): the operator and serving (CPU test variant) images as OCI
    archives, imported into every real node's containerd."""
    out = subprocess.run(
        ["bash", str(REPO / "tests/harness/images.sh")],
        check=True,
        capture_output=True,
        text=True,
        timeout=3000,
    ).stdout
    found = dict(shlex.split(line)[0].split("=", 1) for line in out.splitlines() if "=" in line)
    archives = [found["GREENSERVE_OPERATOR_ARCHIVE"], found["GREENSERVE_SERVING_ARCHIVE"]]
    subprocess.run(["bash", str(REPO / "tests/harness/real_node.sh"), "import", *archives], check=True)
    return found


@pytest.fixture(scope="module")
def operator(kubectl: Kubectl, images: dict[str, str], real_nodes: RealNodes) -> Iterator[str]:
    """The chart installed as users install it, the operator pinned to a real node."""
    kubectl.run("apply", "--server-side", "-f", str(REPO / "crds"))
    kubectl.wait_established("modelservices.greenserve.io")
    kubectl.run("create", "namespace", OPERATOR_NS, check=False)
    repo, _, tag = images["GREENSERVE_OPERATOR_IMAGE"].rpartition(":")
    values = {
        "image.repository": repo,
        "image.tag": tag,
        "image.pullPolicy": "Never",
        "operator.nodeSelector": {"kubernetes.io/hostname": real_nodes.names[0]},
        "operator.tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        # The scale-to-zero activator runs on a real node too: a kwok node's pod has an address nobody
        # answers on.
        "activator.nodeSelector": {"kubernetes.io/hostname": real_nodes.names[0]},
        "activator.tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "operator.config.reconcileInterval": 5,
        "operator.config.consolidationInterval": 10,
    }
    helm_bin = harness_bin() / "helm"
    args = ["install", RELEASE, str(CHART), "--namespace", OPERATOR_NS]
    for key, value in values.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    t0 = time.monotonic()
    helm(helm_bin, *args, kubeconfig=kubectl.kubeconfig)
    for component in ("operator", "activator"):
        kubectl.run(
            "wait", "-n", OPERATOR_NS, "--for=condition=Ready", "pod",
            "-l", f"app.kubernetes.io/component={component}", "--timeout=180s",
        )  # fmt: skip
    _record("helm_install_to_operator_ready_s", time.monotonic() - t0)
    yield OPERATOR_NS
    logs = kubectl.run(
        "logs", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/component=operator", "--tail=300", check=False
    )
    print(logs.stdout[-8000:])
    helm(helm_bin, "uninstall", RELEASE, "--namespace", OPERATOR_NS, "--wait", kubeconfig=kubectl.kubeconfig)
    kubectl.run("delete", "namespace", OPERATOR_NS, "--wait=false", check=False)


@pytest.fixture(scope="module")
def models_ns(kubectl: Kubectl) -> Iterator[str]:
    yield from restricted_namespace(kubectl, "rn-models")


@pytest.fixture(scope="module")
def model_store(kubectl: Kubectl, models_ns: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real SavedModel on the PVC `models` (realnode_support.model_store)."""
    model_store_on(kubectl, models_ns, tmp_path_factory.mktemp("models"), [MODEL])
    return f"pvc://models/{MODEL}"


def _msvc(ns: str, storage_uri: str, image: str, product: str, **scaling: Any) -> dict[str, Any]:
    # Consolidation starts off: with two real nodes a move during the scale tests would blur what they
    # measure. The move test turns it on once it has set up the nodes (energy is not in the pod template,
    # so this rolls no pod).
    return {
        "apiVersion": "greenserve.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": MODEL, "namespace": ns},
        "spec": {
            "model": {"name": MODEL, "storageUri": storage_uri},
            "runtime": {
                "image": image,
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
            },
            "gpu": {"count": 1, "product": product},
            "scaling": {"minReplicas": 1, "maxReplicas": 3, **scaling},
            "energy": {"consolidation": False},
        },
    }


def _ready(kubectl: Kubectl, ns: str) -> dict[str, Any] | None:
    msvc = get_json(kubectl, "modelservice", MODEL, "-n", ns)
    conds = {c["type"]: c for c in msvc.get("status", {}).get("conditions", [])}
    return msvc if conds.get("Ready", {}).get("status") == "True" else None


@pytest.fixture(scope="module")
def served(
    kubectl: Kubectl,
    operator: str,
    models_ns: str,
    model_store: str,
    images: dict[str, str],
    real_nodes: RealNodes,
) -> str:
    """The ModelService applied and answering; returns its predict URL through the Service's ClusterIP."""
    t0 = time.monotonic()
    kubectl.apply(
        _msvc(models_ns, model_store, images["GREENSERVE_SERVING_IMAGE"], real_nodes.gpu_product, target=5)
    )
    svc = wait_for(
        lambda: kubectl.run(
            "get", "svc", MODEL, "-n", models_ns, "-o", "jsonpath={.spec.clusterIP}", check=False
        ).stdout.strip(),
        timeout=60,
        what="the ModelService's Service",
    )
    url = f"http://{svc}:8501/v1/models/{MODEL}:predict"
    try:
        what = "a correct prediction through the Service"
        wait_for(lambda: predicts_correctly(url), timeout=300, what=what, interval=0.2)
    except AssertionError as e:
        # Say why: the serving pods' events name the failing probe (e.g. the agent's port refusing).
        events = kubectl.run(
            "get", "events", "-n", models_ns, "--field-selector", "involvedObject.kind=Pod",
            "-o", "jsonpath={range .items[*]}{.reason}: {.message}{'\\n'}{end}", check=False,
        ).stdout  # fmt: skip
        raise AssertionError(f"{e}\nserving pods' events:\n{events[-3000:]}") from None
    _record("apply_to_first_correct_prediction_s", time.monotonic() - t0)
    return url


def test_operator_runs_as_a_pod_on_the_real_node(
    kubectl: Kubectl, operator: str, real_nodes: RealNodes
) -> None:
    pods = get_json(kubectl, "pods", "-n", operator, "-l", "app.kubernetes.io/component=operator")["items"]
    assert len(pods) == 1
    pod = pods[0]
    assert pod["spec"]["nodeName"] in real_nodes.names
    assert pod["spec"]["serviceAccountName"].startswith(RELEASE)
    # The operator reads the API through the kubernetes Service from inside the pod: its log shows kopf
    # watching ModelServices, and nothing was denied.
    logs = kubectl.run("logs", "-n", operator, pod["metadata"]["name"]).stdout
    assert refusals(logs) == [], logs[-3000:]


def test_modelservice_becomes_ready_and_predicts(
    kubectl: Kubectl, served: str, models_ns: str, real_nodes: RealNodes
) -> None:
    msvc = wait_for(lambda: _ready(kubectl, models_ns), timeout=120, what="Ready=True")
    assert msvc["status"]["readyReplicas"] >= 1
    pods = get_json(kubectl, "pods", "-n", models_ns, "-l", f"greenserve.io/modelservice={MODEL}")["items"]
    ready = [p for p in pods if p["metadata"].get("deletionTimestamp") is None]
    assert ready
    for pod in ready:
        # Real pods on real nodes, Ready through their real readiness probe, with real addresses.
        assert pod["spec"]["nodeName"] in real_nodes.names
        assert pod["status"]["podIP"].startswith("10.244.")
        (container,) = [c for c in pod["spec"]["containers"] if "readinessProbe" in c]
        assert container["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{MODEL}"
    # Correct outputs of y = 2x + 1 for a batch through kube-proxy's ClusterIP.
    xs = [-1.0, 0.0, 0.5, 10.0]
    assert predict(served, xs) == [2 * x + 1 for x in xs]


def _status(kubectl: Kubectl, ns: str) -> dict[str, Any]:
    status: dict[str, Any] = get_json(kubectl, "modelservice", MODEL, "-n", ns).get("status", {})
    return status


def _serving_pods(kubectl: Kubectl, ns: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = get_json(
        kubectl, "pods", "-n", ns, "-l", f"greenserve.io/modelservice={MODEL}"
    )["items"]
    return pods


def _is_ready(pod: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return conds.get("Ready") == "True" and pod["metadata"].get("deletionTimestamp") is None


def test_load_scales_up_then_in_without_failed_requests(
    kubectl: Kubectl, served: str, models_ns: str
) -> None:
    """A bounded load above one replica's target scales up; once it falls, the extra replicas go through
    the real preStop sleep and the agent's SIGTERM drain, and not one client request fails."""
    kubectl.run(
        "patch", "modelservice", MODEL, "-n", models_ns, "--type=merge",
        "-p", json.dumps({"spec": {"scaling": {"target": 5, "scaleDownDelaySeconds": 20}}}),
    )  # fmt: skip
    wait_for(lambda: _ready(kubectl, models_ns), timeout=60, what="Ready before the load")
    with Load(lambda: predict(served, [1.0]) == [3.0], rate=12) as load:
        t_load = time.monotonic()
        wait_for(
            lambda: (_status(kubectl, models_ns).get("desiredReplicas") or 0) >= 2,
            timeout=180,
            what="desiredReplicas >= 2 under 12 req/s (target 5 per replica)",
        )
        _record("scale_up_reaction_s", time.monotonic() - t_load)
        wait_for(
            lambda: sum(_is_ready(p) for p in _serving_pods(kubectl, models_ns)) >= 2,
            timeout=240,
            what="a second serving pod Ready",
        )
        _record("scale_up_to_second_replica_ready_s", time.monotonic() - t_load)
        up_sent, up_failed = load.between(t_load, time.monotonic())
        # The load falls below one replica's target: the operator scales in after scaleDownDelaySeconds.
        load.rate = 2
        t_in = time.monotonic()
        wait_for(
            lambda: (
                len(_serving_pods(kubectl, models_ns)) == 1
                and (_status(kubectl, models_ns).get("desiredReplicas") == 1)
            ),
            timeout=300,
            what="scale-in to one replica, the removed pods gone",
            interval=1,
        )
        t_done = time.monotonic()
    # Leaving the block waited for every request in flight, so each one sent before t_done has its outcome.
    in_sent, in_failed = load.between(t_in, t_done)
    _record("scale_in_requests_sent", in_sent)
    _record("scale_in_requests_failed", len(in_failed))
    _record("scale_up_requests_sent", up_sent)
    _record("scale_up_requests_failed", len(up_failed))
    assert in_sent > 20, "the scale-in window carried too little load to show anything"
    assert up_failed == [], up_failed[:5]
    assert in_failed == [], in_failed[:5]


def _sd_name(raw: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", raw)


def _pod_targets(kubectl: Kubectl, ns: str) -> list[dict[str, Any]]:
    """What Prometheus's Kubernetes pod discovery gives for the pods of `ns` (Debian's Prometheus is built
    without it): their address and the __meta_kubernetes_* labels the shipped relabelling reads."""
    out = []
    for pod in get_json(kubectl, "pods", "-n", ns)["items"]:
        if not pod["status"].get("podIP"):
            continue
        meta = pod["metadata"]
        labels = {
            "__meta_kubernetes_namespace": meta["namespace"],
            "__meta_kubernetes_pod_name": meta["name"],
            "__meta_kubernetes_pod_node_name": pod["spec"].get("nodeName", ""),
        }
        for key, value in meta.get("labels", {}).items():
            labels[f"__meta_kubernetes_pod_label_{_sd_name(key)}"] = value
        for key, value in meta.get("annotations", {}).items():
            labels[f"__meta_kubernetes_pod_annotation_{_sd_name(key)}"] = value
        out.append({"targets": [pod["status"]["podIP"]], "labels": labels})
    return out


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as resp:
        result: list[dict[str, Any]] = json.loads(resp.read())["data"]["result"]
    return result


def test_prometheus_scrapes_the_real_agents_through_the_shipped_scrape_config(
    kubectl: Kubectl, served: str, models_ns: str, operator: str, tmp_path: Path
) -> None:
    """Debian's Prometheus scrapes the real agents with the chart's shipped job
    (charts/greenserve/docs/prometheus-scrape-config.yaml: its relabelling, its honor_labels) and the
    operator's metrics with the chart's ServiceMonitor's honorLabels, as prometheus-operator would."""
    binary = prom_server.find_or_install()
    assert binary, "Debian's prometheus package is missing and could not be installed"
    shipped = yaml.safe_load((CHART / "docs" / "prometheus-scrape-config.yaml").read_text())
    (job,) = shipped["scrape_configs"]
    sd_file = tmp_path / "pods.json"
    sd_file.write_text(json.dumps(_pod_targets(kubectl, models_ns)))
    job = {k: v for k, v in job.items() if k != "kubernetes_sd_configs"}
    job |= {"scrape_interval": "1s", "file_sd_configs": [{"files": [str(sd_file)], "refresh_interval": "1s"}]}
    # The operator's /metrics through the chart's ServiceMonitor: its honorLabels decides whether the
    # operator's namespace label survives or becomes exported_namespace.
    (monitor,) = [
        d
        for d in render(harness_bin() / "helm", release=RELEASE, namespace=operator,
                        values={"metrics.serviceMonitor.enabled": True})
        if d["kind"] == "ServiceMonitor"
    ]  # fmt: skip
    (endpoint,) = monitor["spec"]["endpoints"]
    (op_pod,) = get_json(kubectl, "pods", "-n", operator, "-l", "app.kubernetes.io/component=operator")[
        "items"
    ]
    op_job = {
        "job_name": "greenserve-operator",
        "scrape_interval": "1s",
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "static_configs": [
            {
                "targets": [f"{op_pod['status']['podIP']}:9090"],
                # The target labels prometheus-operator gives every ServiceMonitor target.
                "labels": {"namespace": operator, "pod": op_pod["metadata"]["name"]},
            }
        ],
    }
    prom = prom_server.start(binary, tmp_path, [job, op_job])
    try:
        pods = [p for p in _serving_pods(kubectl, models_ns) if _is_ready(p)]
        assert pods
        for pod in pods:
            sel = (
                f'namespace="{models_ns}",pod="{pod["metadata"]["name"]}",'
                f'node="{pod["spec"]["nodeName"]}",modelservice="{MODEL}"'
            )
            # The agent answers on its named port, labelled as the operator's queries expect.
            wait_for(
                lambda sel=sel: _query(prom.url, f"{k.AGENT_READY.name}{{{sel}}} == 1"), 60, "agent ready"
            )
            # TF Serving's own request counter (monitoring on) and the agent's simulated, labelled GPU.
            wait_for(
                lambda sel=sel: _query(prom.url, f"{k.TFS_REQUEST_COUNT}{{{sel}}}"),
                30,
                "TF Serving request count",
            )
            gpu = _query(prom.url, f'{k.GPU_POWER.name}{{{sel},{k.LABEL_SIMULATED}="true"}}')
            assert gpu, "the agent's simulated GPU is not labelled simulated"
        # The operator's own series keep the ModelService's namespace (honorLabels).
        wait_for(
            lambda: _query(
                prom.url,
                f'greenserve_modelservice_replicas_ready{{namespace="{models_ns}",modelservice="{MODEL}"}}',
            ),
            60,
            "the operator's per-ModelService series under the ModelService's namespace",
        )
    finally:
        prom.stop()


CONSOLIDATING_TAINT = "greenserve.io/consolidating"


def _filler_pod(ns: str, node: str, gpus: int, image: str) -> dict[str, Any]:
    """Another tenant's GPU pod (not greenserve's) pinned to `node`: it makes that node the fuller one."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpu-tenant", "namespace": ns},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 1,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "tenant",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }


def _moves_total(operator_ip: str, ns: str) -> float:
    """The operator's moves counter for the ModelService, from its /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://{operator_ip}:9090/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith(k.OP_MOVES.name + "{")
            and f'namespace="{ns}"' in line
            and f'modelservice="{MODEL}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_consolidation_moves_the_replica_off_the_less_used_real_node_without_failed_requests(
    kubectl: Kubectl, served: str, models_ns: str, operator: str, real_nodes: RealNodes
) -> None:
    """The replica runs alone on one real node; another tenant's pod takes 2 GPUs on the other. The
    consolidator closes the replica's node, surges a replacement onto the fuller node, retires the source
    once the replacement is Ready (preStop sleep, SIGTERM drain), and the source node ends empty of serving
    pods, while a bounded client load through the Service sees no failed request."""
    if len(real_nodes.names) < 2:
        why = "a move needs two real nodes: GREENSERVE_REAL_NODES=2 bash tests/harness/real_node.sh up"
        if os.environ.get("GREENSERVE_REQUIRE_REAL_NODE") == "1":
            pytest.fail(why)
        pytest.skip(why)
    # After the scale tests: exactly one serving pod, Ready, and nothing moving.
    wait_for(
        lambda: (
            len(pods := _serving_pods(kubectl, models_ns)) == 1
            and _is_ready(pods[0])
            and not _status(kubectl, models_ns).get("move")
        ),
        timeout=180,
        what="one Ready serving pod before the move",
        interval=1,
    )
    (source,) = _serving_pods(kubectl, models_ns)
    from_node = source["spec"]["nodeName"]
    (to_node,) = [n for n in real_nodes.names[:2] if n != from_node]
    (op_pod,) = get_json(kubectl, "pods", "-n", operator, "-l", "app.kubernetes.io/component=operator")[
        "items"
    ]
    moves_before = _moves_total(op_pod["status"]["podIP"], models_ns)
    kubectl.apply(_filler_pod(models_ns, to_node, 2, real_nodes.base_image))
    try:
        wait_for(
            lambda: get_json(kubectl, "pod", "gpu-tenant", "-n", models_ns)["spec"].get("nodeName"),
            timeout=60,
            what="the other tenant's GPU pod bound",
        )
        # Below one replica's target (5 req/s), as after the scale-in: the move is the only change.
        with Load(lambda: predict(served, [1.0]) == [3.0], rate=2) as load:
            t_move = time.monotonic()
            kubectl.run(
                "patch", "modelservice", MODEL, "-n", models_ns, "--type=merge",
                "-p", json.dumps({"spec": {"energy": {"consolidation": True}}}),
            )  # fmt: skip
            # The move is under way: recorded in status, the source node closed to new replicas.
            started = wait_for(
                lambda: _status(kubectl, models_ns).get("move"),
                timeout=120,
                what="status.move recorded by the consolidator",
            )
            assert started["pod"] == source["metadata"]["name"], started
            assert (started["fromNode"], started["toNode"]) == (from_node, to_node), started

            # Done: the move closed, and every serving pod (one, unless the load estimate asked for
            # another meanwhile) runs on the fuller node: nothing of the ModelService is left on the
            # source node (the retired pod finished its drain and is gone).
            def moved() -> bool:
                pods = _serving_pods(kubectl, models_ns)
                return (
                    not _status(kubectl, models_ns).get("move")
                    and bool(pods)
                    and all(p["spec"].get("nodeName") == to_node for p in pods)
                    and any(_is_ready(p) for p in pods)
                )

            wait_for(
                moved,
                timeout=420,
                what=f"the replica moved {from_node} -> {to_node}, the source pod gone",
                interval=1,
            )
            t_done = time.monotonic()
        sent, failed = load.between(t_move, t_done)
        _record("move_duration_s", t_done - t_move)
        _record("move_requests_sent", sent)
        _record("move_requests_failed", len(failed))
        assert sent > 20, "the move carried too little load to show anything"
        assert failed == [], f"{len(failed)} of {sent} requests failed during the move: {failed[:5]}"
        names = [p["metadata"]["name"] for p in _serving_pods(kubectl, models_ns)]
        assert source["metadata"]["name"] not in names, names
        on_source = get_json(kubectl, "pods", "-A", "--field-selector", f"spec.nodeName={from_node}")
        assert not [
            p for p in on_source["items"] if "greenserve.io/modelservice" in p["metadata"].get("labels", {})
        ]
        # The emptied node stays closed for the node autoscaler; the move is counted and announced.
        assert _moves_total(op_pod["status"]["podIP"], models_ns) == moves_before + 1
        assert_closed_and_announced(kubectl, from_node, models_ns, MODEL)
    finally:
        kubectl.run("delete", "pod", "gpu-tenant", "-n", models_ns, "--wait=false", check=False)
        # Reopen the emptied node for whatever runs on this node next (the autoscaler would delete it).
        kubectl.run("taint", "node", from_node, f"{CONSOLIDATING_TAINT}-", check=False)


ZERO = "zero"


def _zero_status(kubectl: Kubectl, ns: str) -> dict[str, Any]:
    status: dict[str, Any] = get_json(kubectl, "modelservice", ZERO, "-n", ns).get("status", {})
    return status


def _post(url: str, headers: dict[str, str], timeout: float) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"instances": [[1.0], [2.5]]}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_scale_to_zero_and_back_through_the_activator(
    kubectl: Kubectl,
    operator: str,
    models_ns: str,
    model_store: str,
    images: dict[str, str],
    real_nodes: RealNodes,
) -> None:
    """Idle to zero on fresh metrics (the operator scrapes the real agents), the Service routed to the
    activator pod, then requests at zero: held, the model woken by the activator's demand mark, each
    answered correctly once its replica is Ready (0 failed); one that asks to wait less gets a clear 503."""
    spec = _msvc(models_ns, model_store, images["GREENSERVE_SERVING_IMAGE"], real_nodes.gpu_product, target=5)
    spec["metadata"]["name"] = ZERO
    spec["spec"]["scaling"] = {
        "minReplicas": 0,
        "maxReplicas": 1,
        "target": 5,
        "scaleDownDelaySeconds": 0,
        "scaleToZeroAfterSeconds": 20,
    }
    kubectl.apply(spec)
    ip = wait_for(
        lambda: kubectl.run(
            "get", "svc", ZERO, "-n", models_ns, "-o", "jsonpath={.spec.clusterIP}", check=False
        ).stdout.strip(),
        timeout=60,
        what="the ModelService's Service",
    )
    url = f"http://{ip}:8501/v1/models/{MODEL}:predict"
    wait_for(lambda: predicts_correctly(url), timeout=300, what="a first correct prediction", interval=0.5)
    t_idle = time.monotonic()
    parked = wait_for(
        lambda: (st := _zero_status(kubectl, models_ns)).get("routing") == "Activator"
        and st.get("desiredReplicas") == 0
        and not [p for p in get_json(kubectl, "pods", "-n", models_ns, "-l",
                                      f"greenserve.io/modelservice={ZERO}")["items"]]
        and st,
        timeout=420,
        what="the idle model at zero, its pods gone, its Service routed to the activator",
        interval=2,
    )  # fmt: skip
    _record("idle_to_zero_s", time.monotonic() - t_idle)
    ready = {c["type"]: c for c in parked.get("conditions", [])}["Ready"]
    assert ready["reason"] == "ScaledToZero", ready
    svc = get_json(kubectl, "svc", ZERO, "-n", models_ns)
    assert "selector" not in svc["spec"], svc["spec"]

    # At zero: one request that will not wait for a cold start, and a client load that will.
    answered: list[float] = []

    def held_request() -> bool:
        sent = time.monotonic()
        status, _, body = _post(url, {}, timeout=200)
        ok = status == 200 and [float(p[0]) for p in json.loads(body)["predictions"]] == [3.0, 6.0]
        if ok:
            answered.append(time.monotonic() - sent)
        return ok

    t_zero = time.monotonic()
    with Load(held_request, rate=2, workers=512, timeout_s=200) as load:
        status, headers, body = _post(url, {k.ACTIVATOR_MAX_WAIT_HEADER: "2"}, timeout=30)
        short_wait_s = time.monotonic() - t_zero
        wait_for(lambda: answered, timeout=240, what="the first request at zero answered", interval=0.2)
        t_back = time.monotonic()
        time_to_back = t_back - t_zero
        # Keep the load on through the switch back from the activator to the replica.
        wait_for(
            lambda: _zero_status(kubectl, models_ns).get("routing") == "Replicas",
            timeout=120,
            what="the Service back on the replica",
            interval=1,
        )
        t_done = time.monotonic()
    sent, failed = load.between(t_zero, t_done)
    _record("zero_first_request_to_answer_s", time_to_back)
    _record("zero_first_answer_latency_s", max(answered))
    _record("zero_requests_sent", sent)
    _record("zero_requests_failed", len(failed))
    _record("zero_short_wait_503_s", short_wait_s)
    assert status == 503, (status, body[:300])
    assert int(headers["Retry-After"]) >= 1
    assert "no ready replica" in json.loads(body)["error"]
    assert short_wait_s < 15
    assert sent >= 5, "too few requests at zero to show anything"
    assert failed == [], f"{len(failed)} of {sent} requests from zero failed: {failed[:5]}"
    svc = get_json(kubectl, "svc", ZERO, "-n", models_ns)
    assert svc["spec"]["selector"] == {"greenserve.io/modelservice": ZERO}
    kubectl.run("delete", "modelservice", ZERO, "-n", models_ns, "--wait=false", check=False)
