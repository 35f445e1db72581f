"""The Helm chart against the local control plane: server-side schema validation, `helm install`, and the
operator and the bin-packing scheduler running with exactly the chart's ServiceAccount permissions."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.chart import (
    CHART,
    chart_operator_env,
    helm,
    install,
    operator_kubeconfig_from_chart,
    release_name,
    render,
    service_account_kubeconfig,
    uninstall,
)
from support.kube import Kubectl, OperatorProcess, refusals
from support.paths import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


def wait_for(probe: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def get_json(kubectl: Kubectl, *args: str) -> dict[str, Any]:
    return dict(json.loads(kubectl.run("get", *args, "-o", "json").stdout))


def example_modelservice(namespace: str) -> dict[str, Any]:
    """examples/resnet.yaml, with the model on a host path instead of the demo's PersistentVolumeClaim."""
    msvc = yaml.safe_load((REPO / "examples/resnet.yaml").read_text())
    msvc["metadata"]["namespace"] = namespace
    msvc["spec"]["model"]["storageUri"] = "/models/resnet"
    return dict(msvc)


def start_operator(
    kubeconfig: Path, log: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m greenserve run ARGS` with `kubeconfig`, as OperatorProcess does but with any flags."""
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PYTHONUNBUFFERED": "1",
        "GREENSERVE_RECONCILE_INTERVAL": "3",
        **(env or {}),
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "greenserve", "run", "--verbose", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def crds_applied(admin_kubectl: Kubectl) -> None:
    """The chart's CRDs, applied the way the README's upgrade path does (server-side). kopf's peering CRDs
    are new objects; the ModelService CRD is only dry-run here (the integration suite owns it)."""
    admin_kubectl.run("apply", "--server-side", "-f", str(CHART / "crds" / "kopf-peerings.yaml"))
    for crd in ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        admin_kubectl.wait_established(crd)
    admin_kubectl.run(
        "apply",
        "--dry-run=server",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(CHART / "crds" / "modelservices.greenserve.io.yaml"),
    )
    if admin_kubectl.run("get", "crd", "modelservices.greenserve.io", check=False).returncode != 0:
        admin_kubectl.run("apply", "-f", str(REPO / "crds"))
    admin_kubectl.wait_established("modelservices.greenserve.io")


def served(kubectl: Kubectl, api_group: str) -> bool:
    out = kubectl.run("api-resources", f"--api-group={api_group}", "-o", "name", check=False)
    return out.returncode == 0 and bool(out.stdout.strip())


# --- (b) helm template validated by the API server


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda v: v.name)
def test_rendered_chart_passes_server_side_validation(
    helm_bin: Path, admin_kubectl: Kubectl, chart_namespace: str, crds_applied: None, values: Path
) -> None:
    overrides: dict[str, Any] = {"operator.peering.name": chart_namespace}
    raw = yaml.safe_load(values.read_text()) or {}
    if raw.get("operator", {}).get("watchNamespaces"):
        overrides["operator.watchNamespaces"] = [chart_namespace]  # namespaces that exist
    if raw.get("dashboard", {}).get("namespace"):
        overrides["dashboard.namespace"] = chart_namespace
    objs = render(
        helm_bin, release=chart_namespace, namespace=chart_namespace, values_files=[values], values=overrides
    )
    skipped = [o for o in objs if o["apiVersion"].startswith("monitoring.coreos.com/")]
    if skipped:
        assert not served(admin_kubectl, "monitoring.coreos.com"), "ServiceMonitor CRD present: validate it"
    checked = [o for o in objs if o not in skipped]
    stream = "\n---\n".join(yaml.safe_dump(o) for o in checked)
    out = admin_kubectl.run(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-", input=stream, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("(server dry run)") == len(checked), out.stdout


def test_server_side_validation_rejects_a_broken_render(
    helm_bin: Path, admin_kubectl: Kubectl, chart_namespace: str, crds_applied: None
) -> None:
    """The check above can fail: a field the Deployment schema does not have is refused."""
    objs = render(
        helm_bin,
        release=chart_namespace,
        namespace=chart_namespace,
        values={"operator.peering.name": chart_namespace},
    )
    dep = next(o for o in objs if o["kind"] == "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] = True
    out = admin_kubectl.run(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-", input=yaml.safe_dump(dep), check=False
    )
    assert out.returncode != 0 and "readOnlyRootFs" in out.stderr


# --- (d) helm install


def test_helm_install_and_uninstall(
    helm_bin: Path, admin_kubectl: Kubectl, chart_namespace: str, crds_applied: None
) -> None:
    release = release_name(chart_namespace)
    values = {
        "operator.peering.name": chart_namespace,
        "scheduler.binpack.enabled": True,
        "operator.podDisruptionBudget.enabled": True,
    }
    try:
        install(admin_kubectl, helm_bin, chart_namespace, values=values, wait=True)
        status = helm(
            helm_bin,
            "status",
            release,
            "-n",
            chart_namespace,
            "-o",
            "json",
            kubeconfig=admin_kubectl.kubeconfig,
        ).stdout
        assert json.loads(status)["info"]["status"] == "deployed"

        dep = get_json(admin_kubectl, "deployment", release, "-n", chart_namespace)
        pod_spec = dep["spec"]["template"]["spec"]
        (c,) = pod_spec["containers"]
        sc = c["securityContext"]
        assert (sc["runAsNonRoot"], sc["runAsUser"], sc["readOnlyRootFilesystem"]) == (True, 65532, True)
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["port"] == "health"
        assert c["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
        assert f"--peering={chart_namespace}" in c["args"]
        assert {e["name"]: e.get("value") for e in c["env"]}[
            "GREENSERVE_SCHEDULER_NAME"
        ] == "greenserve-binpack"
        assert dep["status"].get("readyReplicas") == 1  # kwok runs the pod (no container, but Running/Ready)

        peering = get_json(admin_kubectl, "clusterkopfpeering", chart_namespace)
        assert peering["metadata"]["labels"]["app.kubernetes.io/instance"] == release
        sched = get_json(admin_kubectl, "deployment", f"{release}-scheduler", "-n", chart_namespace)
        assert sched["status"].get("readyReplicas") == 1
        for kind in ("clusterrole", "clusterrolebinding"):
            admin_kubectl.run("get", kind, release)
        admin_kubectl.run("get", "rolebinding", f"{release}-scheduler-auth-reader", "-n", "kube-system")
    finally:
        uninstall(admin_kubectl, helm_bin, chart_namespace, release)
    for args in (
        ["clusterrole", release],
        ["clusterkopfpeering", chart_namespace],
        ["rolebinding", f"{release}-scheduler-auth-reader", "-n", "kube-system"],
        ["deployment", release, "-n", chart_namespace],
    ):
        assert admin_kubectl.run("get", *args, check=False).returncode != 0, f"{args} left behind"


# --- (e) the operator with exactly the chart's permissions


@pytest.fixture
def sa_kubeconfig(
    helm_bin: Path, admin_kubectl: Kubectl, chart_namespace: str, crds_applied: None, tmp_path: Path
) -> Iterator[Path]:
    path = operator_kubeconfig_from_chart(admin_kubectl, helm_bin, chart_namespace, out_dir=tmp_path)
    yield path
    uninstall(admin_kubectl, helm_bin, chart_namespace)


@pytest.fixture
def workload_namespace(admin_kubectl: Kubectl, chart_namespace: str) -> Iterator[str]:
    name = f"{chart_namespace}-w"
    admin_kubectl.run("create", "namespace", name)
    yield name
    admin_kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def delete_modelservice(kubectl: Kubectl, namespace: str) -> None:
    """Delete before the test's namespaces go (there is no finalizer: it works with the operator down too)."""
    kubectl.run("delete", "msvc", "resnet", "-n", namespace, "--timeout=60s", check=False)


def test_service_account_kubeconfig_is_the_service_account(
    admin_kubectl: Kubectl, sa_kubeconfig: Path, chart_namespace: str
) -> None:
    sa = Kubectl(sa_kubeconfig)
    who = json.loads(sa.run("auth", "whoami", "-o", "json").stdout)
    assert who["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{chart_namespace}:{release_name(chart_namespace)}"
    )
    assert (
        sa.run("auth", "can-i", "patch", "modelservices.greenserve.io/status", "-A").stdout.strip() == "yes"
    )
    assert sa.run("auth", "can-i", "get", "secrets", "-A", check=False).stdout.strip() == "no"
    assert sa.run("auth", "can-i", "delete", "nodes", check=False).stdout.strip() == "no"


def test_operator_with_chart_permissions_makes_a_modelservice_ready(
    admin_kubectl: Kubectl, sa_kubeconfig: Path, chart_namespace: str, workload_namespace: str, tmp_path: Path
) -> None:
    operator = OperatorProcess(sa_kubeconfig, tmp_path, extra_env=chart_operator_env(chart_namespace))
    operator.start()
    try:
        admin_kubectl.apply(example_modelservice(workload_namespace))
        admin_kubectl.run(
            "wait", "-n", workload_namespace, "--for=condition=Ready", "msvc/resnet", "--timeout=120s"
        )
        # Let the metrics tick (3 s in tests) run a few times.
        wait_for(lambda: operator.passes("resync") >= 3, 60, "three metrics ticks")
        assert operator.alive
    finally:
        delete_modelservice(admin_kubectl, workload_namespace)
        operator.stop()
    logs = operator.logs()
    assert "Handler 'reconcile_modelservice' succeeded" in logs
    denied = refusals(logs)
    assert denied == [], "the operator needed a permission the chart does not grant:\n" + "\n".join(denied)


def test_a_permission_missing_from_the_chart_shows_up_as_forbidden(
    helm_bin: Path,
    admin_kubectl: Kubectl,
    chart_namespace: str,
    workload_namespace: str,
    crds_applied: None,
    tmp_path: Path,
) -> None:
    """The negative control: with the Deployment rule taken out of the chart's Role, the operator logs 403s.

    The chart is installed namespaced (`operator.watchNamespaces`), so the operator touches only this test's
    namespace, and the namespaced RBAC mode is exercised: everything but the removed rule keeps working.
    Deployments, because every start lists and watches them and every reconcile applies one."""
    kubeconfig = operator_kubeconfig_from_chart(
        admin_kubectl,
        helm_bin,
        chart_namespace,
        out_dir=tmp_path,
        values={"operator.watchNamespaces": [workload_namespace]},
    )
    role = release_name(chart_namespace)
    rules = get_json(admin_kubectl, "role", role, "-n", workload_namespace)["rules"]
    index = next(i for i, r in enumerate(rules) if r["resources"] == ["deployments"])
    patch = json.dumps([{"op": "remove", "path": f"/rules/{index}"}])
    admin_kubectl.run("patch", "role", role, "-n", workload_namespace, "--type=json", "-p", patch)
    log = tmp_path / "operator-denied.log"
    proc = start_operator(
        kubeconfig,
        log,
        "--standalone",
        f"--namespace={workload_namespace}",
        env=chart_operator_env(chart_namespace),
    )
    try:
        admin_kubectl.apply(example_modelservice(workload_namespace))
        wait_for(lambda: "403 Forbidden" in log.read_text(errors="replace"), 60, "a 403 in the operator log")
    finally:
        delete_modelservice(admin_kubectl, workload_namespace)
        stop(proc)
        uninstall(admin_kubectl, helm_bin, chart_namespace)
    denied = refusals(log.read_text(errors="replace"))
    assert any("deployments" in line for line in denied), "\n".join(denied)


def test_operator_with_chart_permissions_joins_kopf_peering(
    helm_bin: Path, admin_kubectl: Kubectl, chart_namespace: str, crds_applied: None, tmp_path: Path
) -> None:
    """Leader election as the chart deploys it: `--peering <name>` keeps alive in the ClusterKopfPeering."""
    peering = chart_namespace
    kubeconfig = operator_kubeconfig_from_chart(
        admin_kubectl,
        helm_bin,
        chart_namespace,
        out_dir=tmp_path,
        values={"operator.peering.enabled": True, "operator.peering.name": peering},
    )
    log = tmp_path / "operator-peering.log"
    env = {**chart_operator_env(chart_namespace), "POD_ID": f"{peering}-pod"}
    proc = start_operator(kubeconfig, log, f"--peering={peering}", env=env)
    try:

        def keepalive() -> bool:
            status = get_json(admin_kubectl, "clusterkopfpeering", peering).get("status") or {}
            return f"{peering}-pod" in status

        wait_for(keepalive, 60, "the operator's keep-alive in the ClusterKopfPeering status")
        assert proc.poll() is None
    finally:
        stop(proc)
        uninstall(admin_kubectl, helm_bin, chart_namespace)
    logs = log.read_text(errors="replace")
    assert refusals(logs) == [], "\n".join(refusals(logs))
    assert "peering CRD is missing" not in logs


# --- the bin-packing scheduler with exactly its chart permissions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_binpack_scheduler_with_chart_permissions_binds_a_gpu_pod(
    helm_bin: Path,
    kube_scheduler_bin: Path,
    admin_kubectl: Kubectl,
    chart_namespace: str,
    crds_applied: None,
    tmp_path: Path,
) -> None:
    """The chart's kube-scheduler profile and RBAC, run as the local kube-scheduler binary under the
    scheduler ServiceAccount's token (kwok nodes run no containers, so the image itself cannot run)."""
    release = release_name(chart_namespace)
    install(
        admin_kubectl,
        helm_bin,
        chart_namespace,
        values={
            "operator.enabled": False,
            "operator.peering.enabled": False,
            "dashboard.enabled": False,
            "scheduler.binpack.enabled": True,
            "scheduler.binpack.replicaCount": 0,
            "scheduler.binpack.schedulerName": f"{chart_namespace}-binpack",
        },
    )
    proc: subprocess.Popen[bytes] | None = None
    try:
        name = f"{release}-scheduler"
        kubeconfig = service_account_kubeconfig(
            admin_kubectl, chart_namespace, name, tmp_path / "sched.kubeconfig"
        )
        cm = get_json(admin_kubectl, "configmap", name, "-n", chart_namespace)
        config = yaml.safe_load(cm["data"]["config.yaml"])
        config["clientConnection"] = {"kubeconfig": str(kubeconfig)}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        log = tmp_path / "scheduler.log"
        cmd = [
            str(kube_scheduler_bin),
            f"--config={tmp_path / 'config.yaml'}",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--v=2",
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        wait_for(
            lambda: (
                admin_kubectl.run("get", "lease", name, "-n", chart_namespace, check=False).returncode == 0
            ),
            60,
            "the scheduler's leader Lease",
        )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "binpack-probe", "namespace": chart_namespace},
            "spec": {
                "schedulerName": f"{chart_namespace}-binpack",
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [
                    {
                        "name": "c",
                        "image": "registry.k8s.io/pause:3.10",
                        "resources": {"limits": {"nvidia.com/gpu": 1}},
                    }
                ],
            },
        }
        admin_kubectl.apply(pod)

        def node() -> str:
            return str(
                get_json(admin_kubectl, "pod", "binpack-probe", "-n", chart_namespace)["spec"].get(
                    "nodeName", ""
                )
            )

        bound = wait_for(node, 60, "the pod bound by the bin-packing scheduler")
        allocatable = get_json(admin_kubectl, "node", bound)["status"]["allocatable"]
        assert int(allocatable.get("nvidia.com/gpu", "0")) >= 1, f"{bound} has no GPU"
        assert proc.poll() is None
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        uninstall(admin_kubectl, helm_bin, chart_namespace)
    logs = (tmp_path / "scheduler.log").read_text(errors="replace")
    denied = [line for line in logs.splitlines() if "forbidden" in line.lower()]
    assert denied == [], "\n".join(denied[:20])
