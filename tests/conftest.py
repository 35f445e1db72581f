"""Test tiers: unit tests always run; `integration`/`e2e` need the local control plane.

The control plane is started by `tests/harness/cluster.sh up` (the test command does it); its kubeconfig
is found through GREENSERVE_KUBECONFIG or .harness/kubeconfig. Without one those tests skip, unless
GREENSERVE_REQUIRE_CLUSTER=1 (set by the test command and CI), where a missing cluster is a failure.
"""

from __future__ import annotations

import os

import pytest

from support.paths import harness_kubeconfig

# Subprocesses (the operator, the twin, the agent) import this checkout's code, not whatever checkout the
# shared venv's editable install last pointed at.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [os.path.join(_REPO, "operator"), os.path.join(_REPO, "serving-image")]
    + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)

pytest_plugins = ["support.fixtures"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if harness_kubeconfig() is not None:
        return
    needing = [i for i in items if i.get_closest_marker("integration") or i.get_closest_marker("e2e")]
    if needing and os.environ.get("GREENSERVE_REQUIRE_CLUSTER") == "1":
        raise pytest.UsageError("GREENSERVE_REQUIRE_CLUSTER=1 but no kubeconfig: the control plane is not up")
    for item in needing:
        item.add_marker(pytest.mark.skip(reason="no local control plane: run tests/harness/cluster.sh up"))
