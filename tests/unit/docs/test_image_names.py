"""Both images are named identically, in one registry, everywhere they are named: the API default, the
chart, the Dockerfiles, the release workflow, the local build and the README."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from greenserve import __version__
from greenserve.api import constants as c

REPO = Path(__file__).resolve().parents[3]
OPERATOR = "ghcr.io/greenserve/greenserve-operator"
SERVING = "ghcr.io/greenserve/greenserve-serving"


def read(rel: str) -> str:
    return (REPO / rel).read_text()


def test_the_default_runtime_and_the_chart_name_this_release_in_one_registry() -> None:
    assert f"{SERVING}:{__version__}" == c.DEFAULT_SERVING_IMAGE
    values = yaml.safe_load(read("charts/greenserve/values.yaml"))
    assert values["image"]["repository"] == OPERATOR
    chart = yaml.safe_load(read("charts/greenserve/Chart.yaml"))
    assert chart["appVersion"] == __version__  # the operator image's default tag


def test_release_workflow_dockerfiles_and_local_build_use_the_same_names() -> None:
    workflow = read(".github/workflows/release.yaml")
    jobs = yaml.safe_load(workflow)["jobs"]["images"]["strategy"]["matrix"]["include"]
    registry = yaml.safe_load(workflow)["env"]["REGISTRY"]
    pushed = {f"{registry}/{j['image']}": j["dockerfile"] for j in jobs}
    assert pushed == {OPERATOR: "operator/Dockerfile", SERVING: "serving-image/Dockerfile"}
    for name, dockerfile in pushed.items():
        assert f"{name}:" in read(dockerfile), dockerfile
    local = read("tests/harness/images.py")
    assert f'REGISTRY = "{registry}"' in local
    assert '"greenserve-operator"' in local and '"greenserve-serving"' in local


def test_readme_names_only_these_images() -> None:
    text = read("README.md") + read("charts/greenserve/README.md")
    named = set(re.findall(r"ghcr\.io/greenserve/[a-z-]+", text))
    assert named == {OPERATOR, SERVING}
    assert f"{SERVING}:{__version__}" in text and f"{OPERATOR}:{__version__}" in read("README.md")
