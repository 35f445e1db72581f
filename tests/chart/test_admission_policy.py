"""The chart's ValidatingAdmissionPolicy on the local control plane (issue 15, least privilege).

The chart is installed cluster-wide (its default) with the operator Deployment off; the operator and every
attempted escape run as the chart's ServiceAccount with a token from `kubectl create token`
(tests/support/chart.py). The escapes are server-side dry runs: admission runs on them exactly as on a real
request, and without the policy nothing in kube-system or on the nodes is changed for real. The control
test removes the policy's binding and shows each escape then passes RBAC: the policy is what stops them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from greenserve.api import constants as c
from greenserve.cluster.client import NODES, KubeClient, load_kubeconfig
from greenserve.config import OperatorConfig
from greenserve.reconcile.consolidator import TAINT_KEY, Consolidator
from support.chart import chart_operator_env, operator_kubeconfig_from_chart, release_name, uninstall
from support.kube import Kubectl, OperatorProcess, refusals
from support.paths import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

POLICY_MARK = "ValidatingAdmissionPolicy"


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


def policy_name(namespace: str) -> str:
    # The chart's fullname is the release name when that already contains the chart name.
    return f"{release_name(namespace)}-operator-writes"


class Victims:
    """Objects of "another team" and of the cluster that the operator must not touch."""

    def __init__(self, team: str, configmap: str, node: str) -> None:
        self.team = team
        self.configmap = configmap
        self.node = node


def escapes(v: Victims) -> dict[str, list[str]]:
    """The six escapes of issue 15 as kubectl arguments (all server-side dry runs)."""
    privileged = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"gs-escape-{secrets.token_hex(3)}", "namespace": "kube-system"},
        "spec": {
            "selector": {"matchLabels": {"app": "escape"}},
            "template": {
                "metadata": {"labels": {"app": "escape"}},
                "spec": {
                    "hostPID": True,
                    "containers": [
                        {
                            "name": "c",
                            "image": "busybox",
                            "securityContext": {"privileged": True},
                            "volumeMounts": [{"name": "root", "mountPath": "/host"}],
                        }
                    ],
                    "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
                },
            },
        },
    }
    image = json.dumps([{"op": "replace", "path": "/spec/containers/0/image", "value": "evil:latest"}])
    return {
        "privileged-deployment-in-kube-system": [
            "create", "--dry-run=server", "-f", "-", "<<" + yaml.safe_dump(privileged)
        ],
        "replace-image-of-another-teams-pod": [
            "patch", "pod", "team-pod", "-n", v.team, "--type=json", "-p", image, "--dry-run=server"
        ],
        "overwrite-configmap-in-kube-system": [
            "patch", "configmap", v.configmap, "-n", "kube-system", "--type=merge", "--dry-run=server",
            "-p", json.dumps({"data": {"mapRoles": "- rolearn: evil\n  groups: [system:masters]"}}),
        ],
        "remove-node-taints": [
            "patch", "node", v.node, "--type=merge", "-p", '{"spec":{"taints":[]}}', "--dry-run=server"
        ],
        # What `kubectl cordon` sends (cordon itself exits 0 even when the patch is refused).
        "cordon-node": [
            "patch", "node", v.node, "--type=merge", "--dry-run=server",
            "-p", '{"spec":{"unschedulable":true}}',
        ],
        "label-node-control-plane": [
            "label", "node", v.node, "node-role.kubernetes.io/control-plane=", "--dry-run=server"
        ],
        "delete-another-teams-service": ["delete", "service", "team-svc", "-n", v.team, "--dry-run=server"],
    }  # fmt: skip


def attempt(kubectl: Kubectl, args: list[str]) -> tuple[int, str]:
    stdin = None
    if args[-1].startswith("<<"):
        args, stdin = args[:-1], args[-1][2:]
    out = kubectl.run(*args, input=stdin, check=False)
    return out.returncode, out.stderr + out.stdout


@pytest.fixture
def crds(admin_kubectl: Kubectl) -> None:
    if admin_kubectl.run("get", "crd", c.CRD_NAME, check=False).returncode != 0:
        admin_kubectl.run("apply", "-f", str(REPO / "crds"))
    admin_kubectl.wait_established(c.CRD_NAME)


@pytest.fixture
def victims(admin_kubectl: Kubectl, chart_namespace: str) -> Iterator[Victims]:
    team = f"{chart_namespace}-team"
    configmap = f"gs-victim-{secrets.token_hex(3)}"
    admin_kubectl.run("create", "namespace", team)
    admin_kubectl.run("create", "configmap", configmap, "-n", "kube-system", "--from-literal=mapRoles=[]")
    admin_kubectl.run("create", "service", "clusterip", "team-svc", "-n", team, "--tcp=80:8080")
    admin_kubectl.run("run", "team-pod", "-n", team, "--image=registry.k8s.io/pause:3.10")
    # A GPU node: tainted nvidia.com/gpu=present:NoSchedule by the harness.
    nodes = get_json(admin_kubectl, "nodes", "-l", c.GPU_PRODUCT_LABEL)["items"]
    node = sorted(n["metadata"]["name"] for n in nodes if (n.get("spec") or {}).get("taints"))[0]
    wait_for(
        lambda: get_json(admin_kubectl, "pod", "team-pod", "-n", team)["status"].get("phase") == "Running",
        60,
        "the other team's pod to run",
    )
    yield Victims(team, configmap, node)
    admin_kubectl.run("delete", "configmap", configmap, "-n", "kube-system", check=False)
    admin_kubectl.run("delete", "namespace", team, "--wait=false", check=False)


@pytest.fixture
def sa_kubectl(
    helm_bin: Path, admin_kubectl: Kubectl, chart_namespace: str, crds: None, tmp_path: Path
) -> Iterator[Kubectl]:
    """The chart (default values: cluster-wide, policy on) and a kubectl that is its ServiceAccount."""
    kubeconfig = operator_kubeconfig_from_chart(admin_kubectl, helm_bin, chart_namespace, out_dir=tmp_path)
    yield Kubectl(kubeconfig)
    uninstall(admin_kubectl, helm_bin, chart_namespace)


def wait_policy_active(sa: Kubectl, v: Victims) -> None:
    """A new policy binding reaches the API server's admission informer within a second or so."""
    probe = escapes(v)["label-node-control-plane"]
    wait_for(lambda: POLICY_MARK in attempt(sa, probe)[1], 30, "the admission policy to be enforced")


# The chart's RBAC grants no delete (owned objects go through the garbage collector): that escape stops
# at RBAC. The others need a right the operator does use (create, patch), so only the policy stops them.
DENIED_BY_RBAC = {"delete-another-teams-service"}


def test_the_six_escapes_are_denied(sa_kubectl: Kubectl, victims: Victims, chart_namespace: str) -> None:
    wait_policy_active(sa_kubectl, victims)
    results = {name: attempt(sa_kubectl, args) for name, args in escapes(victims).items()}
    allowed = {name: out for name, (rc, out) in results.items() if rc == 0}
    assert not allowed, f"escapes let through: {allowed}"
    for name, (_, out) in results.items():
        if name in DENIED_BY_RBAC:
            assert "cannot delete resource" in out, f"{name}: {out}"
        else:
            assert POLICY_MARK in out and policy_name(chart_namespace) in out, f"{name}: {out}"


def test_a_forged_managed_by_label_does_not_open_an_object(sa_kubectl: Kubectl, victims: Victims) -> None:
    """Relabelling another team's Service as greenserve's is itself a write to an object not ours."""
    wait_policy_active(sa_kubectl, victims)
    patch = json.dumps({"metadata": {"labels": {c.LABEL_MANAGED_BY: c.MANAGED_BY}}})
    rc, out = attempt(
        sa_kubectl,
        ["patch", "service", "team-svc", "-n", victims.team, "--type=merge", "-p", patch, "--dry-run=server"],
    )
    assert rc != 0 and POLICY_MARK in out, out


def test_without_the_policy_rbac_alone_allows_the_escapes(
    admin_kubectl: Kubectl, sa_kubectl: Kubectl, victims: Victims, chart_namespace: str
) -> None:
    """The control: with the policy's binding removed, the escapes the policy denied get through (as dry
    runs), so the test above fails if the chart stops shipping the policy."""
    wait_policy_active(sa_kubectl, victims)
    admin_kubectl.run("delete", "validatingadmissionpolicybinding", policy_name(chart_namespace))
    probe = escapes(victims)["label-node-control-plane"]
    wait_for(lambda: attempt(sa_kubectl, probe)[0] == 0, 30, "the policy to be lifted")
    results = {
        name: attempt(sa_kubectl, args)
        for name, args in escapes(victims).items()
        if name not in DENIED_BY_RBAC
    }
    denied = {name: out for name, (rc, out) in results.items() if rc != 0}
    assert not denied, f"denied by RBAC alone (the policy test would not prove anything): {denied}"


def example_modelservice(namespace: str) -> dict[str, Any]:
    msvc = yaml.safe_load((REPO / "examples/resnet.yaml").read_text())
    msvc["metadata"]["namespace"] = namespace
    msvc["spec"]["model"]["storageUri"] = "/models/resnet"
    return dict(msvc)


def test_the_operators_own_work_passes_the_policy(
    admin_kubectl: Kubectl, sa_kubectl: Kubectl, victims: Victims, chart_namespace: str, tmp_path: Path
) -> None:
    """Under RBAC and policy: a ModelService is applied (Deployment, Service, PDB), reaches Ready, its pods'
    warm-up annotations are lifted (a pod patch), and the consolidator's own taint goes on and off a node."""
    wait_policy_active(sa_kubectl, victims)
    operator = OperatorProcess(sa_kubectl.kubeconfig, tmp_path, extra_env=chart_operator_env(chart_namespace))
    operator.start()
    try:
        admin_kubectl.apply(example_modelservice(victims.team))
        admin_kubectl.run(
            "wait", "-n", victims.team, "--for=condition=Ready", "msvc/resnet", "--timeout=120s"
        )

        def lifted() -> bool:
            pods = get_json(admin_kubectl, "pods", "-n", victims.team, "-l", f"{c.LABEL_MODELSERVICE}=resnet")
            return bool(pods["items"]) and all(
                c.ANN_KARPENTER_DO_NOT_DISRUPT not in (p["metadata"].get("annotations") or {})
                for p in pods["items"]
            )

        wait_for(lifted, 60, "the warm-up annotations lifted from the ready pods")
        # Shared pools' routing label on a serving pod: set and removed; any other label, or another
        # value, is refused (server-side dry runs as the operator's ServiceAccount).
        pods = get_json(admin_kubectl, "pods", "-n", victims.team, "-l", f"{c.LABEL_MODELSERVICE}=resnet")
        pod = pods["items"][0]["metadata"]["name"]
        label = "model.greenserve.io/resnet"
        for args, allowed in (
            ([f"{label}=available"], True),
            ([f"{label}=yes"], False),
            (["team=escape"], False),
        ):
            out = sa_kubectl.run(
                "label", "pod", pod, "-n", victims.team, *args, "--dry-run=server", check=False
            )
            assert (out.returncode == 0) == allowed, (args, out.stderr)
        asyncio.run(_taint_on_and_off(sa_kubectl.kubeconfig, victims.node, chart_namespace))
        assert operator.alive
    finally:
        admin_kubectl.run("delete", "msvc", "resnet", "-n", victims.team, "--timeout=60s", check=False)
        operator.stop()
    bad = refusals(operator.logs())
    assert bad == [], "the policy or RBAC refused the operator's own work:\n" + "\n".join(bad)


async def _taint_on_and_off(kubeconfig: Path, node: str, namespace: str) -> None:
    """The consolidator's real taint writes (fresh read, resourceVersion-guarded merge patch) as the SA."""
    async with KubeClient(load_kubeconfig(kubeconfig)) as kube:
        consolidator = Consolidator(kube, OperatorConfig(lease_namespace=namespace))
        before = (await kube.get(NODES, node))["spec"]["taints"]
        try:
            await consolidator._taint(await kube.get(NODES, node), True)
            taints = (await kube.get(NODES, node))["spec"]["taints"]
            assert {"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"} in taints
        finally:
            await consolidator._taint(await kube.get(NODES, node), False)
        assert (await kube.get(NODES, node))["spec"]["taints"] == before
