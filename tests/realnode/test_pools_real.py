"""Shared GPU pools with real pods: at least 8 low-traffic ModelServices served from at most 2 GPUs, a
real prediction from each through its own Service, and a move out of the pool onto the model's own
replica under a client load, with no failed request.

A pool GPU here has 4Gi for models (`operator.config.pools.gpuMemory`) and each model asks for 1Gi, so
the eight models need two pool GPUs: the pool's second GPU (its own Deployment, model-list ConfigMap and
selector, `gs-pool-<hash>-1`) runs as real pods beside the first.

The operator is the chart's, as a pod (its own release, after tests/realnode/test_serving.py's); the pool
pod is the serving image's CPU test variant, whose agent runs the local SavedModel backend with TF
Serving's model config file. The real node advertises simulated GPUs (`nvidia.com/gpu` as an extended
resource, tests/harness/real_node.sh): a GPU here is the scheduler's count, which is what "served from at
most 2 GPUs" counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
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
from test_serving import (  # noqa: F401  (images: a fixture)
    CONSOLIDATING_TAINT,
    _filler_pod,
    _record,
    assert_closed_and_announced,
    images,
)

from greenserve.api.objects import pod_ready
from support.chart import CHART, helm
from support.kube import Kubectl, harness_bin
from support.paths import REPO

pytestmark = pytest.mark.realnode

OPERATOR_NS = "greenserve-rn-pools"
RELEASE = "gs-pools"
N_MODELS = 8
MOVING = "m0"


@pytest.fixture(scope="module")
def pool_operator(kubectl: Kubectl, images: dict[str, str], real_nodes: RealNodes) -> Iterator[str]:  # noqa: F811
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
        "operator.config.reconcileInterval": 5,
        # The test reads the pooled model's rate from status: a rate that moves without a scale decision
        # is written once per statusRefresh (300 s by default, its first one jittered over the period).
        "operator.config.statusRefresh": 10,
        "operator.config.pools.cpuRequest": "100m",
        "operator.config.pools.memoryRequest": "512Mi",
        "operator.config.pools.memoryLimit": "6Gi",
        "operator.config.pools.unloadGraceSeconds": 5,
        # Four 1Gi models per pool GPU: eight take two (see the module docstring).
        "operator.config.pools.gpuMemory": "4Gi",
        # The last test's pool pod move (every model here has consolidation off until then).
        "operator.config.consolidationInterval": 10,
    }
    args = ["install", RELEASE, str(CHART), "--namespace", OPERATOR_NS]
    for key, value in values.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    helm(harness_bin() / "helm", *args, kubeconfig=kubectl.kubeconfig)
    kubectl.run(
        "wait", "-n", OPERATOR_NS, "--for=condition=Ready", "pod",
        "-l", "app.kubernetes.io/component=operator", "--timeout=180s",
    )  # fmt: skip
    yield OPERATOR_NS
    logs = kubectl.run(
        "logs", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/component=operator", "--tail=300", check=False
    )
    print(logs.stdout[-8000:])
    helm(harness_bin() / "helm", "uninstall", RELEASE, "--namespace", OPERATOR_NS, "--wait",
         kubeconfig=kubectl.kubeconfig)  # fmt: skip
    kubectl.run("delete", "namespace", OPERATOR_NS, "--wait=false", check=False)


@pytest.fixture(scope="module")
def ns(kubectl: Kubectl) -> Iterator[str]:
    made = restricted_namespace(kubectl, "rn-pools")
    name = next(made)
    yield name
    next(made, None)  # deletes it
    # Gone before this module's operator is: the next module's operator (test_serving.py) watches every
    # namespace, and one still terminating costs it 403s on writes there, which its test refuses.
    kubectl.run("wait", "--for=delete", f"namespace/{name}", "--timeout=180s", check=False)


@pytest.fixture(scope="module")
def store(kubectl: Kubectl, ns: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N_MODELS real SavedModels m0..m7 on one PVC (realnode_support.model_store)."""
    root = tmp_path_factory.mktemp("pool-models")
    model_store_on(kubectl, ns, root, [f"m{i}" for i in range(N_MODELS)])
    return root


def _msvc(ns: str, name: str, image: str, product: str) -> dict[str, Any]:
    return {
        "apiVersion": "greenserve.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "model": {"name": name, "storageUri": f"pvc://models/{name}"},
            "runtime": {
                "image": image,
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
            },
            "gpu": {"count": 1, "product": product, "memory": "1Gi"},
            "scaling": {"minReplicas": 1, "maxReplicas": 2},
            "energy": {"consolidation": False},
        },
    }


def _ready_reason(kubectl: Kubectl, ns: str, name: str) -> str | None:
    conds = {
        c["type"]: c
        for c in get_json(kubectl, "modelservice", name, "-n", ns).get("status", {}).get("conditions", [])
    }
    ready = conds.get("Ready", {})
    return str(ready.get("reason")) if ready.get("status") == "True" else None


def _url(kubectl: Kubectl, ns: str, name: str) -> str:
    ip = kubectl.run("get", "svc", name, "-n", ns, "-o", "jsonpath={.spec.clusterIP}").stdout.strip()
    return f"http://{ip}:8501/v1/models/{name}:predict"


def _gpus_held(kubectl: Kubectl, ns: str) -> int:
    """nvidia.com/gpu limits of the namespace's pods that hold a node's GPU (scheduled, not finished)."""
    held = 0
    for pod in get_json(kubectl, "pods", "-n", ns)["items"]:
        if not pod["spec"].get("nodeName") or pod["status"].get("phase") in ("Succeeded", "Failed"):
            continue
        for ctr in pod["spec"]["containers"]:
            held += int(ctr.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
    return held


def test_eight_models_from_at_most_two_gpus_then_one_moves_out_without_failed_requests(
    kubectl: Kubectl,
    pool_operator: str,
    ns: str,
    store: Path,
    images: dict[str, str],  # noqa: F811
    real_nodes: RealNodes,
) -> None:
    names = [f"m{i}" for i in range(N_MODELS)]
    t0 = time.monotonic()
    for name in names:
        kubectl.apply(_msvc(ns, name, images["GREENSERVE_SERVING_IMAGE"], real_nodes.gpu_product))
    urls = {
        n: wait_for(
            lambda n=n: (
                _url(kubectl, ns, n)
                if kubectl.run("get", "svc", n, "-n", ns, check=False).returncode == 0
                else None
            ),
            60,
            f"{n}'s Service",
        )
        for n in names
    }
    for name in names:
        url = urls[name]
        wait_for(
            lambda url=url: predicts_correctly(url), 420, f"a correct prediction from {name}", interval=0.5
        )
    _record("pools_apply_to_all_8_correct_s", time.monotonic() - t0)
    for name in names:
        # Status follows the routing label by one reconcile: wait for it rather than race it.
        reason = lambda name=name: _ready_reason(kubectl, ns, name) == "ServedFromSharedPool"  # noqa: E731
        wait_for(reason, 60, f"{name} Ready, served from the shared pool")
        xs = [-1.0, 0.0, 0.5, 10.0]
        assert predict(urls[name], xs) == [2 * x + 1 for x in xs]
    held = _gpus_held(kubectl, ns)
    _record("pools_gpus_held_for_8_models", held)
    assert 1 <= held <= 2
    _two_pool_gpus_serve_four_each(kubectl, ns, names, real_nodes)

    # m0 made Exclusive under a client load: its own replica first, then the pool lets go of it.
    # The call raises on a transport error, so a failed request records why.
    with Load(lambda: predict(urls[MOVING], [1.0, 2.5]) == [3.0, 6.0], rate=5) as load:
        t_move = time.monotonic()
        kubectl.run(
            "patch", "modelservice", MOVING, "-n", ns, "--type=merge",
            "-p", json.dumps({"spec": {"gpu": {"sharing": "Exclusive"}}}),
        )  # fmt: skip

        def moved() -> bool:
            pool_cms = [
                cm for cm in get_json(kubectl, "configmaps", "-n", ns, "-l", "greenserve.io/pool")["items"]
            ]
            listed = any(f'name: "{MOVING}"' in cm["data"]["models.config"] for cm in pool_cms)
            svc = get_json(kubectl, "svc", MOVING, "-n", ns)
            return not listed and svc["spec"]["selector"] == {"greenserve.io/modelservice": MOVING}

        wait_for(moved, 300, f"{MOVING} on its own replica and unloaded from the pool", interval=1)
        t_moved = time.monotonic()
        time.sleep(5)  # requests keep flowing after the switch; they count too
        t_end = time.monotonic()
    sent, failed = load.between(t_move, t_end)
    _record("pools_move_out_s", t_moved - t_move)
    _record("pools_move_requests_sent", sent)
    _record("pools_move_requests_failed", len(failed))
    assert sent > 50, "the move carried too little load to show anything"
    assert failed == [], failed[:5]
    wait_for(lambda: _ready_reason(kubectl, ns, MOVING) == "ReplicasAvailable", 60, f"{MOVING} Ready")
    for name in names[1:]:
        assert predicts_correctly(urls[name]), f"{name} stopped answering from the pool"


def _two_pool_gpus_serve_four_each(
    kubectl: Kubectl, ns: str, names: list[str], real_nodes: RealNodes
) -> None:
    """Each pool GPU is one ready real pod whose model list holds the four models whose status names it."""
    deps = get_json(kubectl, "deployments", "-n", ns, "-l", "greenserve.io/pool")["items"]
    assert len(deps) == 2, [d["metadata"]["name"] for d in deps]
    lists = _model_lists(kubectl, ns)
    homes = {n: _home(kubectl, ns, n) for n in names}
    for dep in deps:
        name = dep["metadata"]["name"]
        members = sorted(n for n, home in homes.items() if home == name)
        assert len(members) == 4, (name, homes)
        assert all(f'name: "{n}"' in lists[name] for n in members), (name, lists)
        pods = get_json(kubectl, "pods", "-n", ns, "-l", f"greenserve.io/pool={name}")["items"]
        ready = [p for p in pods if pod_ready(p)]
        assert len(ready) == 1 and ready[0]["spec"]["nodeName"] in real_nodes.names, (name, pods)
    _record("pools_pool_gpus_for_8_models", len(deps))


LOADED = "m1"


def test_a_pooled_model_moves_out_on_its_load_and_back_into_the_pool_without_failed_requests(
    kubectl: Kubectl,
    pool_operator: str,
    ns: str,
    store: Path,
    images: dict[str, str],  # noqa: F811
    real_nodes: RealNodes,
) -> None:
    """No placement in the spec: the pool pod's own per-model request counter (scraped from its agent by
    the operator) moves m1 out past its share of the GPU, and its own replica's rate brings it back into
    the pool once it falls below the join threshold, under a client load all along. With `target: 10`
    (a replica serves 12.5 req/s) and no SLO, it leaves past 0.56 x 12.5 = 7 req/s and joins at most
    0.35 x 12.5 = 4.4 req/s."""
    try:
        _load_driven_moves(kubectl, ns)
    finally:
        # The whole operator log, for a move that did not happen (the fixture prints only its tail).
        logs = kubectl.run(
            "logs",
            "-n",
            pool_operator,
            "-l",
            "app.kubernetes.io/component=operator",
            "--tail=-1",
            check=False,
        )
        (REPO / ".harness" / "realnode-pools-operator.log").write_text(logs.stdout)


def _load_driven_moves(kubectl: Kubectl, ns: str) -> None:
    url = _url(kubectl, ns, LOADED)
    wait_for(lambda: _ready_reason(kubectl, ns, LOADED) == "ServedFromSharedPool", 120, f"{LOADED} pooled")
    kubectl.run(
        "patch", "modelservice", LOADED, "-n", ns, "--type=merge",
        "-p", json.dumps({"spec": {"scaling": {"target": 10}}}),
    )  # fmt: skip

    def listed() -> bool:
        cms = get_json(kubectl, "configmaps", "-n", ns, "-l", "greenserve.io/pool")["items"]
        return any(f'name: "{LOADED}"' in cm["data"]["models.config"] for cm in cms)

    def own_selector() -> bool:
        return get_json(kubectl, "svc", LOADED, "-n", ns)["spec"]["selector"] == {
            "greenserve.io/modelservice": LOADED
        }

    def rate() -> float | None:
        got = get_json(kubectl, "modelservice", LOADED, "-n", ns).get("status", {}).get("requestsPerSecond")
        return float(got) if isinstance(got, int | float) else None

    with Load(lambda: predict(url, [1.0, 2.5]) == [3.0, 6.0], rate=2) as load:
        # The pooled model's rate, read from the pool pod's per-model counter, reaches its status.
        wait_for(lambda: (rate() or 0) > 0.5, 120, f"{LOADED}'s rate read from the pool pod", interval=1)
        st = get_json(kubectl, "modelservice", LOADED, "-n", ns)["status"]
        # Its part of the pool GPU's energy and power, in its own status.
        assert st.get("energyJoules") is not None and st.get("powerWatts") is not None, st
        _record("pools_pooled_rate_read", float(st["requestsPerSecond"]))
        _record("pools_pooled_power_watts", float(st["powerWatts"]))
        assert listed() and not own_selector()

        t_out = time.monotonic()
        load.rate = 12.0
        wait_for(lambda: not listed() and own_selector(), 300, f"{LOADED} out on its load", interval=1)
        t_out_done = time.monotonic()
        placed = get_json(kubectl, "modelservice", LOADED, "-n", ns)["status"]["placement"]
        assert placed["shared"] is False and placed["reason"] == "HighTraffic", placed

        t_in = time.monotonic()
        load.rate = 3.0

        def back_in() -> bool:
            dep = get_json(kubectl, "deployment", LOADED, "-n", ns)
            own = get_json(kubectl, "pods", "-n", ns, "-l", f"greenserve.io/modelservice={LOADED}")["items"]
            return listed() and not own_selector() and dep["spec"]["replicas"] == 0 and not own

        wait_for(back_in, 300, f"{LOADED} back in the pool on its load, its own replica gone", interval=1)
        t_in_done = time.monotonic()
        time.sleep(5)  # requests keep flowing after the switch; they count too
        t_end = time.monotonic()
    sent_out, failed_out = load.between(t_out, t_in)
    sent_in, failed_in = load.between(t_in, t_end)
    _record("pools_load_move_out_s", t_out_done - t_out)
    _record("pools_load_move_out_requests_sent", sent_out)
    _record("pools_load_move_out_requests_failed", len(failed_out))
    _record("pools_load_move_in_s", t_in_done - t_in)
    _record("pools_load_move_in_requests_sent", sent_in)
    _record("pools_load_move_in_requests_failed", len(failed_in))
    assert failed_out == [], failed_out[:5]
    assert failed_in == [], failed_in[:5]
    assert sent_in > 50, "the move in carried too little load to show anything"
    wait_for(lambda: _ready_reason(kubectl, ns, LOADED) == "ServedFromSharedPool", 60, f"{LOADED} Ready")
    assert predicts_correctly(url)


def test_a_model_moves_between_two_real_pool_gpus_without_failed_requests(
    kubectl: Kubectl,
    pool_operator: str,
    ns: str,
    store: Path,
    real_nodes: RealNodes,
) -> None:
    """Keep one pooled model on each pool GPU, delete the others: the sharing plan then empties the less
    loaded GPU into the other (policy/sharing.py, consolidation), a move between two real pool pods,
    surge-then-retire (listed on its new GPU, served there, then released by the old one), under a
    client load on both models all along."""
    pooled = [f"m{i}" for i in range(N_MODELS) if f"m{i}" != MOVING]
    wait_for(
        lambda: all(_ready_reason(kubectl, ns, n) == "ServedFromSharedPool" for n in pooled),
        120,
        "every pooled model served from the pool",
    )
    homes = {n: _home(kubectl, ns, n) for n in pooled}
    by_gpu: dict[str, list[str]] = {}
    for n, home in sorted(homes.items()):
        by_gpu.setdefault(home, []).append(n)
    assert len(by_gpu) == 2, homes
    keep = [members[0] for members in by_gpu.values()]
    urls = {n: _url(kubectl, ns, n) for n in keep}
    loads = {n: Load(lambda url=urls[n]: predict(url, [1.0, 2.5]) == [3.0, 6.0], rate=3) for n in keep}
    with loads[keep[0]], loads[keep[1]]:
        t_start = time.monotonic()
        for n in pooled:
            if n not in keep:
                kubectl.run("delete", "modelservice", n, "-n", ns, "--wait=false")

        def together() -> str | None:
            """The GPU both kept models are listed on, once the other lists neither."""
            lists = _model_lists(kubectl, ns)
            on = {g for g, text in lists.items() if any(f'name: "{n}"' in text for n in keep)}
            return next(iter(on)) if len(on) == 1 else None

        target = wait_for(together, 300, "both kept models on one pool GPU, the other released", interval=1)
        t_moved = time.monotonic()
        time.sleep(5)  # requests keep flowing after the switch; they count too
        t_end = time.monotonic()
    moved = [n for n in keep if homes[n] != target]
    assert len(moved) == 1, (homes, target)
    assert _home(kubectl, ns, moved[0]) == target
    _record("pools_between_gpus_move_s", t_moved - t_start)
    _none_failed(
        {n: loads[n] for n in keep}, urls, t_start, t_end,
        lambda n: f"pools_between_gpus_{'moved' if n in moved else 'stayed'}",
    )  # fmt: skip
    pods = get_json(kubectl, "pods", "-n", ns, "-l", f"greenserve.io/pool={target}")["items"]
    assert any(p["spec"]["nodeName"] in real_nodes.names for p in pods)


def _none_failed(
    loads: dict[str, Load], urls: dict[str, str], start: float, end: float, figure: Callable[[str], str]
) -> None:
    """Each model's load over [start, end) was enough to show a gap and none of it failed; each still
    predicts correctly. The counts are recorded as figures named `figure(model)`."""
    for n, load in loads.items():
        sent, failed = load.between(start, end)
        _record(f"{figure(n)}_requests_sent", sent)
        _record(f"{figure(n)}_requests_failed", len(failed))
        assert sent > 30, f"{n}: too little load to show anything"
        assert failed == [], (n, failed[:5])
        assert predicts_correctly(urls[n])


def _home(kubectl: Kubectl, ns: str, name: str) -> str:
    return str(get_json(kubectl, "modelservice", name, "-n", ns)["status"]["placement"]["pool"])


def _model_lists(kubectl: Kubectl, ns: str) -> dict[str, str]:
    """Each pool GPU's model config file, by the GPU's (its Deployment's) name."""
    return {
        cm["metadata"]["name"].removesuffix("-models"): cm["data"]["models.config"]
        for cm in get_json(kubectl, "configmaps", "-n", ns, "-l", "greenserve.io/pool")["items"]
    }


def _live_pool_pods(kubectl: Kubectl, ns: str) -> list[dict[str, Any]]:
    pods = get_json(kubectl, "pods", "-n", ns, "-l", "greenserve.io/pool")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def test_consolidation_moves_a_real_pool_pod_off_the_less_used_node_without_failed_requests(
    kubectl: Kubectl,
    images: dict[str, str],  # noqa: F811
    pool_operator: str,
    ns: str,
    store: Path,
    real_nodes: RealNodes,
) -> None:
    """A shared pool GPU must not keep a node from emptying (reconcile/pool_moves.py). Two pooled models
    (or one, if the module left one per GPU) on one pool pod; another tenant's pod takes 2 GPUs on the
    other node; consolidation turned on for both models. The consolidator closes the pool pod's node,
    surges a second pod of the pool GPU onto the fuller node, where both models load from the volume,
    and retires the source only once the new pod is a ready endpoint of both Services, under a client
    load on both all along."""
    if len(real_nodes.names) < 2:
        why = "a move needs two real nodes: GREENSERVE_REAL_NODES=2 bash tests/harness/real_node.sh up"
        if os.environ.get("GREENSERVE_REQUIRE_REAL_NODE") == "1":
            pytest.fail(why)
        pytest.skip(why)
    names = sorted(m["metadata"]["name"] for m in get_json(kubectl, "modelservices", "-n", ns)["items"])
    if not names:  # run alone: make two
        for n in ("m0", "m1"):
            kubectl.apply(_msvc(ns, n, images["GREENSERVE_SERVING_IMAGE"], real_nodes.gpu_product))
        names = ["m0", "m1"]
    # Keep (up to) two models of one pool GPU, the one serving the most, and delete the rest: one pool pod.
    shared = wait_for(
        lambda: [n for n in names if _ready_reason(kubectl, ns, n) == "ServedFromSharedPool"],
        300,
        "a model served from the pool",
        interval=1,
    )
    by_gpu: dict[str, list[str]] = {}
    for n in shared:
        by_gpu.setdefault(_home(kubectl, ns, n), []).append(n)
    keep = max(by_gpu.values(), key=len)[:2]
    for n in names:
        if n not in keep:
            kubectl.run("delete", "modelservice", n, "-n", ns, "--wait=false")

    seen: list[Any] = []

    def one_pool_pod() -> dict[str, Any] | None:
        """The two kept models served from one Ready pool pod, and no other pool pod left."""
        pods = _live_pool_pods(kubectl, ns)
        reasons = {n: _ready_reason(kubectl, ns, n) for n in keep}
        state = (reasons, [(p["metadata"]["name"], pod_ready(p), p["metadata"].get("labels")) for p in pods])
        if state != seen[-1:]:
            print(f"[pool move] {state}")  # shown on a failure: what the wait saw
            seen[:] = [state]
        if (
            any(r != "ServedFromSharedPool" for r in reasons.values())
            or len(pods) != 1
            or not pod_ready(pods[0])
        ):
            return None
        labels = pods[0]["metadata"].get("labels") or {}
        return pods[0] if all(labels.get(f"model.greenserve.io/{n}") == "available" for n in keep) else None

    source = wait_for(
        one_pool_pod, 300, "the two kept models on one pool pod, nothing else pooled", interval=1
    )
    source_name, from_node = source["metadata"]["name"], source["spec"]["nodeName"]
    (to_node,) = [n for n in real_nodes.names[:2] if n != from_node]
    kubectl.apply(_filler_pod(ns, to_node, 2, real_nodes.base_image))
    try:
        wait_for(
            lambda: get_json(kubectl, "pod", "gpu-tenant", "-n", ns)["spec"].get("nodeName"),
            60,
            "the other tenant's GPU pod bound",
        )
        urls = {n: _url(kubectl, ns, n) for n in keep}
        loads = {n: Load(lambda url=urls[n]: predict(url, [1.0, 2.5]) == [3.0, 6.0], rate=3) for n in keep}
        with contextlib.ExitStack() as running:
            for load in loads.values():
                running.enter_context(load)
            t_start = time.monotonic()
            for n in keep:
                kubectl.run(
                    "patch", "modelservice", n, "-n", ns, "--type=merge",
                    "-p", json.dumps({"spec": {"energy": {"consolidation": True}}}),
                )  # fmt: skip
            most = 1

            def moved() -> bool:
                nonlocal most
                pods = _live_pool_pods(kubectl, ns)
                most = max(most, len(pods))
                names_now = [p["metadata"]["name"] for p in pods]
                return (
                    len(pods) == 1
                    and source_name not in names_now
                    and pods[0]["spec"].get("nodeName") == to_node
                    and pod_ready(pods[0])
                )

            wait_for(moved, 420, f"the pool pod moved {from_node} -> {to_node}, the source gone", interval=1)
            t_moved = time.monotonic()
            time.sleep(5)  # requests keep flowing after the switch; they count too
            t_end = time.monotonic()
        _record("pools_node_move_s", t_moved - t_start)
        assert most == 2, "the replacement must start before the source pod is removed"
        _none_failed({n: loads[n] for n in keep}, urls, t_start, t_end, lambda n: f"pools_node_move_{n}")
        # The emptied node stays closed for the node autoscaler; the move is announced on the pod.
        assert_closed_and_announced(kubectl, from_node, ns, source_name)
    finally:
        kubectl.run("delete", "pod", "gpu-tenant", "-n", ns, "--wait=false", check=False)
        kubectl.run("taint", "node", from_node, f"{CONSOLIDATING_TAINT}-", check=False)
