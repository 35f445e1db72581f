"""Fixtures for the chart tests: the pinned helm and Kubernetes binaries built by tests/harness/cluster.sh."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.kube import Kubectl, harness_bin
from support.paths import harness_kubeconfig


def _binary(name: str) -> Path:
    path = harness_bin() / name
    if not path.exists():
        if os.environ.get("GREENSERVE_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"{path} missing: run tests/harness/cluster.sh build")
        pytest.skip(f"{name} not built yet: run tests/harness/cluster.sh build")
    return path


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    return _binary("helm")


@pytest.fixture(scope="session")
def kube_scheduler_bin() -> Path:
    return _binary("kube-scheduler")


@pytest.fixture(scope="session")
def admin_kubectl() -> Kubectl:
    path = harness_kubeconfig()
    assert path is not None, "integration tests run only with the local control plane up"
    return Kubectl(path)


@pytest.fixture
def chart_namespace(admin_kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace for one chart test, deleted afterwards."""
    name = f"greenserve-chart-test-{secrets.token_hex(3)}"
    admin_kubectl.run("create", "namespace", name)
    yield name
    admin_kubectl.run("delete", "namespace", name, "--wait=false", check=False)
