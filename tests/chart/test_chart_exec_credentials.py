"""The operator run from a workstation against a cluster whose kubeconfig user is an `exec` credential plugin
(as `aws eks get-token`, `gke-gcloud-auth-plugin` and `kubelogin` are): kopf's watches and the operator's REST
calls both authenticate through the plugin, with the chart's ServiceAccount permissions, and a ModelService
becomes Ready."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.chart import chart_operator_env, operator_kubeconfig_from_chart, uninstall
from support.kube import Kubectl, OperatorProcess
from support.paths import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _exec_kubeconfig(token_kubeconfig: Path, out_dir: Path) -> tuple[Path, Path]:
    """The same cluster and identity, but the token comes from a plugin that logs each run."""
    cfg = yaml.safe_load(token_kubeconfig.read_text())
    user = cfg["users"][0]
    token = user["user"].pop("token")
    (out_dir / "token").write_text(token)
    runs = out_dir / "plugin-runs"
    plugin = out_dir / "get-token"
    plugin.write_text(
        f"#!{sys.executable}\n"
        "import json, pathlib\n"
        f"runs = pathlib.Path({str(runs)!r})\n"
        "with runs.open('a') as fh:\n"
        "    fh.write('run\\n')\n"
        f"token = pathlib.Path({str(out_dir / 'token')!r}).read_text().strip()\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',\n"
        "                  'status': {'token': token}}))\n"
    )
    plugin.chmod(0o755)
    user["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": str(plugin),
            "interactiveMode": "Never",
        }
    }
    path = out_dir / "exec.kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return path, runs


@pytest.fixture
def workload_namespace(admin_kubectl: Kubectl, chart_namespace: str) -> Iterator[str]:
    name = f"{chart_namespace}-w"
    admin_kubectl.run("create", "namespace", name)
    yield name
    admin_kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def _modelservice(namespace: str) -> dict[str, Any]:
    msvc = yaml.safe_load((REPO / "examples/resnet.yaml").read_text())
    msvc["metadata"]["namespace"] = namespace
    msvc["spec"]["model"]["storageUri"] = "/models/resnet"
    return dict(msvc)


def test_operator_logs_in_through_an_exec_plugin(
    helm_bin: Path, admin_kubectl: Kubectl, chart_namespace: str, workload_namespace: str, tmp_path: Path
) -> None:
    if admin_kubectl.run("get", "crd", "modelservices.greenserve.io", check=False).returncode != 0:
        admin_kubectl.run("apply", "-f", str(REPO / "crds"))
    admin_kubectl.wait_established("modelservices.greenserve.io")
    token_kubeconfig = operator_kubeconfig_from_chart(
        admin_kubectl, helm_bin, chart_namespace, out_dir=tmp_path
    )
    kubeconfig, runs = _exec_kubeconfig(token_kubeconfig, tmp_path)
    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    operator = OperatorProcess(kubeconfig, logs_dir, extra_env=chart_operator_env(chart_namespace))
    operator.start()
    try:
        admin_kubectl.apply(_modelservice(workload_namespace))
        admin_kubectl.run(
            "wait", "-n", workload_namespace, "--for=condition=Ready", "msvc/resnet", "--timeout=120s"
        )
        # The Deployment exists: the REST client (server-side apply) authenticated through the plugin too.
        admin_kubectl.run("get", "deployment", "resnet", "-n", workload_namespace)
        assert operator.alive
    finally:
        admin_kubectl.run("delete", "msvc", "resnet", "-n", workload_namespace, "--timeout=60s", check=False)
        operator.stop()
        uninstall(admin_kubectl, helm_bin, chart_namespace)
    logs = operator.logs()
    assert "Handler 'reconcile_modelservice' succeeded" in logs
    assert "Activity 'login' succeeded" in logs, logs[-3000:]
    assert [line for line in logs.splitlines() if "Unauthorized" in line] == []
    assert runs.read_text().count("run") >= 1
