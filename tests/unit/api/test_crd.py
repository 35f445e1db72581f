"""The CRD in crds/ is exactly what the API types render, and it is a structural schema."""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

import yaml

from greenserve.api import constants, crdgen

REPO = Path(__file__).resolve().parents[3]
CRD_PATH = REPO / "crds" / crdgen.CRD_FILE


@functools.cache
def _crd() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is large: the C loader when built
    loaded: dict[str, Any] = yaml.load(CRD_PATH.read_text(), Loader=loader)
    return loaded


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
    crd = copy.deepcopy(_crd())
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
    columns = version["additionalPrinterColumns"]
    default_view = [c["name"] for c in columns if not c.get("priority")]
    assert default_view == ["Ready", "Reason", "Replicas", "Min", "Max", "Metric", "Target", "Age"]
    wide = [c["name"] for c in columns if c.get("priority")]
    assert {"GPUs", "Power W"} <= set(wide)


def test_schema_is_structural() -> None:
    crd = copy.deepcopy(_crd())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        for banned in (
            "$ref",
            "anyOf",
            "allOf",
            "oneOf",
            "title",
            "$defs",
            "propertyNames",
            "patternProperties",
        ):
            assert banned not in node, f"{banned} at {path}"
        if "properties" in node:
            assert node.get("type") == "object", f"object without type at {path}"
        if "additionalProperties" in node:
            # A map: a value schema, never beside properties (structural schemas forbid both).
            assert isinstance(node["additionalProperties"], dict) and "properties" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, f"int-or-string with a type at {path}"


def _schemas(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node (not defaults, not CEL rules) with its path."""
    found = [(path, node)]
    for name, prop in node.get("properties", {}).items():
        found += _schemas(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += _schemas(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += _schemas(node["additionalProperties"], f"{path}{{}}")
    return found


# Free-form objects the operator alone writes through the status subresource.
OPAQUE = {".status.move", ".status.scaler"}


def unbounded_fields(schema: dict[str, Any]) -> list[str]:
    """Strings without maxLength (or an enum), lists without maxItems, maps without maxProperties, and
    free-form objects outside OPAQUE: what lets one object grow without bound."""
    found = []
    for path, node in _schemas(schema):
        stringy = node.get("type") == "string" or node.get("x-kubernetes-int-or-string")
        if stringy and "maxLength" not in node and "enum" not in node:
            found.append(f"{path}: string without maxLength")
        if node.get("type") == "array" and "maxItems" not in node:
            found.append(f"{path}: list without maxItems")
        if "additionalProperties" in node and "maxProperties" not in node:
            found.append(f"{path}: map without maxProperties")
        if node.get("x-kubernetes-preserve-unknown-fields") and path not in OPAQUE:
            found.append(f"{path}: free-form object")
    return found


def test_every_string_list_and_map_is_bounded() -> None:
    """No input may cost the API server a core: a 200,000-digit quantity used to be accepted (issue 17)."""
    crd = copy.deepcopy(_crd())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert unbounded_fields(schema) == []
    # The walker sees what it must: the embedded Kubernetes schemas and the maps.
    paths = {p for p, _ in _schemas(schema)}
    assert ".spec.pod.volumes[].secret.items[].key" in paths
    assert ".spec.runtime.resources.limits{}" in paths


def test_the_bound_check_finds_an_unbounded_field() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string"},
            "b": {"type": "array", "items": {"type": "string", "maxLength": 3}},
            "c": {"type": "object", "additionalProperties": {"x-kubernetes-int-or-string": True}},
            "d": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "e": {"type": "string", "enum": ["x"]},
        },
    }
    assert unbounded_fields(schema) == [
        ".a: string without maxLength",
        ".b: list without maxItems",
        ".c: map without maxProperties",
        ".c{}: string without maxLength",
        ".d: free-form object",
    ]


def test_quantities_are_int_or_string_kubernetes_quantities() -> None:
    crd = copy.deepcopy(_crd())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    limits = spec["properties"]["runtime"]["properties"]["resources"]["properties"]["limits"]
    quantity = limits["additionalProperties"]
    assert quantity["x-kubernetes-int-or-string"] is True and quantity["maxLength"] <= 64
    assert re.fullmatch(quantity["pattern"].strip("^$"), "500m")
    assert not re.search(quantity["pattern"], "1" * 200_000 + "x")
    volumes = spec["properties"]["pod"]["properties"]["volumes"]["items"]["properties"]
    assert volumes["emptyDir"]["properties"]["sizeLimit"]["x-kubernetes-int-or-string"] is True


def test_cel_rules_are_present() -> None:
    crd = copy.deepcopy(_crd())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = [r["rule"] for _, node in _walk(schema) for r in node.get("x-kubernetes-validations", [])]
    assert "self.minReplicas <= self.maxReplicas" in rules
    assert any("metadata.name.size()" in r for r in rules)
    assert any("metadata.name.matches" in r for r in rules)
    assert any("gpuUtilization" in r and "gpu.count" in r for r in rules)
    # Digest-pinned and mirrored images are fine: no rule looks for "gpu" in the image (issue 11).
    assert not any("runtime.image" in r for r in rules)


def test_nested_defaults_match_the_types() -> None:
    """Objects default to the same values the pydantic types use, so the stored spec equals the parsed one."""
    crd = copy.deepcopy(_crd())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    resources = spec["runtime"]["properties"]["resources"]
    assert resources["default"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}
    requests = resources["properties"]["requests"]["default"]
    assert requests == {"cpu": "1", "memory": "2Gi"}
    # The GPU toleration is the operator's, added to the user's (manifests/builders.py): no default here.
    assert "default" not in spec["gpu"]["properties"]["tolerations"]
    assert spec["gpu"]["default"] == {"count": 1}


def test_crd_fits_a_client_side_apply() -> None:
    """`kubectl apply -f crds/` (client-side) copies the whole CRD into the last-applied annotation, and
    annotations are limited to 256 KiB: the embedded Kubernetes schemas must leave room under it."""
    compact = json.dumps(_crd(), separators=(",", ":"))
    assert len(compact) < 220 * 1024, f"{len(compact)} bytes: trim descriptions in k8s_vendor"
