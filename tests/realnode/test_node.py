"""The real node itself: a kubelet node beside the kwok nodes, running real containers.

A pod from the node's local base image answers its readiness probe and HTTP requests through a Service's
ClusterIP (kube-proxy iptables rules) from this host, in a namespace that enforces Pod Security
"restricted".
"""

from __future__ import annotations

import json
import secrets
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from realnode_support import restricted_namespace, wait_for

from conftest import RealNodes
from support.kube import Kubectl

pytestmark = pytest.mark.realnode


@pytest.fixture
def ns(kubectl: Kubectl) -> Iterator[str]:
    yield from restricted_namespace(kubectl, "rn")


def test_real_node_is_a_kubelet_not_kwok(kubectl: Kubectl, real_nodes: RealNodes) -> None:
    for name, ip in zip(real_nodes.names, real_nodes.ips, strict=True):
        node = json.loads(kubectl.run("get", "node", name, "-o", "json").stdout)
        # A real container runtime and kubelet of the control plane's version; kwok leaves the node alone.
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
        assert node["status"]["nodeInfo"]["kubeletVersion"] == _control_plane_version(kubectl)
        assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {})
        assert {"type": "InternalIP", "address": ip} in node["status"]["addresses"]
        # Advertised like the kwok GPU nodes: extended resource, product label, GPU taint.
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == str(real_nodes.gpus)
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == real_nodes.gpu_product
        taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
        assert taint in node["spec"]["taints"]
    # kwok still fakes its own nodes beside it.
    kwok = json.loads(kubectl.run("get", "nodes", "-l", "type=kwok", "-o", "json").stdout)["items"]
    assert kwok, "the kwok nodes are gone"
    for n in kwok:
        ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", n["metadata"]["name"]


def _control_plane_version(kubectl: Kubectl) -> str:
    return str(json.loads(kubectl.run("version", "-o", "json").stdout)["serverVersion"]["gitVersion"])


def test_pod_answers_through_a_service(kubectl: Kubectl, real_nodes: RealNodes, ns: str) -> None:
    token = secrets.token_hex(8)
    labels = {"app": "web"}
    node, node_ip = real_nodes.names[-1], real_nodes.ips[-1]
    kubectl.apply(_web_pod(ns, "web", labels, token, node, real_nodes.base_image))
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }
    )
    pod = wait_for(
        lambda: _ready_pod(kubectl, ns, "web"), timeout=120, what="web pod Ready through its readiness probe"
    )
    # A real CNI address on the node's bridge, not a kwok fake one.
    assert pod["spec"]["nodeName"] == node
    assert pod["status"]["podIP"].startswith(node_ip.rsplit(".", 1)[0] + ".")
    cluster_ip = kubectl.run("get", "svc", "web", "-n", ns, "-o", "jsonpath={.spec.clusterIP}").stdout
    try:
        body = wait_for(lambda: _get(f"http://{cluster_ip}/token"), timeout=90, what="ClusterIP answering")
    except AssertionError as e:
        rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        mine = "\n".join(line for line in rules.splitlines() if f"{ns}/web" in line or cluster_ip in line)
        raise AssertionError(f"{e}\nkube-proxy rules for {ns}/web:\n{mine or '(none)'}") from None
    assert body.strip() == token


def _web_pod(ns: str, name: str, labels: dict[str, str], token: str, node: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "web",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": [
                        "sh",
                        "-c",
                        f"mkdir -p /tmp/www && echo {token} >/tmp/www/token"
                        " && exec busybox httpd -f -p 8080 -h /tmp/www",
                    ],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/token", "port": "http"}, "periodSeconds": 1},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def _ready_pod(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any] | None:
    pod: dict[str, Any] = json.loads(kubectl.run("get", "pod", name, "-n", ns, "-o", "json").stdout)
    conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return pod if conds.get("Ready") == "True" else None


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())
    except OSError:  # refused or timed out: the caller polls
        return None


def test_namespace_enforces_pod_security_restricted(kubectl: Kubectl, real_nodes: RealNodes, ns: str) -> None:
    pod = _web_pod(ns, "root", {"app": "root"}, "x", real_nodes.names[0], real_nodes.base_image)
    del pod["spec"]["securityContext"]["runAsNonRoot"]
    pod["spec"]["securityContext"]["runAsUser"] = 0
    got = kubectl.apply(pod, check=False)
    assert got.returncode != 0 and "violates PodSecurity" in got.stderr, got.stderr
