"""The chart's optional NetworkPolicy for serving pods (issue 17): REST and gRPC only from chosen
namespaces, the agent's metrics only from the operator's and the metrics namespaces; off by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from greenserve import contract
from greenserve.api import constants as c
from support.chart import CHART, helm, kube_version, render


def policies(objs: list[dict[str, Any]], suffix: str = "-serving") -> dict[str, dict[str, Any]]:
    """The NetworkPolicies of one kind (-serving: ModelServices' own pods, -pools: shared pool pods), by
    namespace."""
    return {
        o["metadata"]["namespace"]: o
        for o in objs
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith(suffix)
    }


def rules(policy: dict[str, Any]) -> dict[frozenset[int], list[str]]:
    """Ports of each ingress rule -> the namespaces it admits (by their name label)."""
    out = {}
    for rule in policy["spec"]["ingress"]:
        (peer,) = rule["from"]
        (expr,) = peer["namespaceSelector"]["matchExpressions"]
        assert (expr["key"], expr["operator"]) == ("kubernetes.io/metadata.name", "In")
        assert all(p["protocol"] == "TCP" for p in rule["ports"])
        out[frozenset(p["port"] for p in rule["ports"])] = expr["values"]
    return out


def test_off_by_default(helm_bin: Path) -> None:
    assert policies(render(helm_bin)) == {}


def test_serving_ports_only_from_the_chosen_namespaces(helm_bin: Path) -> None:
    objs = render(
        helm_bin,
        namespace="gs",
        values={
            "servingNetworkPolicy.enabled": True,
            "servingNetworkPolicy.namespaces": ["models-a", "models-b"],
            "servingNetworkPolicy.allowFromNamespaces": ["gateway"],
            "servingNetworkPolicy.metricsFromNamespaces": ["monitoring"],
        },
    )
    found = policies(objs)
    assert sorted(found) == ["models-a", "models-b"]
    for policy in found.values():
        spec = policy["spec"]
        # The pods the operator creates: every serving pod carries the ModelService label.
        assert spec["podSelector"] == {
            "matchExpressions": [{"key": c.LABEL_MODELSERVICE, "operator": "Exists"}]
        }
        assert spec["policyTypes"] == ["Ingress"]
        assert rules(policy) == {
            frozenset({c.TFS_REST_PORT, c.TFS_GRPC_PORT}): ["gateway"],
            # The operator's namespace scrapes the agents directly when no Prometheus is set.
            frozenset({contract.AGENT_METRICS_PORT}): ["gs", "monitoring"],
            # The scale-to-zero activator (release namespace, its pods only) forwards held requests.
            frozenset({c.TFS_REST_PORT}): ["gs"],
        }
        (activator,) = [r for r in spec["ingress"] if [p["port"] for p in r["ports"]] == [c.TFS_REST_PORT]]
        labels = activator["from"][0]["podSelector"]["matchLabels"]
        assert labels["app.kubernetes.io/component"] == "activator"
    pools = policies(objs, "-pools")
    assert sorted(pools) == ["models-a", "models-b"]
    for policy in pools.values():
        # Shared pool pods carry no ModelService label: their own policy, the same ports, and REST from
        # the release namespace (the operator reads each model's status there; the activator forwards).
        assert policy["spec"]["podSelector"] == {
            "matchExpressions": [{"key": c.LABEL_POOL, "operator": "Exists"}]
        }
        assert rules(policy) == {
            frozenset({c.TFS_REST_PORT, c.TFS_GRPC_PORT}): ["gateway"],
            frozenset({contract.AGENT_METRICS_PORT}): ["gs", "monitoring"],
            frozenset({c.TFS_REST_PORT}): ["gs"],
        }


def test_without_allowed_namespaces_the_model_ports_are_closed(helm_bin: Path) -> None:
    objs = render(
        helm_bin,
        values={"servingNetworkPolicy.enabled": True, "operator.watchNamespaces": ["team-a"]},
    )
    found = policies(objs)
    assert list(found) == ["team-a"]  # the watched namespaces by default
    assert rules(found["team-a"]) == {
        frozenset({contract.AGENT_METRICS_PORT}): ["greenserve"],
        frozenset({c.TFS_REST_PORT}): ["greenserve"],  # the activator's pods only
    }
    without = policies(
        render(
            helm_bin,
            values={
                "servingNetworkPolicy.enabled": True,
                "operator.watchNamespaces": ["team-a"],
                "activator.enabled": False,
            },
        )
    )
    assert rules(without["team-a"]) == {frozenset({contract.AGENT_METRICS_PORT}): ["greenserve"]}


def test_a_cluster_wide_operator_must_name_the_namespaces(helm_bin: Path) -> None:
    out = helm(
        helm_bin,
        "template", "x", str(CHART), "--kube-version", kube_version(),
        "--set", "servingNetworkPolicy.enabled=true",
        check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "servingNetworkPolicy.namespaces" in out.stderr


@pytest.mark.parametrize(
    "arg",
    [
        "servingNetworkPolicy.allowFromNamespaces[0]=Not_A_Namespace",
        "servingNetworkPolicy.ports=8501",
        "servingNetworkPolicy.enabled=yes",
    ],
)
def test_the_schema_rejects_bad_values(helm_bin: Path, arg: str) -> None:
    out = helm(
        helm_bin, "template", "x", str(CHART), "--kube-version", kube_version(), "--set", arg, check=False
    )
    assert out.returncode != 0 and "schema" in out.stderr.lower(), out.stderr
