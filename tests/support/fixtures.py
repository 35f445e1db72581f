"""Shared fixtures for tests on the local control plane (integration and e2e), loaded by tests/conftest.py."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from greenserve.cluster.client import KubeClient, load_kubeconfig
from support.chart import chart_operator_env, operator_kubeconfig_from_chart, uninstall
from support.fake_prometheus import FakePrometheus
from support.http import local_server
from support.kube import Kubectl, OperatorProcess, harness_bin, rbac_denials
from support.paths import REPO, harness_kubeconfig


@pytest.fixture(scope="session")
def kubeconfig() -> Path:
    path = harness_kubeconfig()
    assert path is not None
    return path


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    return Kubectl(kubeconfig)


@pytest.fixture(scope="session")
def crd_installed(kubectl: Kubectl) -> None:
    """The CRD installs the way users install it: kubectl apply -f crds/."""
    kubectl.run("apply", "-f", str(REPO / "crds"))
    kubectl.wait_established("modelservices.greenserve.io")


@pytest.fixture
async def kube(kubeconfig: Path) -> AsyncIterator[KubeClient]:
    client = KubeClient(load_kubeconfig(kubeconfig))
    yield client
    await client.close()


@pytest.fixture
def namespace(kubectl: Kubectl, crd_installed: None) -> Iterator[str]:
    name = f"t-{secrets.token_hex(4)}"
    kubectl.run("create", "namespace", name)
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
async def fake_prometheus(kube: KubeClient, namespace: str) -> AsyncIterator[tuple[FakePrometheus, str]]:
    """Prometheus' query API over the namespace's pods at the rates the test sets, and its URL for the
    operator (`GREENSERVE_PROMETHEUS_URL`), for operators run against kwok nodes."""
    fake = FakePrometheus(kube, namespace)
    app = web.Application()
    app.router.add_route("*", "/api/v1/query", fake.query)
    app.router.add_route("*", "/api/v1/query_range", fake.query_range)
    async with local_server(app) as port:
        yield fake, f"http://127.0.0.1:{port}"


OPERATOR_NAMESPACE = "greenserve-it"


@pytest.fixture(scope="session")
def operator_kubeconfig(
    kubectl: Kubectl, crd_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The operator under test authenticates as the Helm chart's ServiceAccount, with exactly the chart's
    RBAC: a permission the operator needs but the chart lacks fails these tests."""
    helm_bin = harness_bin() / "helm"
    path = operator_kubeconfig_from_chart(
        kubectl, helm_bin, OPERATOR_NAMESPACE, out_dir=tmp_path_factory.mktemp("sa")
    )
    yield path
    uninstall(kubectl, helm_bin, OPERATOR_NAMESPACE)


@pytest.fixture
def operator_env() -> dict[str, str]:
    return chart_operator_env(OPERATOR_NAMESPACE)


@pytest.fixture
def operator(
    operator_kubeconfig: Path, operator_env: dict[str, str], tmp_path: Path
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(operator_kubeconfig, tmp_path, extra_env=operator_env)
    proc.start()
    yield proc
    proc.stop()
    logs = proc.logs()
    print(logs[-5000:])
    assert rbac_denials(logs) == [], "the chart's RBAC lacks a permission the operator used"
