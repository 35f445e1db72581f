"""The serving pods the operator writes pass the API server's own Pod Security admission at "restricted".

The Deployment's pod template is created as a Pod (server-side dry run) in a namespace that enforces the
restricted level, so the check is Kubernetes' PodSecurity admission plugin, not a copy of its rules.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from greenserve.api.v1alpha1 import parse_spec
from greenserve.manifests import builders
from support.kube import Kubectl

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def restricted_namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"t-psa-{secrets.token_hex(4)}"
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
        }
    )
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def serving_pod(namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    owner = builders.Owner(name="resnet", namespace=namespace, uid="00000000-0000-0000-0000-000000000001")
    dep = builders.deployment(owner, parse_spec(spec), 1, builders.BuildOptions())
    template = dep["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "resnet-psa", "namespace": namespace, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }


def create_dry_run(kubectl: Kubectl, pod: dict[str, Any]) -> tuple[int, str]:
    out = kubectl.run("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    return out.returncode, out.stderr


@pytest.mark.parametrize(
    "spec",
    [
        {"model": {"name": "resnet", "storageUri": "pvc://models/resnet"}},
        {
            "model": {"name": "resnet", "storageUri": "/models/resnet"},
            "runtime": {"batching": {"enabled": True}},
            "gpu": {"count": 0},
        },
    ],
    ids=["pvc-gpu", "image-path-batching-cpu"],
)
def test_serving_pod_is_admitted_under_restricted(
    kubectl: Kubectl, restricted_namespace: str, spec: dict[str, Any]
) -> None:
    rc, err = create_dry_run(kubectl, serving_pod(restricted_namespace, spec))
    assert rc == 0, err


def test_restricted_namespace_rejects_a_pod_without_the_security_context(
    kubectl: Kubectl, restricted_namespace: str
) -> None:
    """The premise: the namespace does enforce, so the test above can fail."""
    pod = serving_pod(restricted_namespace, {"model": {"name": "resnet", "storageUri": "pvc://models/r"}})
    del pod["spec"]["securityContext"]
    rc, err = create_dry_run(kubectl, pod)
    assert rc != 0 and "violates PodSecurity" in err, err
