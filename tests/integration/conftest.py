from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from greenserve.cluster.client import KubeClient, load_kubeconfig
from support.kube import Kubectl, OperatorProcess
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
    kubectl.run("wait", "--for=condition=Established", "crd/modelservices.greenserve.io", "--timeout=60s")


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
def operator(kubeconfig: Path, tmp_path: Path, crd_installed: None) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(kubeconfig, tmp_path)
    proc.start()
    yield proc
    proc.stop()
    print(proc.logs()[-5000:])
