"""The CRD in crds/ is exactly what the API types render, and it is a structural schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from greenserve.api import constants, crdgen

REPO = Path(__file__).resolve().parents[3]
CRD_PATH = REPO / "crds" / crdgen.CRD_FILE


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _walk(value, f"{path}[{i}]")
    return found


def test_crd_file_matches_the_types() -> None:
    assert CRD_PATH.read_text() == crdgen.render(), "run `greenserve crd` to regenerate crds/"
    chart_copy = REPO / "charts" / "greenserve" / "crds" / crdgen.CRD_FILE
    assert chart_copy.read_text() == crdgen.render(), "the chart's CRD differs: run `make crd`"


def test_crd_check_mode_detects_drift(tmp_path: Path) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text(crdgen.render().replace("minReplicas", "minimumReplicas"))
    assert crdgen.main(["--check", "--out", str(stale)]) == 1
    stale.write_text(crdgen.render())
    assert crdgen.main(["--check", "--out", str(stale)]) == 0


def test_names_and_subresources() -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    assert crd["metadata"]["name"] == "modelservices.greenserve.io"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "ModelService",
        "modelservices",
        ["msvc"],
    )
    (version,) = crd["spec"]["versions"]
    assert version["name"] == constants.VERSION and version["storage"] is True
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    for wanted in ("Ready", "Replicas", "GPUs", "Power W", "Age"):
        assert wanted in columns


def test_schema_is_structural() -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        for banned in ("$ref", "anyOf", "allOf", "oneOf", "title", "additionalProperties", "$defs"):
            assert banned not in node, f"{banned} at {path}"
        if "properties" in node:
            assert node.get("type") == "object", f"object without type at {path}"


def test_cel_rules_are_present() -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = [r["rule"] for _, node in _walk(schema) for r in node.get("x-kubernetes-validations", [])]
    assert "self.minReplicas <= self.maxReplicas" in rules
    assert any("metadata.name.size()" in r for r in rules)
    assert any("runtime.image" in r for r in rules)


def test_nested_defaults_match_the_types() -> None:
    """Objects default to the same values the pydantic types use, so the stored spec equals the parsed one."""
    crd = yaml.safe_load(CRD_PATH.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    resources = spec["runtime"]["properties"]["resources"]
    assert resources["default"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}
    requests = resources["properties"]["requests"]["default"]
    assert requests == {"cpu": "1", "memory": "2Gi"}
    assert spec["gpu"]["properties"]["tolerations"]["default"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
