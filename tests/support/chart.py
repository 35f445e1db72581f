"""The Helm chart in tests: render, install, and run the operator with exactly its ServiceAccount's rights.

`operator_kubeconfig_from_chart` installs charts/greenserve (CRDs, ServiceAccount, RBAC; the operator
Deployment off) and writes a kubeconfig that authenticates as the chart's ServiceAccount with a token from
`kubectl create token`. An operator started with that kubeconfig has the chart's permissions and nothing
more, so a permission missing from the chart fails the test that exercises it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from support.kube import Kubectl
from support.paths import REPO

CHART = REPO / "charts" / "greenserve"
CHART_NAME = "greenserve"


def kube_version() -> str:
    """The pinned Kubernetes version of the local control plane (tests/harness/versions.env)."""
    for line in (REPO / "tests/harness/versions.env").read_text().splitlines():
        if line.startswith("K8S_VERSION="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("K8S_VERSION missing from tests/harness/versions.env")


def helm(
    helm_bin: Path, *args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    cmd = [str(helm_bin), *args]
    if kubeconfig is not None:
        cmd += ["--kubeconfig", str(kubeconfig)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def set_args(values: Mapping[str, Any]) -> list[str]:
    """`--set-json` arguments for a flat {dotted.key: value} mapping (types are kept, unlike --set)."""
    out: list[str] = []
    for key, value in values.items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def render(
    helm_bin: Path,
    *,
    release: str = "greenserve",
    namespace: str = "greenserve",
    values: Mapping[str, Any] | None = None,
    values_files: Sequence[Path] = (),
    extra: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """`helm template` output as objects (CRDs not included unless `--include-crds` is in `extra`)."""
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", kube_version()]
    for f in values_files:
        args += ["--values", str(f)]
    args += set_args(values or {})
    args += list(extra)
    out = helm(helm_bin, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def release_name(namespace: str) -> str:
    """One release per namespace; cluster-scoped objects (ClusterRole, bindings) are named after it."""
    return f"gs-{namespace}"[:53]


def install(
    kubectl: Kubectl,
    helm_bin: Path,
    namespace: str,
    *,
    release: str | None = None,
    values: Mapping[str, Any] | None = None,
    wait: bool = False,
) -> str:
    """`helm upgrade --install` the chart into `namespace` (created if missing); returns the release name."""
    release = release or release_name(namespace)
    kubectl.run("create", "namespace", namespace, check=False)
    args = ["upgrade", "--install", release, str(CHART), "--namespace", namespace, *set_args(values or {})]
    if wait:
        args += ["--wait", "--timeout", "120s"]
    helm(helm_bin, *args, kubeconfig=kubectl.kubeconfig)
    return release


def uninstall(kubectl: Kubectl, helm_bin: Path, namespace: str, release: str | None = None) -> None:
    release = release or release_name(namespace)
    helm(
        helm_bin,
        "uninstall",
        release,
        "--namespace",
        namespace,
        "--wait",
        kubeconfig=kubectl.kubeconfig,
        check=False,
    )


def service_account_kubeconfig(
    kubectl: Kubectl, namespace: str, service_account: str, out: Path, duration: str = "6h"
) -> Path:
    """A kubeconfig for `service_account` (token from `kubectl create token`), same server and CA as admin."""
    token = kubectl.run(
        "create", "token", service_account, "--namespace", namespace, "--duration", duration
    ).stdout.strip()
    admin_path = Path(kubectl.kubeconfig)
    admin = yaml.safe_load(admin_path.read_text())
    ctx_name = admin["current-context"]
    ctx = next(c["context"] for c in admin["contexts"] if c["name"] == ctx_name)
    cluster = dict(next(c["cluster"] for c in admin["clusters"] if c["name"] == ctx["cluster"]))
    ca_path = cluster.pop("certificate-authority", None)
    if ca_path:
        ca_file = Path(ca_path) if Path(ca_path).is_absolute() else admin_path.parent / ca_path
        cluster["certificate-authority-data"] = base64.b64encode(ca_file.read_bytes()).decode()
    user = f"system:serviceaccount:{namespace}:{service_account}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "greenserve-chart", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": "greenserve-chart-sa", "context": {"cluster": "greenserve-chart", "user": user}}
        ],
        "current-context": "greenserve-chart-sa",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config))
    out.chmod(0o600)
    return out


def chart_operator_env(namespace: str, watch_namespaces: Sequence[str] = ()) -> dict[str, str]:
    """The environment the chart's Deployment gives the operator that a process outside the cluster lacks:
    its own namespace (downward API), where the chart grants the consolidation Lease, and the watched
    namespaces when installed with `operator.watchNamespaces`. Pass it to the operator started with
    `operator_kubeconfig_from_chart`'s kubeconfig, e.g. `OperatorProcess(..., extra_env=...)`."""
    env = {"POD_NAMESPACE": namespace}
    if watch_namespaces:
        env["GREENSERVE_NAMESPACES"] = ",".join(watch_namespaces)
    return env


def operator_kubeconfig_from_chart(
    kubectl: Kubectl,
    helm_bin: Path,
    namespace: str,
    *,
    values: Mapping[str, Any] | None = None,
    out_dir: Path | None = None,
) -> Path:
    """Install the chart's CRDs, ServiceAccount and RBAC into `namespace` (the operator Deployment off, no
    peering: tests run the operator `--standalone`) and return a kubeconfig authenticating as the chart's
    ServiceAccount. The release is `release_name(namespace)`; remove it with `uninstall`. Run the operator
    with `chart_operator_env(namespace)` too, as the chart's Deployment would."""
    merged: dict[str, Any] = {"operator.enabled": False, "operator.peering.enabled": False, **(values or {})}
    release = install(kubectl, helm_bin, namespace, values=merged)
    manifest = helm(
        helm_bin, "get", "manifest", release, "--namespace", namespace, kubeconfig=kubectl.kubeconfig
    ).stdout
    accounts = [
        doc["metadata"]["name"]
        for doc in yaml.safe_load_all(manifest)
        if doc
        and doc.get("kind") == "ServiceAccount"
        and doc["metadata"].get("namespace") == namespace
        and doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        not in ("scheduler", "activator")
    ]
    assert len(accounts) == 1, f"expected the operator's ServiceAccount in the release, found {accounts}"
    directory = out_dir or Path(tempfile.mkdtemp(prefix="greenserve-sa-"))
    return service_account_kubeconfig(kubectl, namespace, accounts[0], directory / f"{release}.kubeconfig")
