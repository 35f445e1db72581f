"""The real-node tier: pods that really run, on the kubelet node of tests/harness/real_node.sh.

tests/run.sh starts the node after the other tiers (`real_node.sh up`) and runs this folder with
``-m realnode``; by hand::

    bash tests/harness/cluster.sh up && bash tests/harness/real_node.sh up
    python -m pytest tests/realnode -m realnode
    bash tests/harness/real_node.sh down

Without a Ready real node these tests skip, unless GREENSERVE_REQUIRE_REAL_NODE=1 (the test command sets
it), where a missing node is a failure: this tier must never pass by not running.
"""

from __future__ import annotations

import os

import pytest
from realnode_support import RealNodes, node_facts

from support.kube import Kubectl
from support.paths import harness_kubeconfig


def _nodes_ready(nodes: RealNodes) -> str | None:
    """None when every real node is Ready, else why not."""
    path = harness_kubeconfig()
    if path is None:
        return "no local control plane (tests/harness/cluster.sh up)"
    ready = "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
    for name in nodes.names:
        got = Kubectl(path).run("get", "node", name, "-o", ready, check=False)
        if got.returncode != 0 or got.stdout.strip() != "True":
            return f"real node {name} not Ready (tests/harness/real_node.sh up): {got.stderr.strip()}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [i for i in items if i.get_closest_marker("realnode")]
    if not ours:
        return
    why = _nodes_ready(node_facts())
    if why is None:
        return
    if os.environ.get("GREENSERVE_REQUIRE_REAL_NODE") == "1":
        raise pytest.UsageError(f"GREENSERVE_REQUIRE_REAL_NODE=1 but {why}")
    for item in ours:
        item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session")
def real_nodes() -> RealNodes:
    return node_facts()
